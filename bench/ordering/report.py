#!/usr/bin/env python3
"""Turns the raw rows written by bench/ordering.sh into a table and JSON.

  report.py pending NAME < DESTINATIONS_JSON   pending deliveries of destination NAME
                                               (GET /api/v1/destinations)
  report.py outcomes NAME < METRICS_TEXT       "delivered=N other=M": hookyard_deliveries_total of
                                               destination NAME, outcome delivered / any other
  report.py row CLK_TCK ROW_LINE               one-line summary of one run
  report.py summary ROWS OUT_JSON k=v...       median table + JSON file

A raw row is one line of space-separated key=value pairs: round, mode (unordered, ordered or
batched), events, keys, pending (deliveries the store held for the paused destination before the
resume), sink_delta (requests the sink received from the resume until its counter stopped: one
per event, or one per batch), delivered and other_outcomes (the gateway's
hookyard_deliveries_total for the destination at the end of the drain, outcome delivered and any
other: one per event, batched or not), pending_after (the store's pending deliveries of the
destination once it settled, at most 30 s after the drain), drain_us (from the resume to the
sink's last request), drain_timeout, hy_ticks_post and hy_ticks_drain (the gateway's utime+stime
while wrk posted, and from the resume to the end of the drain),
sink_ticks_drain, busy_ticks_drain (every CPU of the machine, /proc/stat, during the drain),
log_warn (non-empty stderr lines of the gateway at RUST_LOG=warn), then wrk's ORD_RESULT pairs
(bench/ordering/post_keyed.lua).
"""
import json
import statistics
import sys

MODES = ["unordered", "ordered", "batched"]
BASE = "unordered"
# deliveries/s of a mode at least this multiple of unordered's (paired median): the targets
TARGETS = {"ordered": 0.8, "batched": 5.0}


def parse_row(line, clk_tck):
    kv = dict(x.split("=", 1) for x in line.split())
    ints = ("round", "events", "keys", "pending", "sink_delta", "delivered", "other_outcomes", "pending_after",
            "drain_us", "hy_ticks_post", "hy_ticks_drain",
            "sink_ticks_drain", "busy_ticks_drain", "log_warn", "posts", "answered", "accepted", "requests",
            "post_us", "p50_us", "p99_us", "err_connect", "err_read", "err_write", "err_timeout")
    r = {k: int(kv[k]) for k in ints}
    r["mode"] = kv["mode"]
    r["drain_timeout"] = kv["drain_timeout"] == "1"
    drain_s = r["drain_us"] / 1e6
    delivered = r["delivered"]  # events, from the gateway's counter (the sink counts requests)

    def per(ticks, n):
        return ticks * 1e6 / clk_tck / n if n else None

    r["derived"] = {
        "accepted_per_s": r["accepted"] / (r["post_us"] / 1e6) if r["post_us"] else None,
        "post_p50_ms": r["p50_us"] / 1000,
        "post_p99_ms": r["p99_us"] / 1000,
        "deliveries_per_s": delivered / drain_s if drain_s > 0 else None,
        "sink_requests": r["sink_delta"],
        "events_per_request": delivered / r["sink_delta"] if r["sink_delta"] else None,
        "drain_s": drain_s,
        "hy_cpu_us_per_delivery": per(r["hy_ticks_drain"], delivered),
        "hy_cpu_us_per_accept": per(r["hy_ticks_post"], r["accepted"]),
        "hy_cores_drain": r["hy_ticks_drain"] / clk_tck / drain_s if drain_s > 0 else None,
        "sink_cpu_us_per_delivery": per(r["sink_ticks_drain"], delivered),
        # busy CPU of the machine in neither the gateway nor the sink (this script's polling, other work)
        "other_cores_drain": ((r["busy_ticks_drain"] - r["hy_ticks_drain"] - r["sink_ticks_drain"]) / clk_tck
                              / drain_s if drain_s > 0 else None),
        "not_accepted": r["events"] - r["accepted"],
        "undelivered": max(0, r["accepted"] - delivered),
    }
    return r


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def problems(r):
    d = r["derived"]
    out = []
    if d["not_accepted"]:
        out.append(f"NOT ACCEPTED {d['not_accepted']} (non-202 or no answer)")
    if r["pending"] != r["accepted"]:
        out.append(f"pending before the resume {r['pending']}, not {r['accepted']}")
    if r["drain_timeout"]:
        out.append("DRAIN TIMEOUT")
    if d["undelivered"]:
        out.append(f"undelivered {d['undelivered']}")
    if r["delivered"] > r["accepted"]:
        out.append(f"the gateway delivered {r['delivered'] - r['accepted']} more than accepted")
    if r["mode"] != "batched" and r["sink_delta"] != r["delivered"]:
        out.append(f"the sink got {r['sink_delta']} requests for {r['delivered']} delivered events")
    if r["other_outcomes"]:
        out.append(f"deliveries not delivered at once (retry, failed, dead, gone) {r['other_outcomes']}")
    if r["pending_after"]:
        out.append(f"still pending 30 s after the drain {r['pending_after']}")
    if sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_timeout")):
        out.append("wrk socket errors")
    if r["log_warn"]:
        out.append(f"warn/error log lines {r['log_warn']}")
    return out


