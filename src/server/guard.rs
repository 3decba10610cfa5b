//! Per-source guards, checked before a request's body is read: who may post (`allow_ips`, with
//! the client address taken from the socket or from a trusted proxy's `X-Forwarded-For`) and how
//! often (`rate_limit`, a token bucket).
//!
//! Pure: no IO, no logging, no clock but the one passed in (or `Instant` in [`RateLimit::check`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderMap;
use ipnet::IpNet;

/// Networks a source accepts requests from.
#[derive(Debug, Clone)]
pub struct AllowList(Vec<IpNet>);

impl AllowList {
    pub fn new(nets: Vec<IpNet>) -> AllowList {
        AllowList(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        contains(&self.0, ip)
    }
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// The client of a request from socket peer `peer`: the peer itself, unless it is one of the
/// `trusted` proxies. Then `X-Forwarded-For` (every such header, in order, as one list) is read
/// from the right, each trusted address skipped: the first address that is not a trusted proxy
/// is the client (nginx's `real_ip_recursive on`). If every address is trusted, the left-most is
/// the client; an entry that is not an address stops the walk at the last trusted hop, which
/// forwarded it. IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let mut client = peer.to_canonical();
    if !contains(trusted, client) {
        return client;
    }
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else { return client };
        for entry in value.rsplit(',') {
            let Some(ip) = parse_forwarded(entry.trim()) else { return client };
            client = ip;
            if !contains(trusted, ip) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: `192.0.2.1`, `2001:db8::1`, and the forms some balancers write
/// with a port or brackets (`192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

/// A source's request rate limit: a token bucket of `burst` tokens refilled at `per_second`,
/// kept as the generic cell rate algorithm (one atomic "theoretical arrival time", no lock).
#[derive(Debug)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
    /// Nanoseconds per token.
    interval: u64,
    /// Nanoseconds of credit a full bucket holds (`burst * interval`).
    tolerance: u64,
    start: Instant,
    /// When the bucket would be full again, in nanoseconds since `start`.
    tat: AtomicU64,
    /// Whether the last request was refused (to log the first refusal of a run only).
    refusing: AtomicBool,
}

/// A request the rate limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Until the next token.
    pub wait: Duration,
    /// The first refusal after an accepted request.
    pub first: bool,
}

impl Refused {
    /// `wait` in whole seconds for `Retry-After`, rounded up and at least 1: a sender that waits
    /// that long gets a token.
    pub fn retry_after_secs(&self) -> u64 {
        (self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0)).max(1)
    }
}

impl RateLimit {
    /// A full bucket. `per_second` must be positive and `burst` at least 1 (checked by `config`).
    pub fn new(per_second: f64, burst: u32) -> RateLimit {
        let interval = ((1e9 / per_second) as u64).max(1);
        RateLimit {
            per_second,
            burst,
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            start: Instant::now(),
            tat: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
        }
    }

