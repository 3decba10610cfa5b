#!/usr/bin/env python3
"""Turns the raw rows written by bench/cluster.sh into a table and JSON, and reads the
instances' admin API for it.

  report.py live < STATUS_JSON                 cluster.live of GET /api/v1/status
  report.py live-drift < STATUS_JSON           "LIVE DRIFT" (DRIFT 0 or 1)
  report.py split METRICS_BEFORE METRICS_AFTER "ACCEPTED:DELIVERED" of one instance in between
  report.py row CLK_TCK ROW_LINE               one-line summary of one run
  report.py summary ROWS OUT_JSON k=v...       median table + JSON file

A raw row is one line of space-separated key=value pairs: round mode instances sink_delta
drain_ms drain_timeout deliver_us, hy_ticks0/1/2 (each instance's utime+stime before wrk, after
wrk, after the drain; comma-separated, one per instance), pg_ticks and pg_ticks_drain (the whole
PostgreSQL server during wrk, and until the sink had every event), pg_backend_ticks (during wrk,
only the backends with the run's application_name), pg_checkpoints (checkpoints the server
started from before wrk until after the drain; "-" unknown), wrk_ticks (wrk, during its
run), sink_ticks and sink_ticks_drain, machine_busy_ticks (every CPU of the machine during wrk,
/proc/stat) and machine_irq_ticks (its irq + softirq part), split (each instance's "accepted:delivered" during the run and drain, from its
/metrics), live and drift (each instance's cluster.live and config_drift at the end), log_warn
(non-empty stderr lines of each instance at RUST_LOG=warn), then wrk's DUR_RESULT pairs
(bench/durability/post_event.lua).
"""
import json
import statistics
import sys

MODES = ["one", "two"]


def parse_row(line, clk_tck):
    kv = dict(x.split("=", 1) for x in line.split())

    def ints(k):
        return [int(v) for v in kv[k].split(",")]

    n = int(kv["instances"])
    wrk_keys = ("requests", "duration_us", "p50_us", "p90_us", "p99_us", "max_us",
                "err_connect", "err_read", "err_write", "err_status", "err_timeout")
    wrk = {k: int(kv[k]) for k in wrk_keys}
    hy0, hy1, hy2 = ints("hy_ticks0"), ints("hy_ticks1"), ints("hy_ticks2")
    split = [tuple(int(x) for x in s.split(":")) for s in kv["split"].split(",")]
    r = {
        "round": int(kv["round"]),
        "mode": kv["mode"],
        "instances": n,
        "sink_delta": int(kv["sink_delta"]),
        "drain_ms": int(kv["drain_ms"]),
        "drain_timeout": kv["drain_timeout"] == "1",
        "deliver_us": int(kv["deliver_us"]),
        "hy_ticks": [b - a for a, b in zip(hy0, hy1)],
        "hy_ticks_drain": [c - a for a, c in zip(hy0, hy2)],
        "pg_ticks": int(kv["pg_ticks"]),
        "pg_ticks_drain": int(kv["pg_ticks_drain"]),
        "pg_backend_ticks": int(kv["pg_backend_ticks"]),
        "pg_checkpoints": None if kv["pg_checkpoints"] == "-" else int(kv["pg_checkpoints"]),
        "wrk_ticks": int(kv["wrk_ticks"]),
        "sink_ticks": int(kv["sink_ticks"]),
        "sink_ticks_drain": int(kv["sink_ticks_drain"]),
        "machine_busy_ticks": int(kv["machine_busy_ticks"]),
        "machine_irq_ticks": int(kv["machine_irq_ticks"]),
        "instance_accepted": [a for a, _ in split],
        "instance_delivered": [d for _, d in split],
        "live": ints("live"),
        "config_drift": [x == "1" for x in kv["drift"].split(",")],
        "log_warn_lines": ints("log_warn"),
        "wrk": wrk,
    }
    secs = wrk["duration_us"] / 1e6
    accepted = wrk["requests"] - wrk["err_status"]

    def us(ticks):
        return ticks * 1e6 / clk_tck / accepted if accepted else None

    def cores(ticks):
        return ticks / clk_tck / secs

    hy = sum(r["hy_ticks"])
    load = r["wrk_ticks"] + r["sink_ticks"]
    counted = hy + r["pg_ticks"] + load
    r["derived"] = {
        "accepted": accepted,
        "accepted_per_s": accepted / secs,
        "delivered_per_s": r["sink_delta"] / (r["deliver_us"] / 1e6) if r["deliver_us"] > 0 else None,
        "p50_ms": wrk["p50_us"] / 1000,
        "p99_ms": wrk["p99_us"] / 1000,
        "max_ms": wrk["max_us"] / 1000,
        "non_2xx": wrk["err_status"],
        "socket_errors": sum(wrk[k] for k in ("err_connect", "err_read", "err_write", "err_timeout")),
        "undelivered": max(0, accepted - r["sink_delta"]),
        # CPU during the wrk run per accepted event
        "hy_cpu_us_per_event": us(hy),
        "hy_cpu_us_per_event_each": [us(t) for t in r["hy_ticks"]],
        "pg_cpu_us_per_event": us(r["pg_ticks"]),
        "pg_backend_cpu_us_per_event": us(r["pg_backend_ticks"]),
        "load_cpu_us_per_event": us(load),
        "wrk_cpu_us_per_event": us(r["wrk_ticks"]),
        "sink_cpu_us_per_event": us(r["sink_ticks"]),
        "system_cpu_us_per_event": us(hy + r["pg_ticks"]),
        "total_cpu_us_per_event": us(counted),
        # the same from wrk's start until the sink had every event (wrk had stopped by then)
        "total_cpu_us_per_event_drain": us(sum(r["hy_ticks_drain"]) + r["pg_ticks_drain"] + r["wrk_ticks"]
                                           + r["sink_ticks_drain"]),
        "hy_cpu_cores": cores(hy),
        "pg_cpu_cores": cores(r["pg_ticks"]),
        "load_cpu_cores": cores(load),
        "machine_busy_cores": cores(r["machine_busy_ticks"]),
        "machine_irq_cores": cores(r["machine_irq_ticks"]),
        # busy CPU of the machine not in any process counted: other work, interrupts, this script
        "other_cpu_cores": cores(r["machine_busy_ticks"] - counted),
        "instance_accepted_share": [a / sum(r["instance_accepted"]) if sum(r["instance_accepted"]) else None
                                    for a in r["instance_accepted"]],
    }
    return r


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def each(vs, digits=1):
    return "+".join(fmt(v, digits) for v in vs)