def row_summary(r):
    d = r["derived"]
    p = problems(r)
    return (
        f"  {r['mode']:<9} r{r['round']}: posted {fmt(r['accepted'])} at {fmt(d['accepted_per_s'], 0)}/s "
        f"(p99 {d['post_p99_ms']:.2f} ms, {fmt(d['hy_cpu_us_per_accept'])} us/ev); drained in {d['drain_s']:.2f} s: "
        f"{fmt(d['deliveries_per_s'], 0)} deliveries/s ({fmt(r['sink_delta'])} requests), gateway "
        f"{fmt(d['hy_cpu_us_per_delivery'])} us/delivery "
        f"({fmt(d['hy_cores_drain'], 2)} cores), sink {fmt(d['sink_cpu_us_per_delivery'])} us, "
        f"other cores {fmt(d['other_cores_drain'], 2)}" + ("; " + "; ".join(p) if p else "")
    )


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


COLUMNS = [
    ("deliveries_per_s", "deliv/s", 0),
    ("drain_s", "drain s", 2),
    ("sink_requests", "sink reqs", 0),
    ("hy_cpu_us_per_delivery", "hy us/dl", 1),
    ("hy_cores_drain", "hy cores", 2),
    ("sink_cpu_us_per_delivery", "sink us/dl", 1),
    ("other_cores_drain", "other cores", 2),
    ("accepted_per_s", "posted/s", 0),
    ("post_p99_ms", "post p99 ms", 2),
    ("hy_cpu_us_per_accept", "hy us/post", 1),
    ("undelivered", "undeliv", 0),
]

RATIO_KEYS = [
    ("deliveries_per_s", "deliveries/s"),
    ("hy_cpu_us_per_delivery", "gateway CPU us per delivery"),
    ("accepted_per_s", "posted (accepted)/s"),
    ("hy_cpu_us_per_accept", "gateway CPU us per accept"),
]


