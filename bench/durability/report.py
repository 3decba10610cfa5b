#!/usr/bin/env python3
"""Turns the raw rows written by bench/durability.sh into a table and JSON.

  report.py row CLK_TCK ROW_LINE              one-line summary of one run
  report.py summary ROWS_TSV OUT_JSON k=v...  median table + JSON file

A raw row is tab-separated:
  round mode sink_delta drain_ms drain_timeout sut_ticks store_bytes log_warn
  "k=v k=v ..." (wrk's DUR_RESULT line)
"""
import json
import statistics
import sys

MODES = ["full", "normal", "memory"]
# The target for `sync: full` on the 2-core machine.
TARGET_ACCEPTED_PER_S = 5000
TARGET_P99_MS = 50


def parse_row(line, clk_tck):
    f = line.rstrip("\n").split("\t")
    r = {
        "round": int(f[0]),
        "mode": f[1],
        "sink_delta": int(f[2]),
        "drain_ms": int(f[3]),
        "drain_timeout": f[4] == "1",
        "sut_ticks": int(f[5]),
        "store_bytes": int(f[6]),
        "log_warn_lines": int(f[7]),
    }
    wrk = {k: int(v) for k, v in (kv.split("=", 1) for kv in f[8].split())}
    r["wrk"] = wrk
    secs = wrk["duration_us"] / 1e6
    accepted = wrk["requests"] - wrk["err_status"]
    r["derived"] = {
        "accepted": accepted,
        "accepted_per_s": accepted / secs,
        "p50_ms": wrk["p50_us"] / 1000,
        "p90_ms": wrk["p90_us"] / 1000,
        "p99_ms": wrk["p99_us"] / 1000,
        "max_ms": wrk["max_us"] / 1000,
        "non_2xx": wrk["err_status"],
        "socket_errors": sum(wrk[k] for k in ("err_connect", "err_read", "err_write", "err_timeout")),
        # accepted events the sink had not received when the drain ended (it also gets events whose
        # 202 wrk did not wait for at the end of the run, so this is a lower bound)
        "undelivered": max(0, accepted - r["sink_delta"]),
        "sut_cpu_cores": r["sut_ticks"] / clk_tck / secs,
        "sut_cpu_us_per_event": r["sut_ticks"] * 1e6 / clk_tck / accepted if accepted else None,
    }
    return r


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def flags(r):
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
    if r["log_warn_lines"]:
        out.append(f"{r['log_warn_lines']} warn/error log lines")
    return out


def row_summary(r):
    d = r["derived"]
    f = flags(r)
    return (
        f"  {r['mode']:<6} r{r['round']}: {fmt(d['accepted_per_s'], 0)} accepted/s, "
        f"p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, max {d['max_ms']:.1f} ms, "
        f"hookyard {d['sut_cpu_cores']:.2f} cores, store {r['store_bytes'] / 2**20:.0f} MiB, "
        f"drained in {r['drain_ms']} ms" + ("; " + "; ".join(f) if f else "")
    )


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


COLUMNS = [
    ("accepted_per_s", "accepted/s", 0),
    ("p50_ms", "p50 ms", 2),
    ("p99_ms", "p99 ms", 2),
    ("ratio_to_memory", "vs memory", 3),
    ("sut_cpu_cores", "cores", 2),
    ("sut_cpu_us_per_event", "CPU us/ev", 1),
    ("non_2xx", "non-2xx", 0),
    ("socket_errors", "sock err", 0),
    ("undelivered", "undeliv", 0),
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
        med = {k: median([r["derived"][k] for r in rs]) for k in rows[0]["derived"]}
        # the worst round matters for errors: a single non-2xx makes the run suspect
        for k in ("non_2xx", "socket_errors", "undelivered"):
            med[k] = max(r["derived"][k] for r in rs)
        med["rounds"] = len(rs)
        med["drain_timeouts"] = sum(r["drain_timeout"] for r in rs)
        med["log_warn_lines"] = sum(r["log_warn_lines"] for r in rs)
        medians[m] = med
    base = medians.get("memory", {}).get("accepted_per_s")
    for m in modes:
        medians[m]["ratio_to_memory"] = medians[m]["accepted_per_s"] / base if base else None
        p99_base = medians.get("memory", {}).get("p99_ms")
        medians[m]["p99_ratio_to_memory"] = medians[m]["p99_ms"] / p99_base if p99_base else None

    target = None
    if "full" in medians:
        f = medians["full"]
        target = {
            "accepted_per_s_min": TARGET_ACCEPTED_PER_S,
            "p99_ms_max": TARGET_P99_MS,
            "met": f["accepted_per_s"] >= TARGET_ACCEPTED_PER_S and f["p99_ms"] < TARGET_P99_MS and f["non_2xx"] == 0,
        }

    head = ["mode"] + [h for _, h, _ in COLUMNS]
    body = [[m] + [fmt(medians[m][k], d) for k, _, d in COLUMNS] for m in modes]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print()
    print(f"Hookyard durability benchmark {meta.get('timestamp', '')}: medians over {meta.get('rounds')} round(s), "
          f"{meta.get('duration_s')} s x {meta.get('connections')} connections, {meta.get('body_bytes')} B event, "
          f"1 destination")
    print(f"wrk + sink on CPU {meta.get('load_cpu')}, hookyard on CPU {meta.get('sut_cpu')} "
          f"({meta.get('worker_threads')} worker threads); store on {meta.get('store_fs')}; "
          "accepted/s = 202s per second of wrk; non-2xx, sock err, undeliv: worst round")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for b in body:
        print(line(b))
    if target:
        f = medians["full"]
        print(f"\ntarget (sync: full >= {TARGET_ACCEPTED_PER_S:,} accepted/s at p99 < {TARGET_P99_MS} ms): "
              f"{'MET' if target['met'] else 'NOT MET'} ({fmt(f['accepted_per_s'], 0)}/s, p99 {f['p99_ms']:.2f} ms)")
    for m in modes:
        med = medians[m]
        if med["non_2xx"] or med["socket_errors"] or med["undelivered"] or med["drain_timeouts"]:
            print(f"note: {m}: worst round non-2xx {med['non_2xx']}, socket errors {med['socket_errors']}, "
                  f"undelivered {med['undelivered']}, drain timeouts {med['drain_timeouts']}")
        if med["log_warn_lines"]:
            print(f"note: {m}: {med['log_warn_lines']} warn/error log lines in all rounds")

    result = {
        "benchmark": "hookyard-durability",
        "meta": meta,
        "units": {
            "accepted_per_s": "wrk responses that were 2xx (202) per second of the wrk run",
            "p50_ms/p99_ms": "wrk ingress latency percentiles",
            "ratio_to_memory": "accepted_per_s / accepted_per_s of storage.path ':memory:'",
            "sut_cpu_cores": "hookyard's utime+stime over the run, in cores",
            "undelivered": "accepted events the sink had not received when the drain ended",
        },
        "target": target,
        "medians": medians,
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