def problems(r):
    d = r["derived"]
    out = []
    if d["non_2xx"]:
        out.append(f"NON-2XX {d['non_2xx']}")
    if d["socket_errors"]:
        out.append(f"socket errors {d['socket_errors']}")
    if r["drain_timeout"]:
        out.append("DRAIN TIMEOUT")
    if d["undelivered"]:
        out.append(f"undelivered {d['undelivered']}")
    if any(x != r["instances"] for x in r["live"]):
        out.append(f"cluster.live at the end {r['live']} (want {r['instances']})")
    if any(r["config_drift"]):
        out.append("CONFIG DRIFT")
    if r["pg_checkpoints"]:
        out.append(f"{r['pg_checkpoints']} PostgreSQL checkpoint(s) during the run")
    if sum(r["log_warn_lines"]):
        out.append(f"warn/error log lines {r['log_warn_lines']}")
    return out


def row_summary(r):
    d = r["derived"]
    p = problems(r)
    return (
        f"  {r['mode']:<4} r{r['round']}: {fmt(d['accepted_per_s'], 0)} accepted/s, "
        f"{fmt(d['delivered_per_s'], 0)} delivered/s, p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms; "
        f"us/ev hookyard {each(d['hy_cpu_us_per_event_each'])} + postgres {fmt(d['pg_cpu_us_per_event'])} "
        f"(backends {fmt(d['pg_backend_cpu_us_per_event'])}) + "
        f"load {fmt(d['load_cpu_us_per_event'])} = {fmt(d['total_cpu_us_per_event'])} "
        f"(until drained {fmt(d['total_cpu_us_per_event_drain'])}); cores hookyard {d['hy_cpu_cores']:.2f} "
        f"postgres {d['pg_cpu_cores']:.2f} load {d['load_cpu_cores']:.2f} other {d['other_cpu_cores']:.2f} "
        f"(irq {d['machine_irq_cores']:.2f}); "
        f"accepted per instance {each(r['instance_accepted'], 0)}, delivered {each(r['instance_delivered'], 0)}; "
        f"drained in {r['drain_ms']} ms" + ("; " + "; ".join(p) if p else "")
    )


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