    /// Takes a token now, or says how long until one is there.
    pub fn check(&self) -> Result<(), Refused> {
        self.check_at(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Takes a token at `now` (nanoseconds since the limit was made).
    fn check_at(&self, now: u64) -> Result<(), Refused> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            if next - now > self.tolerance {
                let first = !self.refusing.swap(true, Ordering::Relaxed);
                return Err(Refused { wait: Duration::from_nanos(next - now - self.tolerance), first });
            }
            match self.tat.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) => tat = seen,
            }
        }
        if self.refusing.load(Ordering::Relaxed) {
            self.refusing.store(false, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| crate::config::parse_net(n).unwrap()).collect()
    }

    #[test]
    fn allow_lists_match_v4_v6_and_mapped_addresses() {
        let allow = AllowList::new(nets(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]));
        #[rustfmt::skip]
        let cases = [
            ("10.1.2.3", true), ("11.0.0.1", false), ("192.0.2.7", true), ("192.0.2.8", false),
            ("2001:db8::1", true), ("2001:db9::1", false), ("::ffff:10.0.0.1", true), ("::1", false),
        ];
        for (ip, want) in cases {
            assert_eq!(allow.contains(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn client_address_from_socket_or_trusted_forwarded_for() {
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        // (peer, X-Forwarded-For headers, trusted?, client)
        #[rustfmt::skip]
        let cases: &[(&str, &[&str], bool, &str)] = &[
            // an untrusted peer is the client, whatever it forwards
            ("192.0.2.1", &["203.0.113.9"], true, "192.0.2.1"),
            // no trusted proxies configured: the socket decides
            ("127.0.0.1", &["203.0.113.9"], false, "127.0.0.1"),
            ("127.0.0.1", &["203.0.113.9"], true, "203.0.113.9"),
            // right-most untrusted address; what the client itself wrote on the left is ignored
            ("127.0.0.1", &["1.1.1.1, 203.0.113.9, 10.0.0.2"], true, "203.0.113.9"),
            // several headers are one list, in order
            ("127.0.0.1", &["1.1.1.1", "203.0.113.9", "10.0.0.2"], true, "203.0.113.9"),
            // all trusted: the left-most
            ("127.0.0.1", &["10.0.0.3, 10.0.0.2"], true, "10.0.0.3"),
            // no header: the trusted peer itself
            ("127.0.0.1", &[], true, "127.0.0.1"),
            // garbage stops at the last trusted hop
            ("127.0.0.1", &["203.0.113.9, bogus, 10.0.0.2"], true, "10.0.0.2"),
            ("127.0.0.1", &["203.0.113.9, "], true, "127.0.0.1"),
            // ports, brackets, IPv6, mapped
            ("127.0.0.1", &["203.0.113.9:4711"], true, "203.0.113.9"),
            ("127.0.0.1", &["[2001:db8::5]:4711"], true, "2001:db8::5"),
            ("127.0.0.1", &["[2001:db8::5]"], true, "2001:db8::5"),
            ("127.0.0.1", &["2001:db8::5"], true, "2001:db8::5"),
            ("::ffff:127.0.0.1", &["::ffff:203.0.113.9"], true, "203.0.113.9"),
        ];
        for (peer, xff, use_trusted, want) in cases {
            let mut headers = HeaderMap::new();
            for v in *xff {
                headers.append("x-forwarded-for", v.parse().unwrap());
            }
            let trusted: &[IpNet] = if *use_trusted { &trusted } else { &[] };
            let got = client_addr(peer.parse().unwrap(), &headers, trusted);
            assert_eq!(got, want.parse::<IpAddr>().unwrap(), "peer {peer}, X-Forwarded-For {xff:?}");
        }
    }

    #[test]
    fn rate_limit_allows_a_burst_then_one_per_interval() {
        let s = 1_000_000_000;
        let limit = RateLimit::new(2.0, 3); // a token every 500ms, 3 at once
        for _ in 0..3 {
            assert_eq!(limit.check_at(0), Ok(()));
        }
        let refused = limit.check_at(0).unwrap_err();
        assert_eq!(refused, Refused { wait: Duration::from_millis(500), first: true });
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(!limit.check_at(s / 4).unwrap_err().first, "logged once per run of refusals");
        assert_eq!(limit.check_at(s / 2), Ok(()));
        assert_eq!(limit.check_at(s / 2).unwrap_err().wait, Duration::from_millis(500));
        // a quiet period refills the bucket, never beyond the burst
        let later = 100 * s;
        for _ in 0..3 {
            assert_eq!(limit.check_at(later), Ok(()));
        }
        assert!(limit.check_at(later).unwrap_err().first);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_at_least_one() {
        let limit = RateLimit::new(0.4, 1); // a token every 2.5s
        assert_eq!(limit.check_at(0), Ok(()));
        let refused = limit.check_at(0).unwrap_err();
        assert_eq!(refused.wait, Duration::from_millis(2500));
        assert_eq!(refused.retry_after_secs(), 3);
        assert_eq!(limit.check_at(3_000_000_000), Ok(()), "waiting Retry-After gets a token");
        let r = Refused { wait: Duration::from_nanos(1), first: false };
        assert_eq!(r.retry_after_secs(), 1);
        let r = Refused { wait: Duration::from_secs(2), first: false };
        assert_eq!(r.retry_after_secs(), 2);
    }
}
