//! How a group of events is best committed to PostgreSQL: multi-row statements
//! (`INSERT … SELECT FROM unnest($arrays)`, what `store/postgres/writer.rs` does: two statements
//! per group whatever its size) against one `INSERT` per row, pipelined (every statement of the
//! group sent at once on the connection, tokio-postgres's pipelining, then one round trip's wait).
//! Both in one transaction per group, on the tables of the store's schema (events and
//! deliveries, one delivery per event, a 1 KiB body), with `synchronous_commit` on.
//!
//! `cargo bench --bench pg_batch` (PostgreSQL at `HOOKYARD_TEST_DATABASE_URL`, default the local
//! `test` database; a schema of its own, dropped at the end). Rounds are interleaved (unnest,
//! pipelined, unnest, …) so drift hits both alike; per group size it prints the median over the
//! rounds of wall µs per event and CPU µs per event of the client (this process) and of the
//! server (the backend process serving the connection, from /proc), and their ratio.
//! Under `cargo test` (no `--bench` argument) it runs one small round of each as a check.

use std::str::FromStr;
use std::time::Instant;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

const BODY: usize = 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let url = std::env::var("HOOKYARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (client, conn) = tokio_postgres::Config::from_str(&url).unwrap().connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let schema = format!("bench_batch_{}", std::process::id());
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema};
             CREATE TABLE events (id TEXT PRIMARY KEY, source TEXT NOT NULL, received_at BIGINT NOT NULL,
                 headers TEXT NOT NULL, body BYTEA NOT NULL, dedupe_key TEXT, routed BOOLEAN NOT NULL);
             CREATE INDEX events_received ON events (received_at);
             CREATE TABLE deliveries (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
                 route TEXT NOT NULL, destination TEXT NOT NULL, msg_id TEXT NOT NULL, status TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0, next_at BIGINT NOT NULL, created_at BIGINT NOT NULL,
                 updated_at BIGINT NOT NULL, last_status INTEGER, last_error TEXT);
             CREATE INDEX deliveries_due ON deliveries (next_at, destination) WHERE status = 'pending';
             CREATE INDEX deliveries_event ON deliveries (event_id);"
        ))
        .await
        .unwrap();
    let backend: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let (sizes, rounds, events): (&[usize], usize, usize) =
        if bench { (&[1, 16, 64, 256], 5, 8192) } else { (&[1, 16], 1, 32) };
    let mut next_id = 0u64;
    println!("group  strategy    wall µs/event  client CPU µs/event  server CPU µs/event  CPU sum");
    for &size in sizes {
        let mut results: [Vec<(f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (s, strategy) in [Strategy::Unnest, Strategy::Pipelined].into_iter().enumerate() {
                let groups = (events / size).max(1);
                let (cpu0, server0, t0) = (self_cpu_us(), proc_cpu_us(backend), Instant::now());
                for _ in 0..groups {
                    let ids: Vec<String> = (0..size)
                        .map(|_| {
                            next_id += 1;
                            format!("evt_{next_id:032}")
                        })
                        .collect();
                    commit_group(&client, strategy, &ids).await;
                }
                let n = (groups * size) as f64;
                let wall = t0.elapsed().as_secs_f64() * 1e6 / n;
                let client_cpu = (self_cpu_us() - cpu0) / n;
                let server_cpu = (proc_cpu_us(backend) - server0) / n;
                results[s].push((wall, client_cpu, server_cpu));
            }
        }
        for (s, name) in ["unnest", "pipelined"].iter().enumerate() {
            let median = |f: fn(&(f64, f64, f64)) -> f64| {
                let mut v: Vec<f64> = results[s].iter().map(f).collect();
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            let (wall, c, sv) = (median(|r| r.0), median(|r| r.1), median(|r| r.2));
            println!("{size:>5}  {name:<10}  {wall:>13.1}  {c:>19.1}  {sv:>19.1}  {:>7.1}", c + sv);
        }
    }
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

#[derive(Clone, Copy)]
enum Strategy {
    Unnest,
    Pipelined,
}

async fn commit_group(client: &Client, strategy: Strategy, ids: &[String]) {
    let now = 1_700_000_000_000i64;
    let body = vec![b'x'; BODY];
    client.batch_execute("BEGIN").await.unwrap();
    match strategy {
        Strategy::Unnest => {
            let n = ids.len();
            let id: Vec<&str> = ids.iter().map(String::as_str).collect();
            let source = vec!["app"; n];
            let at = vec![now; n];
            let headers = vec!["[[\"content-type\",\"application/json\"]]"; n];
            let bodies = vec![&body[..]; n];
            let key: Vec<Option<&str>> = vec![None; n];
            let routed = vec![true; n];
            client
                .execute(
                    "INSERT INTO events (id, source, received_at, headers, body, dedupe_key, routed)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::bytea[], $6::text[], $7::bool[])",
                    &[&id, &source, &at, &headers, &bodies, &key, &routed],
                )
                .await
                .unwrap();
            let route = vec!["main"; n];
            let dest = vec!["out"; n];
            let msg: Vec<String> = ids.iter().map(|i| format!("msg_{i}")).collect();
            client
                .execute(
                    "INSERT INTO deliveries (event_id, route, destination, msg_id, status, next_at, created_at, updated_at)
                     SELECT e, r, d, m, 'pending', $5, $5, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u (e, r, d, m)",
                    &[&id, &route, &dest, &msg, &now],
                )
                .await
                .unwrap();
        }
        Strategy::Pipelined => {
            let ev = client
                .prepare(
                    "INSERT INTO events (id, source, received_at, headers, body, dedupe_key, routed) VALUES ($1, 'app', $2, $3, $4, NULL, true)",
                )
                .await
                .unwrap();
            let de = client
                .prepare(
                    "INSERT INTO deliveries (event_id, route, destination, msg_id, status, next_at, created_at, updated_at)
                     VALUES ($1, 'main', 'out', $2, 'pending', $3, $3, $3)",
                )
                .await
                .unwrap();
            let headers = "[[\"content-type\",\"application/json\"]]";
            let msgs: Vec<String> = ids.iter().map(|i| format!("msg_{i}")).collect();
            // all sent before the first answer is awaited: one round trip's wait for the lot
            let body = &body[..];
            let event_params: Vec<[&(dyn ToSql + Sync); 4]> =
                ids.iter().map(|id| [id as &(dyn ToSql + Sync), &now, &headers, &body]).collect();
            let delivery_params: Vec<[&(dyn ToSql + Sync); 3]> =
                ids.iter().zip(&msgs).map(|(id, m)| [id as &(dyn ToSql + Sync), m, &now]).collect();
            let events = event_params.iter().map(|p| client.execute(&ev, p));
            let deliveries = delivery_params.iter().map(|p| client.execute(&de, p));
            let (a, b) = futures_lite_join(events.collect(), deliveries.collect()).await;
            assert!(a.iter().chain(&b).all(Result::is_ok));
        }
    }
    client.batch_execute("COMMIT").await.unwrap();
}

/// Polls every future of both lists together (so their statements are pipelined).
async fn futures_lite_join<F: std::future::Future>(a: Vec<F>, b: Vec<F>) -> (Vec<F::Output>, Vec<F::Output>) {
    let n = a.len();
    let mut all: Vec<_> = a.into_iter().chain(b).map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..all.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in all.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    let mut out: Vec<F::Output> = out.into_iter().map(Option::unwrap).collect();
    let b = out.split_off(n);
    (out, b)
}

/// CPU time (user + system) of this process, in µs.
fn self_cpu_us() -> f64 {
    proc_cpu_us(std::process::id() as i32)
}

/// CPU time (user + system) of process `pid`, in µs, from /proc (clock ticks of 10 ms).
fn proc_cpu_us(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks * 10_000.0
}
