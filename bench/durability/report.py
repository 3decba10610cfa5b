#!/usr/bin/env python3
"""Turns the raw rows written by bench/durability.sh into a table and JSON.

  report.py row CLK_TCK ROW_LINE              one-line summary of one run
  report.py summary ROWS_TSV OUT_JSON k=v...  median table + JSON file

A raw row is tab-separated:
  round mode sink_delta drain_ms drain_timeout sut_ticks store_bytes log_warn
  deliver_us sut_ticks_drain pg_ticks pg_ticks_drain pg_backend_ticks pg_wal_bytes pg_commits
  pg_wal_syncs "k=v k=v ..." (wrk's DUR_RESULT line)
sut_ticks and pg_ticks are the CPU of hookyard and of the whole PostgreSQL server during the wrk
run, the *_drain ones until the sink had every event; pg_backend_ticks is that of the backends
with hookyard's application_name; deliver_us runs from wrk's start until the sink's counter
stopped; pg_wal_bytes, pg_commits (transactions of this database, read-only ones included) and
pg_wal_syncs (WAL flushes, about one per committed write) run from wrk's start until hookyard
stopped, so they cover the settles (and the reads) of the drain too; the pg_* fields are "-" when no PostgreSQL mode ran (for the SQLite modes they measure
the idle server).
"""
import json
import statistics
import sys

MODES = ["full", "normal", "pg", "memory"]
# The target for `sync: full` on the 2-core machine.
TARGET_ACCEPTED_PER_S = 5000
TARGET_P99_MS = 50
# PostgreSQL against SQLite `sync: full` (both durable): at least half its accepted/s, p99 under
# TARGET_P99_MS, and at most twice its CPU per event, hookyard's and the server's together.
TARGET_PG_ACCEPTED_RATIO = 0.5
TARGET_PG_CPU_RATIO = 2.0