def paired(rows, mode, key):
    """mode/unordered of `key` within each round that has both, and the median of those ratios."""
    per_round = []
    for rnd in sorted({r["round"] for r in rows}):
        a = [r for r in rows if r["round"] == rnd and r["mode"] == mode]
        b = [r for r in rows if r["round"] == rnd and r["mode"] == BASE]
        if a and b and a[0]["derived"][key] is not None and b[0]["derived"][key]:
            per_round.append(a[0]["derived"][key] / b[0]["derived"][key])
    return per_round, median(per_round)


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
        med = {k: median([r["derived"][k] for r in rs]) for k in rs[0]["derived"]}
        for k in ("not_accepted", "undelivered"):  # the worst round
            med[k] = max(r["derived"][k] for r in rs)
        med["rounds"] = len(rs)
        med["drain_timeouts"] = sum(r["drain_timeout"] for r in rs)
        med["problems"] = sorted({p for r in rs for p in problems(r)})
        medians[m] = med

    ratios = {}
    targets = {}
    if BASE in medians:
        for m in modes:
            if m == BASE:
                continue
            ratios[m] = {}
            for k, _ in RATIO_KEYS:
                a, b = medians[m][k], medians[BASE][k]
                per_round, paired_median = paired(rows, m, k)
                ratios[m][k] = {"of_medians": a / b if a is not None and b else None,
                                "per_round": per_round, "paired_median": paired_median}
            if m in TARGETS:
                pm = ratios[m]["deliveries_per_s"]["paired_median"]
                targets[m] = {"deliveries_per_s_over_unordered_at_least": TARGETS[m], "paired_median": pm,
                              "met": pm is not None and pm >= TARGETS[m]}

    head = ["mode"] + [h for _, h, _ in COLUMNS]
    body = [[m] + [fmt(medians[m][k], d) for k, _, d in COLUMNS] for m in modes]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print()
    batch = (f"; batched: max_events {meta.get('batch_max_events')}, max_wait {meta.get('batch_max_wait')}"
             if "batched" in modes else "")
    print(f"Hookyard ordering/batching benchmark {meta.get('timestamp', '')}: {meta.get('events')} events over "
          f"{meta.get('keys')} keys queued for a paused destination, then drained to one sink; medians over "
          f"{meta.get('rounds')} round(s); destination max_in_flight {meta.get('dest_in_flight')}{batch}")
    print(f"gateway on CPU {meta.get('sut_cpu')} ({meta.get('worker_threads')} worker threads), wrk + sink on CPU "
          f"{meta.get('load_cpu')}. deliv/s = events the gateway counted delivered / time from the resume to the "
          "sink's last request; sink reqs = requests the sink got (a batch is one); us/dl = CPU per delivered "
          "event over that time; posted/s, post p99, us/post: while wrk posted (destination paused); "
          "undeliv: worst round")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for b in body:
        print(line(b))
    for m, rs in ratios.items():
        print()
        for k, name in RATIO_KEYS:
            x = rs[k]
            rounds = " ".join(f"{v:.2f}" for v in x["per_round"]) or "-"
            print(f"{m}/{BASE} {name}: {fmt(x['of_medians'], 2)} (per round {rounds}; paired median "
                  f"{fmt(x['paired_median'], 2)})")
        if m in targets:
            t = targets[m]
            print(f"target: {m} deliveries/s >= {TARGETS[m]} x {BASE} (paired median): "
                  f"{fmt(t['paired_median'], 2)} -> {'MET' if t['met'] else 'NOT MET'}")
    for m in modes:
        for p in medians[m]["problems"]:
            print(f"note: {m}: {p}")

    result = {
        "benchmark": "hookyard-ordering",
        "modes": modes,
        "meta": meta,
        "units": {
            "deliveries_per_s": "events the gateway counted delivered (hookyard_deliveries_total, one per "
                                "event, batched or not) per second from the resume to the sink's last request",
            "sink_requests": "requests the sink received from the resume until its counter stopped (a batch is "
                             "one request)",
            "hy_cpu_us_per_delivery": "the gateway's utime+stime from the resume to the end of the drain, per "
                                      "delivered event",
            "hy_cores_drain": "average cores the gateway used during the drain",
            "other_cores_drain": "busy CPU of the machine (/proc/stat) in neither the gateway nor the sink during "
                                 "the drain (this script's polling included)",
            "accepted_per_s": "202 answers per second of the wrk run that queued the events (destination paused)",
            "hy_cpu_us_per_accept": "the gateway's utime+stime during the wrk run, per accepted event",
            "ratios_over_unordered": "each mode / unordered: of the medians, within each round (per_round), "
                                     "and the median of those (paired_median)",
        },
        "targets": targets,
        "ratios_over_unordered": ratios,
        "medians": medians,
        "runs": rows,
    }
    with open(out_path, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")


def pending(name):
    for d in json.load(sys.stdin)["items"]:
        if d.get("name") == name:
            return d.get("pending")
    sys.exit(f"no destination {name} in GET /api/v1/destinations")


def outcomes(name):
    """hookyard_deliveries_total{destination=NAME,...} from Prometheus text: delivered, and the rest."""
    delivered = other = 0
    for line in sys.stdin:
        if not line.startswith("hookyard_deliveries_total{"):
            continue
        labels, _, value = line.rpartition("}")
        kv = dict(x.split("=", 1) for x in labels[len("hookyard_deliveries_total{"):].split(",") if "=" in x)
        kv = {k.strip(): v.strip().strip('"') for k, v in kv.items()}
        if kv.get("destination") != name:
            continue
        n = int(float(value.split()[0]))
        if kv.get("outcome") == "delivered":
            delivered += n
        else:
            other += n
    return f"delivered={delivered} other={other}"


def main(argv):
    if len(argv) == 2 and argv[0] == "pending":
        print(pending(argv[1]))
    elif len(argv) == 2 and argv[0] == "outcomes":
        print(outcomes(argv[1]))
    elif len(argv) == 3 and argv[0] == "row":
        print(row_summary(parse_row(argv[2], int(argv[1]))))
    elif len(argv) >= 3 and argv[0] == "summary":
        summary(argv[1], argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
