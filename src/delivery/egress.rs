//! The egress guard: deliveries may only reach public addresses unless `egress.allow` says otherwise.
//!
//! The check runs on the addresses a destination host resolves to, on every new connection (in the
//! resolver the HTTP connector uses), so a DNS record that later points inside the network is still
//! refused. IP-literal URLs skip DNS and are checked before the request is made.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;

/// Which non-public addresses deliveries may reach.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

/// A connection refused by the policy. Travels inside an `io::Error` through the HTTP client.
#[derive(Debug, Clone)]
pub struct EgressRefused {
    pub host: String,
    pub ip: IpAddr,
    pub kind: &'static str,
}

impl fmt::Display for EgressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "egress refused: {} resolves to {} ({} address); add it to egress.allow to permit it",
            self.host, self.ip, self.kind
        )
    }
}

impl std::error::Error for EgressRefused {}

impl EgressPolicy {
    pub fn new(allow: Vec<IpNet>) -> Self {
        EgressPolicy { allow }
    }

    /// `Ok` if `ip` is public or explicitly allowed; otherwise what kind of address it is.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        match non_public_kind(ip) {
            None => Ok(()),
            Some(_) if self.allow.iter().any(|net| net.contains(&ip)) => Ok(()),
            Some(kind) => Err(kind),
        }
    }
}

/// `None` for a globally routable unicast address, else a short description of what it is.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_kind(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private")
            } else if seg[0] & 0xff00 == 0xff00 {
                Some("multicast")
            } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
                Some("documentation")
            } else if seg[0] == 0x0064 && seg[1] == 0xff9b {
                // NAT64: judge the embedded IPv4 address
                let [a, b] = seg[6].to_be_bytes();
                let [c, d] = seg[7].to_be_bytes();
                v4_kind(Ipv4Addr::new(a, b, c, d))
            } else if seg[0] == 0 && seg[1..6].iter().all(|s| *s == 0) {
                Some("reserved") // IPv4-compatible (deprecated) and other ::/96
            } else {
                None
            }
        }
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => Some("unspecified"),
        (127, _, _) => Some("loopback"),
        (10, _, _) => Some("private"),
        (172, 16..=31, _) => Some("private"),
        (192, 168, _) => Some("private"),
        (100, 64..=127, _) => Some("shared (carrier-grade NAT)"),
        (169, 254, _) => Some("link-local"),
        (192, 0, 0) => Some("reserved"),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Some("documentation"),
        (198, 18..=19, _) => Some("benchmarking"),
        (224..=239, _, _) => Some("multicast"),
        (240..=255, _, _) => Some("reserved"),
        _ => None,
    }
}

/// The DNS resolver of delivery connections: resolves with the system resolver, then keeps only
/// addresses the policy allows. If none is left the connection fails with [`EgressRefused`].
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        GuardedResolver { policy }
    }
}

type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(kind) => {
                        refused.get_or_insert(EgressRefused { host: host.clone(), ip: a.ip(), kind });
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(r)) => Err(io::Error::new(io::ErrorKind::PermissionDenied, r)),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// Finds an [`EgressRefused`] anywhere in an error's source chain.
pub fn find_refusal<'a>(mut err: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressRefused> {
    loop {
        if let Some(r) = err.downcast_ref::<EgressRefused>() {
            return Some(r);
        }
        if let Some(r) =
            err.downcast_ref::<io::Error>().and_then(|e| e.get_ref()).and_then(|e| e.downcast_ref::<EgressRefused>())
        {
            return Some(r);
        }
        err = err.source()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        let cases: &[(&str, Option<&str>)] = &[
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("127.0.0.1", Some("loopback")),
            ("127.255.0.9", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("shared (carrier-grade NAT)")),
            ("0.0.0.0", Some("unspecified")),
            ("224.0.0.1", Some("multicast")),
            ("255.255.255.255", Some("reserved")),
            ("192.0.2.1", Some("documentation")),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link-local")),
            ("fd00::1", Some("private")),
            ("ff02::1", Some("multicast")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::a00:1", Some("private")),
            ("2001:db8::1", Some("documentation")),
            ("2606:4700::1111", None),
        ];
        for (ip, want) in cases {
            assert_eq!(non_public_kind(ip.parse().unwrap()), *want, "{ip}");
        }
    }

    #[test]
    fn allow_list_overrides() {
        let policy = EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        assert_eq!(policy.check("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(policy.check("::1".parse().unwrap()), Ok(()));
        assert_eq!(policy.check("10.0.0.1".parse().unwrap()), Err("private"));
        assert_eq!(policy.check("8.8.8.8".parse().unwrap()), Ok(()));
    }

    #[tokio::test]
    async fn resolver_refuses_non_public_names() {
        use tower_service::Service;
        let mut r = GuardedResolver::new(Arc::new(EgressPolicy::default()));
        let err = r.call("localhost".parse().unwrap()).await.unwrap_err();
        let refusal = find_refusal(&err).expect("refusal in chain");
        assert_eq!(refusal.kind, "loopback");
        assert!(err.to_string().starts_with("egress refused: localhost resolves to "), "{err}");

        let mut r = GuardedResolver::new(Arc::new(EgressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])));
        let addrs: Vec<_> = r.call("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty());
    }
}
