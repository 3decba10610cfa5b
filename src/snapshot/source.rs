//! A `sources.<name>` section, compiled: its path, verifier, guards, dedupe key, and what its
//! routes read of a body.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::config::{DedupeConfig, KeyError, SourceConfig, parse_net};
use crate::delivery::NEVER_FORWARDED;
use crate::rules::{JsonPath, Projection};
use crate::server::guard::{AllowList, RateLimit};
use crate::verify::Verifier;

use super::Route;

pub struct Source {
    pub name: Arc<str>,
    pub path: String,
    pub verifier: Verifier,
    /// Indexes into `Snapshot::routes` of the routes of this source, in file order.
    pub routes: Vec<usize>,
    /// Whether any of those routes reads the JSON body (if not, the body is never parsed).
    pub needs_body: bool,
    /// What the routes' conditions and the dedupe key can read of a body: only that is parsed.
    pub projection: Projection,
    /// Sender headers not forwarded to destinations (nor stored).
    pub never_forward: Vec<HeaderName>,
    pub dedupe: Option<Dedupe>,
    /// `allow_ips`: who may post here (`None`: everyone).
    pub allow_ips: Option<AllowList>,
    /// `rate_limit`; shared with the previous snapshot's source across a reload that keeps it.
    pub rate_limit: Option<Arc<RateLimit>>,
}

/// Where a source's own event id is found, and for how long it is remembered.
pub struct Dedupe {
    pub key: DedupeKey,
    pub window: Duration,
}

pub enum DedupeKey {
    Header(HeaderName),
    Path(JsonPath),
}

impl Dedupe {
    /// Compiles `dedupe`; the error's key is relative to the source. `None` with no error: the
    /// section names neither key, which config reported.
    fn from_config(d: &DedupeConfig) -> Result<Option<Dedupe>, KeyError> {
        let key = match (&d.header, &d.path) {
            (Some(h), _) => HeaderName::try_from(h.as_str())
                .map(DedupeKey::Header)
                .map_err(|_| KeyError::new(".dedupe.header", format!("\"{h}\" is not a valid header name")))?,
            (None, Some(p)) => JsonPath::parse(p).map(DedupeKey::Path).map_err(|m| KeyError::new(".dedupe.path", m))?,
            (None, None) => return Ok(None),
        };
        Ok(Some(Dedupe { key, window: d.window.0 }))
    }
}

impl Source {
    /// Compiles `sources.<name>`, whose routes are `mine` (indexes into `routes`). Every problem is
    /// returned, with keys relative to the section.
    pub fn from_config(
        name: &str,
        s: &SourceConfig,
        routes: &[Route],
        mine: Vec<usize>,
    ) -> Result<Source, Vec<KeyError>> {
        let dedupe = s.dedupe.as_ref().map(Dedupe::from_config).transpose().map(Option::flatten);
        let verifier =
            Verifier::from_config(&s.verify).map_err(|e| KeyError::new(format!(".verify{}", e.key), e.message));
        let (dedupe, verifier) = match (dedupe, verifier) {
            (Ok(dedupe), Ok(verifier)) => (dedupe, verifier),
            (dedupe, verifier) => return Err(dedupe.err().into_iter().chain(verifier.err()).collect()),
        };
        let mut never_forward: Vec<HeaderName> = NEVER_FORWARDED.iter().map(|h| HeaderName::from_static(h)).collect();
        if let Some(h) = s.verify.header.as_deref().and_then(|h| HeaderName::try_from(h).ok()) {
            never_forward.push(h);
        }
        let dedupe_path = match &dedupe {
            Some(Dedupe { key: DedupeKey::Path(p), .. }) => Some(p),
            _ => None,
        };
        let needs_body = mine.iter().any(|i| routes[*i].rule.needs_body()) || dedupe_path.is_some();
        let mut projection = Projection::default();
        mine.iter().for_each(|i| routes[*i].rule.read_by(&mut projection));
        if let Some(p) = dedupe_path {
            p.read_by(&mut projection);
        }
        Ok(Source {
            name: name.into(),
            path: s.path.clone(),
            verifier,
            routes: mine,
            needs_body,
            projection,
            never_forward,
            dedupe,
            // entries that do not parse are reported by config
            allow_ips: s.allow_ips.as_ref().map(|n| AllowList::new(n.iter().filter_map(|n| parse_net(n)).collect())),
            rate_limit: s.rate_limit.map(|r| Arc::new(RateLimit::new(r.per_second, r.burst()))),
        })
    }
}