COLUMNS = [
    ("accepted_per_s", "accepted/s", 0),
    ("delivered_per_s", "deliv/s", 0),
    ("p50_ms", "p50 ms", 2),
    ("p99_ms", "p99 ms", 2),
    ("hy_cpu_us_per_event", "hy us/ev", 1),
    ("hy_cpu_us_per_event_each", "each", 1),
    ("pg_cpu_us_per_event", "pg us/ev", 1),
    ("pg_backend_cpu_us_per_event", "pg bk us/ev", 1),
    ("load_cpu_us_per_event", "load us/ev", 1),
    ("total_cpu_us_per_event", "total us/ev", 1),
    ("total_cpu_us_per_event_drain", "drain us/ev", 1),
    ("other_cpu_cores", "other cores", 2),
    ("non_2xx", "non-2xx", 0),
    ("undelivered", "undeliv", 0),
]


def paired(rows, key):
    """two/one of `key` within each round that has both, and the median of those ratios."""
    per_round = []
    for rnd in sorted({r["round"] for r in rows}):
        a = [r for r in rows if r["round"] == rnd and r["mode"] == "two"]
        b = [r for r in rows if r["round"] == rnd and r["mode"] == "one"]
        if a and b and a[0]["derived"][key] is not None and b[0]["derived"][key]:
            per_round.append(a[0]["derived"][key] / b[0]["derived"][key])
    return per_round, median(per_round)


RATIO_KEYS = [
    ("accepted_per_s", "accepted/s"),
    ("total_cpu_us_per_event", "total CPU us/ev (hookyard + postgres + load)"),
    ("system_cpu_us_per_event", "hookyard + postgres CPU us/ev"),
    ("total_cpu_us_per_event_drain", "total CPU us/ev until drained"),
    ("delivered_per_s", "delivered/s"),
    ("p99_ms", "p99"),
]


