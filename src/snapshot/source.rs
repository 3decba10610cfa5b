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
use crate::verify::catalogue::Field;

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
    /// Where the provider puts the event type (the preset's; empty for generic schemes): the
    /// first of these the event has is its `event_type`.
    pub event_type: Vec<EventTypeAt>,
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

/// One place a provider may put the event type.
pub enum EventTypeAt {
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
        let preset = verifier.preset();
        for h in preset.map(|p| p.signature_headers()).unwrap_or_default() {
            if !never_forward.contains(&h) {
                never_forward.push(h);
            }
        }
        let event_type: Vec<EventTypeAt> = preset
            .map(|p| p.event_type)
            .unwrap_or_default()
            .iter()
            .map(|f| match f {
                Field::Header(h) => EventTypeAt::Header(HeaderName::from_static(h)),
                Field::Path(p) => EventTypeAt::Path(JsonPath::parse(p).expect("the catalogue's paths parse")),
            })
            .collect();
        let reads_event_type = mine.iter().any(|i| routes[*i].rule.reads_event_type());
        if reads_event_type && event_type.is_empty() {
            return Err(vec![KeyError::new(
                ".verify.scheme",
                format!(
                    "routes of this source use `event_type`, but scheme {} names no event type; use `header:` or `path:` conditions",
                    verifier.scheme_name()
                ),
            )]);
        }
        let dedupe_path = match &dedupe {
            Some(Dedupe { key: DedupeKey::Path(p), .. }) => Some(p),
            _ => None,
        };
        let type_paths: Vec<&JsonPath> = event_type
            .iter()
            .filter_map(|t| match t {
                EventTypeAt::Path(p) => Some(p),
                EventTypeAt::Header(_) => None,
            })
            .collect();
        let needs_body = mine.iter().any(|i| routes[*i].rule.needs_body())
            || dedupe_path.is_some()
            || (reads_event_type && !type_paths.is_empty());
        let mut projection = Projection::default();
        type_paths.iter().for_each(|p| p.read_by(&mut projection));
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
            event_type,
            // entries that do not parse are reported by config
            allow_ips: s.allow_ips.as_ref().map(|n| AllowList::new(n.iter().filter_map(|n| parse_net(n)).collect())),
            rate_limit: s.rate_limit.map(|r| Arc::new(RateLimit::new(r.per_second, r.burst()))),
        })
    }
}