def opt_int(v):
    return None if v == "-" else int(v)


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
        "deliver_us": int(f[8]),
        "sut_ticks_drain": int(f[9]),
        "pg_ticks": opt_int(f[10]),
        "pg_ticks_drain": opt_int(f[11]),
        "pg_backend_ticks": opt_int(f[12]),
        "pg_wal_bytes": opt_int(f[13]),
        "pg_commits": opt_int(f[14]),
        "pg_wal_syncs": opt_int(f[15]),
    }
    wrk = {k: int(v) for k, v in (kv.split("=", 1) for kv in f[16].split())}
    r["wrk"] = wrk
    secs = wrk["duration_us"] / 1e6
    accepted = wrk["requests"] - wrk["err_status"]
    is_pg = r["mode"] == "pg"

    def us_per_event(ticks):
        return ticks * 1e6 / clk_tck / accepted if accepted and ticks is not None else None

    # the store's CPU: PostgreSQL's for pg; SQLite runs inside hookyard (pg_ticks is the idle
    # server's then, kept apart as pg_idle_*)
    pg_ticks = r["pg_ticks"] if is_pg else None
    pg_ticks_drain = r["pg_ticks_drain"] if is_pg else None
    r["derived"] = {
        "accepted": accepted,
        "accepted_per_s": accepted / secs,
        "delivered_per_s": r["sink_delta"] / (r["deliver_us"] / 1e6) if r["deliver_us"] > 0 else None,
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
        "sut_cpu_us_per_event": us_per_event(r["sut_ticks"]),
        "pg_cpu_cores": pg_ticks / clk_tck / secs if pg_ticks is not None else None,
        "pg_cpu_us_per_event": us_per_event(pg_ticks),
        "pg_backend_cpu_us_per_event": us_per_event(r["pg_backend_ticks"]),
        "total_cpu_us_per_event": us_per_event(r["sut_ticks"] + (pg_ticks or 0)),
        # the same until the sink had every event (the deliveries' settles of the backlog too)
        "total_cpu_us_per_event_drain": us_per_event(r["sut_ticks_drain"] + (pg_ticks_drain or 0)),
        "pg_wal_bytes_per_event": r["pg_wal_bytes"] / accepted if is_pg and accepted and r["pg_wal_bytes"] is not None else None,
        # store operations (an accept per event, a settle per delivery) per transaction (reads
        # included) and per WAL flush (about one per write commit: the writer's group size)
        "pg_ops_per_xact": (accepted + r["sink_delta"]) / r["pg_commits"] if is_pg and r["pg_commits"] else None,
        "pg_ops_per_wal_sync": (accepted + r["sink_delta"]) / r["pg_wal_syncs"] if is_pg and r["pg_wal_syncs"] else None,
        "pg_idle_cpu_cores": r["pg_ticks"] / clk_tck / secs if not is_pg and r["pg_ticks"] is not None else None,
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
    if d["pg_cpu_cores"] is not None:
        cpu = (f"hookyard {d['sut_cpu_cores']:.2f} + postgres {d['pg_cpu_cores']:.2f} cores "
               f"({fmt(d['sut_cpu_us_per_event'])} + {fmt(d['pg_cpu_us_per_event'])} us/ev, "
               f"backends {fmt(d['pg_backend_cpu_us_per_event'])}), "
               f"WAL {fmt(d['pg_wal_bytes_per_event'], 0)} B/ev, accepts+settles {fmt(d['pg_ops_per_wal_sync'])} "
               f"per WAL flush, {fmt(d['pg_ops_per_xact'])} per transaction (reads too), "
               f"CPU to drain {fmt(d['total_cpu_us_per_event_drain'])} us/ev")
    else:
        cpu = f"hookyard {d['sut_cpu_cores']:.2f} cores ({fmt(d['sut_cpu_us_per_event'])} us/ev)"
        if d["pg_idle_cpu_cores"] is not None:
            cpu += f", idle postgres {d['pg_idle_cpu_cores']:.3f} cores"
    return (
        f"  {r['mode']:<6} r{r['round']}: {fmt(d['accepted_per_s'], 0)} accepted/s, "
        f"{fmt(d['delivered_per_s'], 0)} delivered/s, "
        f"p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, max {d['max_ms']:.1f} ms, "
        f"{cpu}, store {r['store_bytes'] / 2**20:.0f} MiB, "
        f"drained in {r['drain_ms']} ms" + ("; " + "; ".join(f) if f else "")
    )


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


COLUMNS = [
    ("accepted_per_s", "accepted/s", 0),
    ("delivered_per_s", "deliv/s", 0),
    ("p50_ms", "p50 ms", 2),
    ("p99_ms", "p99 ms", 2),
    ("ratio_to_memory", "vs memory", 3),  # only when memory ran
    ("sut_cpu_cores", "hy cores", 2),
    ("pg_cpu_cores", "pg cores", 2),  # only when pg ran
    ("sut_cpu_us_per_event", "hy us/ev", 1),
    ("pg_cpu_us_per_event", "pg us/ev", 1),  # only when pg ran
    ("total_cpu_us_per_event", "sum us/ev", 1),  # only when pg ran
    ("total_cpu_us_per_event_drain", "drain us/ev", 1),
    ("non_2xx", "non-2xx", 0),
    ("socket_errors", "sock err", 0),
    ("undelivered", "undeliv", 0),
]


def paired(rows, mode, base, key):
    """mode/base of `key` within each round that has both, and the median of those ratios."""
    per_round = []
    for rnd in sorted({r["round"] for r in rows}):
        a = [r for r in rows if r["round"] == rnd and r["mode"] == mode]
        b = [r for r in rows if r["round"] == rnd and r["mode"] == base]
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

    target_pg = None
    if "pg" in medians and "full" in medians:
        p, f = medians["pg"], medians["full"]
        acc_rounds, acc_paired = paired(rows, "pg", "full", "accepted_per_s")
        cpu_rounds, cpu_paired = paired(rows, "pg", "full", "total_cpu_us_per_event")
        cpu_drain_rounds, cpu_drain_paired = paired(rows, "pg", "full", "total_cpu_us_per_event_drain")
        acc_ratio = p["accepted_per_s"] / f["accepted_per_s"] if f["accepted_per_s"] else None
        cpu_ratio = (p["total_cpu_us_per_event"] / f["total_cpu_us_per_event"]
                     if p["total_cpu_us_per_event"] is not None and f["total_cpu_us_per_event"] else None)
        cpu_drain_ratio = (p["total_cpu_us_per_event_drain"] / f["total_cpu_us_per_event_drain"]
                           if p["total_cpu_us_per_event_drain"] is not None and f["total_cpu_us_per_event_drain"]
                           else None)
        target_pg = {
            "accepted_ratio_min": TARGET_PG_ACCEPTED_RATIO,
            "p99_ms_max": TARGET_P99_MS,
            "cpu_ratio_max": TARGET_PG_CPU_RATIO,
            "accepted_ratio": acc_ratio,
            "accepted_ratio_per_round": acc_rounds,
            "accepted_ratio_paired_median": acc_paired,
            "cpu_ratio": cpu_ratio,
            "cpu_ratio_per_round": cpu_rounds,
            "cpu_ratio_paired_median": cpu_paired,
            "cpu_drain_ratio": cpu_drain_ratio,
            "cpu_drain_ratio_per_round": cpu_drain_rounds,
            "cpu_drain_ratio_paired_median": cpu_drain_paired,
            "met_accepted": acc_ratio is not None and acc_ratio >= TARGET_PG_ACCEPTED_RATIO,
            "met_p99": p["p99_ms"] < TARGET_P99_MS,
            "met_cpu": cpu_ratio is not None and cpu_ratio <= TARGET_PG_CPU_RATIO,
            "met_cpu_drain": cpu_drain_ratio is not None and cpu_drain_ratio <= TARGET_PG_CPU_RATIO,
        }
        target_pg["met"] = (target_pg["met_accepted"] and target_pg["met_p99"] and target_pg["met_cpu"]
                            and p["non_2xx"] == 0)

    target = None
    if "full" in medians:
        f = medians["full"]
        target = {
            "accepted_per_s_min": TARGET_ACCEPTED_PER_S,
            "p99_ms_max": TARGET_P99_MS,
            "met": f["accepted_per_s"] >= TARGET_ACCEPTED_PER_S and f["p99_ms"] < TARGET_P99_MS and f["non_2xx"] == 0,
        }

    optional = {"ratio_to_memory": "memory" in medians, "pg_cpu_cores": "pg" in medians,
                "pg_cpu_us_per_event": "pg" in medians, "total_cpu_us_per_event": "pg" in medians}
    columns = [c for c in COLUMNS if optional.get(c[0], True)]
    head = ["mode"] + [h for _, h, _ in columns]
    body = [[m] + [fmt(medians[m][k], d) for k, _, d in columns] for m in modes]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print()
    print(f"Hookyard durability benchmark {meta.get('timestamp', '')}: medians over {meta.get('rounds')} round(s), "
          f"{meta.get('duration_s')} s x {meta.get('connections')} connections, {meta.get('body_bytes')} B event, "
          f"1 destination")
    print(f"wrk + sink on CPU {meta.get('load_cpu')}, hookyard on CPU {meta.get('sut_cpu')} "
          f"({meta.get('worker_threads')} worker threads); store on {meta.get('store_fs')}; "
          "accepted/s = 202s per second of wrk; deliv/s = sink's events per second until it had them all; "
          "us/ev = CPU during the wrk run per accepted event (hy: hookyard, pg: the whole PostgreSQL server); "
          "drain us/ev = hookyard + PostgreSQL from wrk's start until the sink had every event; "
          "non-2xx, sock err, undeliv: worst round")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for b in body:
        print(line(b))
    if target:
        f = medians["full"]
        print(f"\ntarget (sync: full >= {TARGET_ACCEPTED_PER_S:,} accepted/s at p99 < {TARGET_P99_MS} ms): "
              f"{'MET' if target['met'] else 'NOT MET'} ({fmt(f['accepted_per_s'], 0)}/s, p99 {f['p99_ms']:.2f} ms)")
    if target_pg:
        t, p = target_pg, medians["pg"]

        def rounds(v):
            return " ".join(f"{x:.2f}" for x in v) or "-"

        print(f"target pg vs full: accepted/s >= {TARGET_PG_ACCEPTED_RATIO}x: {fmt(t['accepted_ratio'], 2)} "
              f"(per round {rounds(t['accepted_ratio_per_round'])}) {'MET' if t['met_accepted'] else 'NOT MET'}; "
              f"p99 < {TARGET_P99_MS} ms: {p['p99_ms']:.2f} ms {'MET' if t['met_p99'] else 'NOT MET'}; "
              f"CPU us/ev (hookyard + postgres) <= {TARGET_PG_CPU_RATIO}x: {fmt(t['cpu_ratio'], 2)} "
              f"(per round {rounds(t['cpu_ratio_per_round'])}) {'MET' if t['met_cpu'] else 'NOT MET'}; "
              f"the same until drained: {fmt(t['cpu_drain_ratio'], 2)} (per round {rounds(t['cpu_drain_ratio_per_round'])}) "
              f"{'MET' if t['met_cpu_drain'] else 'NOT MET'}")
    if "pg" in medians:
        p = medians["pg"]
        print(f"pg: postgres backends of hookyard {fmt(p['pg_backend_cpu_us_per_event'])} us/ev of the server's "
              f"{fmt(p['pg_cpu_us_per_event'])}; WAL {fmt(p['pg_wal_bytes_per_event'], 0)} B/ev; "
              f"accepts+settles {fmt(p['pg_ops_per_wal_sync'])} per WAL flush (~ per write commit), "
              f"{fmt(p['pg_ops_per_xact'])} per transaction (reads too)")
        idle = [medians[m]["pg_idle_cpu_cores"] for m in modes if m != "pg" and medians[m]["pg_idle_cpu_cores"] is not None]
        if idle and max(idle) > 0.02:
            print(f"note: PostgreSQL used {max(idle):.3f} cores during a SQLite run: something else uses the server")
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
            "delivered_per_s": "events the sink received from wrk's start until its counter stopped, per second",
            "pg_cpu_cores": "the PostgreSQL server's utime+stime (postmaster and all its children) over the run, in cores",
            "*_us_per_event": "CPU during the wrk run per accepted event (total = hookyard + PostgreSQL)",
            "total_cpu_us_per_event_drain": "hookyard + PostgreSQL CPU from wrk's start until the sink had every event, per accepted event",
            "pg_backend_cpu_us_per_event": "only the backends with hookyard's application_name",
            "pg_idle_cpu_cores": "the PostgreSQL server's CPU during a SQLite run (should be ~0)",
            "undelivered": "accepted events the sink had not received when the drain ended",
        },
        "target": target,
        "target_pg": target_pg,
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
