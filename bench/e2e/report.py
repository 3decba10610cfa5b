#!/usr/bin/env python3
"""Turns the raw rows written by bench/e2e.sh into figures, a table and JSON.

  report.py row CLK_TCK ROW_LINE             one-line summary of one run
  report.py summary ROWS_TSV OUT_JSON k=v...  median table + JSON file

A raw row is tab-separated:
  round scenario fanout delivered wall_us drain_us drain_timeout
  sut_ticks sink_ticks sut_hwm_kb log_warn load_cpu_busy load_cpu_total
  sut_cpu_busy sut_cpu_total "k=v k=v ..." (wrk's E2E_RESULT line)
"""
import json
import statistics
import sys

SCENARIO_ORDER = ["direct", "nginx", "hyper-proxy", "hookyard-1", "hookyard-1-transform", "hookyard-1-tail", "hookyard-1-otlp", "hookyard-2",
                  "hookyard-2-chain", "hookyard-3"]
# hookyard-1-transform / hookyard-1 events/s: what the formatter plugin may cost at most.
TRANSFORM_TARGET = 0.75


def parse_row(line, clk_tck):
    f = line.rstrip("\n").split("\t")
    r = {
        "round": int(f[0]),
        "scenario": f[1],
        "fanout": int(f[2]),
        "delivered": int(f[3]),
        "wall_us": int(f[4]),
        "drain_us": int(f[5]),
        "drain_timeout": f[6] == "1",
        "sut_ticks": int(f[7]),
        "sink_ticks": int(f[8]),
        "sut_hwm_kb": int(f[9]),
        "log_warn_lines": int(f[10]),
        "load_cpu_busy_ticks": int(f[11]),
        "load_cpu_total_ticks": int(f[12]),
        "sut_cpu_busy_ticks": int(f[13]),
        "sut_cpu_total_ticks": int(f[14]),
    }
    wrk = {k: int(v) for k, v in (kv.split("=", 1) for kv in f[15].split())}
    r["wrk"] = wrk
    tick_us = 1e6 / clk_tck
    wall_s = r["wall_us"] / 1e6
    events = r["delivered"] / r["fanout"]
    errors = sum(wrk[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    r["derived"] = {
        "requests_per_s": wrk["requests"] / (wrk["duration_us"] / 1e6),
        "p50_ms": wrk["p50_us"] / 1000,
        "p99_ms": wrk["p99_us"] / 1000,
        "deliveries_per_s": r["delivered"] / wall_s,
        "events_per_s": events / wall_s,
        "sut_cpu_us_per_event": r["sut_ticks"] * tick_us / events if events else None,
        "sink_cpu_us_per_delivery": r["sink_ticks"] * tick_us / r["delivered"] if r["delivered"] else None,
        "sut_cpu_cores": r["sut_ticks"] / clk_tck / wall_s,
        # whole-CPU utilisation (all processes, irq) of the load and the SUT CPU
        "load_cpu_busy": r["load_cpu_busy_ticks"] / r["load_cpu_total_ticks"] if r["load_cpu_total_ticks"] else None,
        "sut_cpu_busy": r["sut_cpu_busy_ticks"] / r["sut_cpu_total_ticks"] if r["sut_cpu_total_ticks"] else None,
        "drain_s": r["drain_us"] / 1e6,
        "wrk_errors": errors,
        "non_2xx": wrk["err_status"],
        # deliveries owed for requests wrk saw answered 2xx that never reached
        # the sink by the end of the drain. A lower bound: the sink also gets
        # requests wrk still had in flight when it stopped, which can hide losses.
        "undelivered": max(0, (wrk["requests"] - wrk["err_status"]) * r["fanout"] - r["delivered"]),
        "sut_peak_rss_mib": r["sut_hwm_kb"] / 1024,
    }
    return r


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def row_summary(r):
    d = r["derived"]
    flags = []
    if d["wrk_errors"]:
        flags.append(f"wrk errors {d['wrk_errors']} (non-2xx {d['non_2xx']})")
    if r["drain_timeout"]:
        flags.append("DRAIN TIMEOUT")
    if d["undelivered"] > 0:
        flags.append(f"undelivered {d['undelivered']}")
    if r["log_warn_lines"]:
        flags.append(f"{r['log_warn_lines']} warn/error log lines")
    return (
        f"  {r['scenario']:<20} r{r['round']}: {fmt(d['requests_per_s'], 0)} req/s, "
        f"p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, "
        f"{fmt(d['events_per_s'], 0)} events/s delivered ({fmt(d['deliveries_per_s'], 0)} deliveries/s), "
        f"SUT {fmt(d['sut_cpu_us_per_event'])} CPU us/event at {d['sut_cpu_cores']:.2f} cores, "
        f"CPU busy load/SUT {fmt(d['load_cpu_busy'], 2)}/{fmt(d['sut_cpu_busy'], 2)}, "
        f"drain {d['drain_s']:.2f} s" + ("; " + "; ".join(flags) if flags else "")
    )


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b else None


COLUMNS = [
    # key, header, digits
    ("requests_per_s", "req/s", 0),
    ("p50_ms", "p50 ms", 2),
    ("p99_ms", "p99 ms", 2),
    ("events_per_s", "events/s", 0),
    ("deliveries_per_s", "deliv/s", 0),
    ("sut_cpu_us_per_event", "SUT us/ev", 1),
    ("sut_cpu_cores", "SUT cores", 2),
    ("sink_cpu_us_per_delivery", "sink us/dl", 1),
    ("load_cpu_busy", "load busy", 2),
    ("sut_cpu_busy", "SUT busy", 2),
    ("drain_s", "drain s", 2),
    ("wrk_errors", "errors", 0),
    ("undelivered", "undeliv", 0),
]


def summary(rows_path, out_path, meta_args):
    meta = dict(a.split("=", 1) for a in meta_args)
    clk_tck = int(meta["clk_tck"])
    for k in ("rounds", "duration_s", "warmup_s", "connections", "load_cpu", "sut_cpu",
              "clk_tck", "body_bytes", "drain_max_s", "drain_stable_ms", "sink_log_warn", "nproc"):
        if k in meta and meta[k].lstrip("-").isdigit():
            meta[k] = int(meta[k])
    with open(rows_path) as fh:
        rows = [parse_row(line, clk_tck) for line in fh if line.strip()]

    scenarios = [s for s in SCENARIO_ORDER if any(r["scenario"] == s for r in rows)]
    medians = {}
    for s in scenarios:
        rs = [r for r in rows if r["scenario"] == s]
        m = {key: median([r["derived"][key] for r in rs]) for key, _, _ in COLUMNS}
        m["sut_peak_rss_mib"] = median([r["derived"]["sut_peak_rss_mib"] for r in rs])
        m["rounds"] = len(rs)
        m["drain_timeouts"] = sum(r["drain_timeout"] for r in rs)
        m["log_warn_lines"] = sum(r["log_warn_lines"] for r in rs)
        medians[s] = m

    ratios = {}
    for num, den in (("hookyard-1", "nginx"), ("hyper-proxy", "nginx"), ("hookyard-1", "hyper-proxy"),
                     ("hookyard-1", "direct"),
                     ("hookyard-1-transform", "hookyard-1"), ("hookyard-1-tail", "hookyard-1"), ("hookyard-1-otlp", "hookyard-1"),
                     ("hookyard-3", "hookyard-1"),
                     ("hookyard-2-chain", "hookyard-2")):
        if num in medians and den in medians:
            ratios[f"{num}/{den}"] = {
                "events_per_s": ratio(medians[num]["events_per_s"], medians[den]["events_per_s"]),
                "sut_cpu_us_per_event": ratio(medians[num]["sut_cpu_us_per_event"],
                                              medians[den]["sut_cpu_us_per_event"]),
                "p99_ms": ratio(medians[num]["p99_ms"], medians[den]["p99_ms"]),
            }
            # The two runs of each round (a few seconds apart): drift of a shared machine between
            # rounds moves both runs of a pair alike, so figures taken within each round, then
            # their median, are steadier than the ratio of the two medians.
            rounds = [(a["derived"], b["derived"])
                      for a in rows if a["scenario"] == num
                      for b in rows if b["scenario"] == den and b["round"] == a["round"]]
            pairs = [p for p in (ratio(a["events_per_s"], b["events_per_s"]) for a, b in rounds) if p is not None]
            if pairs:
                ratios[f"{num}/{den}"]["events_per_s_per_round"] = pairs
                ratios[f"{num}/{den}"]["events_per_s_paired_median"] = statistics.median(pairs)
            # What the numerator adds in CPU per event: unlike the ratio, this does not shrink
            # the budget of a transform when the base gets faster.
            added = [a["sut_cpu_us_per_event"] - b["sut_cpu_us_per_event"] for a, b in rounds
                     if a["sut_cpu_us_per_event"] is not None and b["sut_cpu_us_per_event"] is not None]
            if added:
                ratios[f"{num}/{den}"]["sut_cpu_us_added_per_round"] = added
                ratios[f"{num}/{den}"]["sut_cpu_us_added_paired_median"] = statistics.median(added)

    # ---- table
    head = ["scenario"] + [h for _, h, _ in COLUMNS]
    body = [[s] + [fmt(medians[s][k], d) for k, _, d in COLUMNS] for s in scenarios]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print()
    print(f"Hookyard e2e benchmark {meta.get('timestamp', '')}: medians over {meta.get('rounds')} round(s), "
          f"{meta.get('duration_s')} s x {meta.get('connections')} connections, "
          f"{meta.get('body_bytes')} B signed GitHub push")
    print(f"wrk + sink on CPU {meta.get('load_cpu')}, server under test on CPU {meta.get('sut_cpu')}; "
          "events/s = events fully delivered at the sink per second (start -> drain); "
          "SUT us/ev = CPU of the server under test per delivered event (direct: the sink itself)")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for b in body:
        print(line(b))
    print()
    for name, rv in ratios.items():
        target = ""
        if name == "hookyard-1-transform/hookyard-1" and rv["events_per_s"] is not None:
            ok = rv["events_per_s"] >= TRANSFORM_TARGET
            rv["target_events_per_s"] = TRANSFORM_TARGET
            rv["meets_target"] = ok
            target = f"   (target events/s >= {TRANSFORM_TARGET}: {'met' if ok else 'MISSED'})"
        print(f"{name:<32} events/s x{fmt(rv['events_per_s'], 3)}   "
              f"CPU us/event x{fmt(rv['sut_cpu_us_per_event'], 3)}   p99 x{fmt(rv['p99_ms'], 3)}{target}")
        if "events_per_s_paired_median" in rv:
            rounds = " ".join(fmt(p, 2) for p in rv["events_per_s_per_round"])
            print(f"{'':<32} events/s within each round: median x{fmt(rv['events_per_s_paired_median'], 3)} ({rounds})")
        if name == "hookyard-1-transform/hookyard-1" and "sut_cpu_us_added_paired_median" in rv:
            rounds = " ".join(fmt(p, 1) for p in rv["sut_cpu_us_added_per_round"])
            print(f"{'':<32} CPU us/event added within each round: median "
                  f"{fmt(rv['sut_cpu_us_added_paired_median'], 1)} ({rounds})")
    warn = [s for s in scenarios if medians[s]["drain_timeouts"] or medians[s]["wrk_errors"]
            or (medians[s]["undelivered"] or 0) > 0 or medians[s]["log_warn_lines"]]
    for s in warn:
        m = medians[s]
        print(f"note: {s}: median wrk errors {fmt(m['wrk_errors'], 0)}, median undelivered "
              f"{fmt(m['undelivered'], 0)}, drain timeouts {m['drain_timeouts']}, "
              f"warn/error log lines {m['log_warn_lines']}")
    if meta.get("sink_log_warn"):
        print(f"note: sink logged {meta['sink_log_warn']} warn/error lines")

    result = {
        "benchmark": "hookyard-e2e",
        "meta": meta,
        "units": {
            "requests_per_s": "wrk responses per second",
            "events_per_s": "events delivered at the sink per second, wrk start to drain",
            "deliveries_per_s": "POSTs received by the sink per second (events_per_s x fanout)",
            "sut_cpu_us_per_event": "utime+stime of the server under test per delivered event (direct: the sink)",
            "sink_cpu_us_per_delivery": "utime+stime of the sink per received POST",
            "sut_cpu_cores": "average cores used by the server under test over the run",
            "load_cpu_busy": "fraction of the load CPU (wrk + sink) busy over the run, all processes",
            "sut_cpu_busy": "fraction of the server-under-test CPU busy over the run, all processes",
        },
        "medians": medians,
        "ratios": ratios,
        "runs": rows,
    }
    with open(out_path, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")


def main(argv):
    if len(argv) >= 3 and argv[0] == "row":
        print(row_summary(parse_row(argv[2], int(argv[1]))))
    elif len(argv) >= 3 and argv[0] == "summary":
        summary(argv[1], argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
