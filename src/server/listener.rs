//! Accepting connections, for the ingress and the admin listener alike: a connection limit per
//! listener (a semaphore, as mini-redis's `MAX_CONNECTIONS`; past it, connections wait in the
//! kernel's accept queue and hold no descriptor of ours), hyper's header-read timeout (which also
//! closes keep-alive connections idle that long) and header-size limit (`431`), graceful
//! shutdown. Also the process's open-file limit, raised at start, and the rule that sizes the
//! default connection limits from it.
//!
//! Knows nothing of what the requests mean.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Connections the kernel queues for a listener that is at its limit (or busy). Linux caps it at
/// `net.core.somaxconn` (4096 by default); std's 128 would make a burst of senders beyond
/// `max_connections + 128` retry their SYN after a second.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds `addr` (port 0 picks a free port) with a [`LISTEN_BACKLOG`]-long accept queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What a listener serves: one request in (with the connection's peer address), one response out.
pub trait Handler: Send + Sync + 'static {
    /// The response body: a whole buffer for ingress; the admin API also streams (an export).
    type Body: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static;
    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// What one listener enforces on its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// `ingress` or `admin`, for logs.
    pub listener: &'static str,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to receive a request's head; also how long a keep-alive connection may stay idle.
    pub header_timeout: Duration,
    /// Largest request head (request line, header lines, blank line) in bytes; hyper answers a
    /// larger one with `431` and closes the connection.
    pub max_header_bytes: usize,
}