def summary(rows_path, out_path, meta_args):
    meta = dict(a.split("=", 1) for a in meta_args)
    for k, v in list(meta.items()):
        if v.isdigit():
            meta[k] = int(v)
    with open(rows_path) as fh:
        rows = [parse_row(line, meta["clk_tck"]) for line in fh if line.strip()]

    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    medians = {}
    for m in modes:
        rs = [r for r in rows if r["mode"] == m]
        med = {}
        for k, v in rs[0]["derived"].items():
            if isinstance(v, list):  # per instance: the median of each instance's values
                med[k] = [median([r["derived"][k][i] for r in rs]) for i in range(len(v))]
            else:
                med[k] = median([r["derived"][k] for r in rs])
        for k in ("non_2xx", "socket_errors", "undelivered"):  # the worst round
            med[k] = max(r["derived"][k] for r in rs)
        med["rounds"] = len(rs)
        med["instances"] = rs[0]["instances"]
        med["drain_timeouts"] = sum(r["drain_timeout"] for r in rs)
        med["log_warn_lines"] = sum(sum(r["log_warn_lines"]) for r in rs)
        med["problems"] = sorted({p for r in rs for p in problems(r)})
        medians[m] = med

    ratios = None
    if "one" in medians and "two" in medians:
        ratios = {}
        for k, _ in RATIO_KEYS:
            a, b = medians["two"][k], medians["one"][k]
            per_round, paired_median = paired(rows, k)
            ratios[k] = {"of_medians": a / b if a is not None and b else None,
                         "per_round": per_round, "paired_median": paired_median}

    head = ["mode"] + [h for _, h, _ in COLUMNS]
    body = []
    for m in modes:
        cells = [m]
        for k, _, d in COLUMNS:
            v = medians[m][k]
            cells.append(each(v, d) if isinstance(v, list) else fmt(v, d))
        body.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print()
    print(f"Hookyard cluster benchmark {meta.get('timestamp', '')}: one vs two instances on one PostgreSQL "
          f"schema; medians over {meta.get('rounds')} round(s), {meta.get('duration_s')} s x "
          f"{meta.get('connections')} connections (wrk -t{meta.get('wrk_threads')}), {meta.get('body_bytes')} B event, "
          f"1 destination")
    print(f"wrk + sink on CPU {meta.get('load_cpu')}, instances on CPU {meta.get('sut_cpu')} "
          f"({meta.get('worker_threads')} worker threads each), PostgreSQL {meta.get('pg_version')} unpinned; "
          "INDICATIVE ONLY: everything shares the machine's cores. us/ev = CPU during the wrk run per accepted "
          "event: hy = the instances (each: per instance), pg = the whole PostgreSQL server "
          "(pg bk: only the instances' backends), load = wrk + sink; "
          "drain us/ev = all of them until the sink had every event; other cores = busy CPU in no counted process; "
          "non-2xx, undeliv: worst round")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for b in body:
        print(line(b))
    if ratios:
        print()
        for k, name in RATIO_KEYS:
            x = ratios[k]
            rounds = " ".join(f"{v:.2f}" for v in x["per_round"]) or "-"
            print(f"two/one {name}: {fmt(x['of_medians'], 2)} (per round {rounds}; paired median "
                  f"{fmt(x['paired_median'], 2)})")
    for m in modes:
        med = medians[m]
        if med["instances"] > 1:
            print(f"{m}: accepted per instance (median share) {each(med['instance_accepted_share'], 2)}")
        for p in med["problems"]:
            print(f"note: {m}: {p}")

    result = {
        "benchmark": "hookyard-cluster",
        "meta": meta,
        "units": {
            "accepted_per_s": "wrk responses that were 2xx (202) per second of the wrk run",
            "delivered_per_s": "events the sink received from wrk's start until its counter stopped, per second",
            "p50_ms/p99_ms": "wrk ingress latency percentiles",
            "*_cpu_us_per_event": "utime+stime during the wrk run per accepted event; hy = sum of the instances "
                                  "(hy_..._each: per instance), pg = the whole PostgreSQL server (postmaster and "
                                  "children), pg_backend = only the backends of the run's instances, load = wrk + sink, system = hy + pg, total = hy + pg + load",
            "total_cpu_us_per_event_drain": "hy + pg + load from wrk's start until the sink had every event",
            "*_cpu_cores": "average cores during the wrk run; other = machine busy (/proc/stat) minus every "
                           "process counted; machine_irq = the irq + softirq part of machine busy",
            "instance_accepted/delivered": "per instance, from its /metrics, over the measured run and drain",
            "ratios_two_over_one": "of the medians, within each round, and the median of those",
        },
        "ratios_two_over_one": ratios,
        "medians": medians,
        "runs": rows,
    }
    with open(out_path, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")


def metric_sum(path, name, label):
    """Sum of the samples of counter `name` that carry `label` (e.g. 'status="202"')."""
    total = 0
    with open(path) as fh:
        for line in fh:
            if line.startswith(name + "{") and label in line.split("}", 1)[0]:
                total += int(float(line.rsplit(None, 1)[1]))
    return total


def split(before, after):
    acc = (metric_sum(after, "hookyard_events_received_total", 'status="202"')
           - metric_sum(before, "hookyard_events_received_total", 'status="202"'))
    dlv = (metric_sum(after, "hookyard_deliveries_total", 'outcome="delivered"')
           - metric_sum(before, "hookyard_deliveries_total", 'outcome="delivered"'))
    return f"{acc}:{dlv}"


def main(argv):
    if argv == ["live"]:
        print(json.load(sys.stdin)["cluster"]["live"])
    elif argv == ["live-drift"]:
        c = json.load(sys.stdin)["cluster"]
        print(c["live"], int(bool(c["config_drift"])))
    elif len(argv) == 3 and argv[0] == "split":
        print(split(argv[1], argv[2]))
    elif len(argv) == 3 and argv[0] == "row":
        print(row_summary(parse_row(argv[2], int(argv[1]))))
    elif len(argv) >= 3 and argv[0] == "summary":
        summary(argv[1], argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
