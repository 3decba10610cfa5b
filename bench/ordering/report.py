#!/usr/bin/env python3
"""Turns the raw rows written by bench/ordering.sh into a table and JSON.

  report.py pending NAME < DESTINATIONS_JSON   pending deliveries of destination NAME
                                               (GET /api/v1/destinations)
  report.py row CLK_TCK ROW_LINE               one-line summary of one run
  report.py summary ROWS OUT_JSON k=v...       median table + JSON file

A raw row is one line of space-separated key=value pairs: round, mode (unordered or ordered),
events, keys, pending (deliveries the store held for the paused destination before the resume),
sink_delta (what the sink received from the resume until its counter stopped), drain_us (from
the resume to the sink's last count), drain_timeout, hy_ticks_post and hy_ticks_drain (the
gateway's utime+stime while wrk posted, and from the resume to the end of the drain),
sink_ticks_drain, busy_ticks_drain (every CPU of the machine, /proc/stat, during the drain),
log_warn (non-empty stderr lines of the gateway at RUST_LOG=warn), then wrk's ORD_RESULT pairs
(bench/ordering/post_keyed.lua).
"""
import json
import statistics
import sys

MODES = ["unordered", "ordered"]
TARGET = 0.8  # ordered deliveries/s at least this share of unordered (the target)


def parse_row(line, clk_tck):
    kv = dict(x.split("=", 1) for x in line.split())
    ints = ("round", "events", "keys", "pending", "sink_delta", "drain_us", "hy_ticks_post", "hy_ticks_drain",
            "sink_ticks_drain", "busy_ticks_drain", "log_warn", "posts", "answered", "accepted", "requests",
            "post_us", "p50_us", "p99_us", "err_connect", "err_read", "err_write", "err_timeout")
    r = {k: int(kv[k]) for k in ints}
    r["mode"] = kv["mode"]
    r["drain_timeout"] = kv["drain_timeout"] == "1"
    drain_s = r["drain_us"] / 1e6
    delivered = r["sink_delta"]

    def per(ticks, n):
        return ticks * 1e6 / clk_tck / n if n else None

    r["derived"] = {
        "accepted_per_s": r["accepted"] / (r["post_us"] / 1e6) if r["post_us"] else None,
        "post_p50_ms": r["p50_us"] / 1000,
        "post_p99_ms": r["p99_us"] / 1000,
        "deliveries_per_s": delivered / drain_s if drain_s > 0 else None,
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
    if r["sink_delta"] > r["accepted"]:
        out.append(f"the sink got {r['sink_delta'] - r['accepted']} more than accepted")
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
        f"{fmt(d['deliveries_per_s'], 0)} deliveries/s, gateway {fmt(d['hy_cpu_us_per_delivery'])} us/delivery "
        f"({fmt(d['hy_cores_drain'], 2)} cores), sink {fmt(d['sink_cpu_us_per_delivery'])} us, "
        f"other cores {fmt(d['other_cores_drain'], 2)}" + ("; " + "; ".join(p) if p else "")
    )


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


COLUMNS = [
    ("deliveries_per_s", "deliv/s", 0),
    ("drain_s", "drain s", 2),
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


def paired(rows, key):
    """ordered/unordered of `key` within each round that has both, and the median of those ratios."""
    per_round = []
    for rnd in sorted({r["round"] for r in rows}):
        a = [r for r in rows if r["round"] == rnd and r["mode"] == "ordered"]
        b = [r for r in rows if r["round"] == rnd and r["mode"] == "unordered"]
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

    ratios = None
    meets_target = None
    if "ordered" in medians and "unordered" in medians:
        ratios = {}
        for k, _ in RATIO_KEYS:
            a, b = medians["ordered"][k], medians["unordered"][k]
            per_round, paired_median = paired(rows, k)
            ratios[k] = {"of_medians": a / b if a is not None and b else None,
                         "per_round": per_round, "paired_median": paired_median}
        pm = ratios["deliveries_per_s"]["paired_median"]
        meets_target = pm is not None and pm >= TARGET

    head = ["mode"] + [h for _, h, _ in COLUMNS]
    body = [[m] + [fmt(medians[m][k], d) for k, _, d in COLUMNS] for m in modes]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print()
    print(f"Hookyard ordering benchmark {meta.get('timestamp', '')}: {meta.get('events')} events over "
          f"{meta.get('keys')} keys queued for a paused destination, then drained to one sink; medians over "
          f"{meta.get('rounds')} round(s); destination max_in_flight {meta.get('dest_in_flight')}")
    print(f"gateway on CPU {meta.get('sut_cpu')} ({meta.get('worker_threads')} worker threads), wrk + sink on CPU "
          f"{meta.get('load_cpu')}. deliv/s = deliveries the sink counted / time from the resume to its last count; "
          "us/dl = CPU per delivery over that time; posted/s, post p99, us/post: while wrk posted "
          "(destination paused); undeliv: worst round")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for b in body:
        print(line(b))
    if ratios:
        print()
        for k, name in RATIO_KEYS:
            x = ratios[k]
            rounds = " ".join(f"{v:.2f}" for v in x["per_round"]) or "-"
            print(f"ordered/unordered {name}: {fmt(x['of_medians'], 2)} (per round {rounds}; paired median "
                  f"{fmt(x['paired_median'], 2)})")
        pm = ratios["deliveries_per_s"]["paired_median"]
        print(f"target: ordered deliveries/s >= {TARGET} x unordered (paired median): "
              f"{fmt(pm, 2)} -> {'MET' if meets_target else 'NOT MET'}")
    for m in modes:
        for p in medians[m]["problems"]:
            print(f"note: {m}: {p}")

    result = {
        "benchmark": "hookyard-ordering",
        "meta": meta,
        "units": {
            "deliveries_per_s": "deliveries the sink received from the resume until its counter stopped, per "
                                "second of that time",
            "hy_cpu_us_per_delivery": "the gateway's utime+stime from the resume to the end of the drain, per "
                                      "delivery",
            "hy_cores_drain": "average cores the gateway used during the drain",
            "other_cores_drain": "busy CPU of the machine (/proc/stat) in neither the gateway nor the sink during "
                                 "the drain (this script's polling included)",
            "accepted_per_s": "202 answers per second of the wrk run that queued the events (destination paused)",
            "hy_cpu_us_per_accept": "the gateway's utime+stime during the wrk run, per accepted event",
            "ratios_ordered_over_unordered": "of the medians, within each round, and the median of those",
        },
        "target": {"deliveries_per_s_ordered_over_unordered_at_least": TARGET, "met": meets_target},
        "ratios_ordered_over_unordered": ratios,
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


def main(argv):
    if len(argv) == 2 and argv[0] == "pending":
        print(pending(argv[1]))
    elif len(argv) == 3 and argv[0] == "row":
        print(row_summary(parse_row(argv[2], int(argv[1]))))
    elif len(argv) >= 3 and argv[0] == "summary":
        summary(argv[1], argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