/// Serves `handler` on `listener` within `limits` until `shutdown` resolves with a grace period,
/// then stops accepting and gives requests in flight up to that grace to finish.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    limits: ConnectionLimits,
    handler: Arc<H>,
    shutdown: impl Future<Output = Duration>,
) {
    let name = limits.listener;
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let grace = loop {
        // a permit first: past the limit, connections wait in the kernel's queue, not in our fds
        let permit = tokio::select! {
            grace = &mut shutdown => break grace,
            p = connections.clone().acquire_owned() => p.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            grace = &mut shutdown => break grace,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        let svc = service_fn(move |req| {
            let h = h.clone();
            async move { Ok::<_, Infallible>(h.handle(req, peer).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            match conn.await {
                Ok(()) => {}
                Err(e) if e.is_parse_too_large() => {
                    warn!(listener = name, %peer, limit = limits.max_header_bytes, "request head too large; answered 431")
                }
                Err(e) => debug!(listener = name, %peer, error = %e, "connection ended with an error"),
            }
            drop(permit);
        });
    };
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!(listener = name, "in-flight requests did not finish within the shutdown grace period");
    }
}

// ---------------------------------------------------------------------------------------------
// The open-file budget

/// Descriptors kept for the process's own files: the store (database, WAL and shared memory, per
/// connection), the listeners, the runtime's epoll and event descriptors, the config watcher,
/// logs and plugin files. An idle gateway holds about 20.
pub const RESERVED_FDS: u64 = 64;
/// Largest default admin limit: metrics scrapers and operators need few connections.
pub const DEFAULT_ADMIN_CONNECTIONS: usize = 64;
/// Largest default ingress limit: bounds memory, as each connection may hold a body of
/// `server.max_body_bytes`.
pub const DEFAULT_INGRESS_CONNECTIONS: usize = 1024;

/// The connection limits in force, from the open-file limit and the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// Descriptors left for inbound connections (`usize::MAX` without a limit).
    pub available: usize,
    pub ingress: usize,
    pub admin: usize,
    /// `admin.max_connections` was lowered so that ingress keeps its share.
    pub admin_lowered: bool,
    /// `server.max_connections` is more than the descriptors available: accepts may fail.
    pub ingress_over: bool,
}

impl ConnectionBudget {
    /// The rule: `available = nofile - RESERVED_FDS - outbound` (`outbound`: delivery attempts
    /// at once, each holding a connection). Unless configured, admin gets `available / 8` (at
    /// most 64) and ingress the rest (at most 1024). A configured admin limit is lowered to what
    /// ingress leaves, so admin connections can never take the descriptors ingress counts on.
    /// Each limit is at least 1.
    pub fn plan(nofile: Option<u64>, outbound: usize, ingress: Option<usize>, admin: Option<usize>) -> Self {
        let available = match nofile {
            Some(n) => usize::try_from(n.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX).saturating_sub(outbound),
            None => usize::MAX,
        };
        let admin_default = (available / 8).clamp(1, DEFAULT_ADMIN_CONNECTIONS);
        let ingress = ingress.unwrap_or_else(|| {
            available.saturating_sub(admin.unwrap_or(admin_default)).clamp(1, DEFAULT_INGRESS_CONNECTIONS)
        });
        let wanted = admin.unwrap_or(admin_default);
        let admin = wanted.min(available.saturating_sub(ingress)).max(1);
        ConnectionBudget { available, ingress, admin, admin_lowered: admin < wanted, ingress_over: ingress > available }
    }
}

/// The soft `RLIMIT_NOFILE` after [`raise_open_file_limit`].
#[derive(Debug)]
pub struct OpenFileLimit {
    /// The limit in force (`None`: unlimited or unknown).
    pub soft: Option<u64>,
    /// What it was raised from, if it was.
    pub raised_from: Option<u64>,
    /// Why it could not be raised, if it could not.
    pub error: Option<std::io::Error>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as nginx (`worker_rlimit_nofile`), Envoy
/// and Go programs do: the soft limit (often 1024) is a default for programs that do not expect
/// many files, the hard limit is what the administrator allows.
#[cfg(target_os = "linux")]
pub fn raise_open_file_limit() -> OpenFileLimit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let unchanged = |error| OpenFileLimit { soft: current, raised_from: None, error };
    match (current, maximum) {
        (Some(soft), Some(hard)) if soft < hard => {
            match setrlimit(Resource::Nofile, Rlimit { current: maximum, maximum }) {
                Ok(()) => OpenFileLimit { soft: Some(hard), raised_from: Some(soft), error: None },
                Err(e) => unchanged(Some(e.into())),
            }
        }
        // an unlimited hard limit: Linux refuses an unlimited soft one for files (past
        // fs.nr_open), so the soft limit stays
        _ => unchanged(None),
    }
}

/// Elsewhere the limit is left as it is (and reported unknown).
#[cfg(not(target_os = "linux"))]
pub fn raise_open_file_limit() -> OpenFileLimit {
    OpenFileLimit { soft: None, raised_from: None, error: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_from_the_open_file_limit() {
        let plan = ConnectionBudget::plan;
        // (nofile, outbound, server.max_connections, admin.max_connections) -> (available, ingress, admin, lowered, over)
        #[rustfmt::skip]
        let cases = [
            // defaults: an eighth to admin (at most 64), the rest to ingress (at most 1024)
            ((Some(1_048_576), 256, None, None), (1_048_256, 1024, 64, false, false)),
            ((Some(1024), 256, None, None), (704, 640, 64, false, false)),
            ((Some(512), 256, None, None), (192, 168, 24, false, false)),
            ((Some(512), 0, None, None), (448, 392, 56, false, false)),
            ((None, 256, None, None), (usize::MAX, 1024, 64, false, false)),
            // configured values are kept while they fit
            ((Some(1024), 256, Some(500), Some(100)), (704, 500, 100, false, false)),
            ((Some(1024), 256, Some(500), None), (704, 500, 64, false, false)),
            ((Some(1024), 256, None, Some(200)), (704, 504, 200, false, false)),
            // admin never takes what ingress counts on
            ((Some(1024), 256, Some(650), Some(100)), (704, 650, 54, true, false)),
            ((Some(1024), 256, Some(704), Some(100)), (704, 704, 1, true, false)),
            // too few descriptors: at least one each, and said so
            ((Some(1024), 256, Some(2000), None), (704, 2000, 1, true, true)),
            ((Some(100), 256, None, None), (0, 1, 1, false, true)),
        ];
        for ((nofile, outbound, ingress, admin), (available, i, a, lowered, over)) in cases {
            let want = ConnectionBudget { available, ingress: i, admin: a, admin_lowered: lowered, ingress_over: over };
            assert_eq!(plan(nofile, outbound, ingress, admin), want, "{nofile:?} {outbound} {ingress:?} {admin:?}");
        }
    }
}
