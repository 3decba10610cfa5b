//! One event through a snapshot: [`Snapshot::route`] parses what the conditions read, matches
//! the source's routes, runs their transforms and plans the deliveries. Ingress, re-route and
//! `dry-run` all make this one call, so what `dry-run` shows is what ingress does.

use std::sync::Arc;

use http::HeaderMap;

use super::{DedupeKey, Event, EventTypeAt, Route, Snapshot, Source};
use crate::config::OnError;
use crate::delivery::{forwardable, merge_headers, message_id};
use crate::plugin::{EventRef, Outcome, run_chain};
use crate::rules::EventView;
use crate::store::{DestinationName, DueDelivery, NewDelivery, OrderSpec, RouteName};

/// The route name of a delivery `replay --reroute --to` planned, which no route made: `hookyard
/// events` and an export show where it came from.
pub const REPLAY_ROUTE: &str = "(replay)";

/// Everything routing decided for one event.
#[derive(Debug, Default)]
pub struct Routed {
    /// Indexes into `Snapshot::routes` of the routes the event matched, in file order.
    pub matched: Vec<usize>,
    /// The event's headers as stored and forwarded (credentials and signatures removed); the
    /// transforms saw these.
    pub stored_headers: Vec<(String, String)>,
    /// The source's own id of the event, if the source names one and the event carries it.
    pub dedupe_key: Option<String>,
    /// One delivery per (matched route, destination), after the transforms.
    pub deliveries: Vec<NewDelivery>,
    /// What transforms did (dropped, failed), per route.
    pub notes: Vec<RouteNote>,
    /// The event's type, as the source's provider preset finds it (header, or a JSONPath when the
    /// body was parsed).
    pub event_type: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteNote {
    pub route: String,
    pub note: String,
}

impl Snapshot {
    /// Routes `event`, which arrived at `source`: parses only what the source's conditions and
    /// dedupe key read (see [`crate::rules::Projection`]; a body that is not JSON fails every
    /// body condition), matches the routes, and plans their deliveries. `id_key` seeds the
    /// `webhook-id`s: the event id, or a fresh key when re-routing, so receivers do not take the
    /// new deliveries for duplicates.
    pub async fn route(&self, source: &Source, event: &Event, id_key: &str) -> Routed {
        self.route_only(source, event, id_key, None).await
    }

    /// Why each of `source`'s routes matched `event` or not, in file order: `None` for a route
    /// it matched, else the first condition that did not hold ([`crate::rules::Rule::explain`]).
    /// The same conditions [`Snapshot::route`] evaluates, on the whole body (the console and
    /// `dry-run` show it; ingress never calls it).
    pub fn explain(&self, source: &Source, event: &Event) -> Vec<(RouteName, Option<String>)> {
        let json = if crate::verify::is_form(&event.headers) {
            Some(form_json(&event.body))
        } else {
            serde_json::from_slice(&event.body).ok()
        };
        let event_type = event_type(source, event, json.as_ref());
        let view = EventView { headers: &event.headers, body: json.as_ref(), event_type: event_type.as_deref() };
        source
            .routes
            .iter()
            .map(|i| {
                let route = &self.routes[*i];
                (RouteName::from(&*route.name), route.rule.explain(&view))
            })
            .collect()
    }

    /// [`Snapshot::route`], but with `only`, of the source's routes only the one of that name is
    /// matched and planned: `replay --reroute --route R` feeds history to a new route without the
    /// other routes' transforms running or their destinations receiving anything again.
    pub async fn route_only(&self, source: &Source, event: &Event, id_key: &str, only: Option<&str>) -> Routed {
        let json = if !source.needs_body {
            None
        } else if crate::verify::is_form(&event.headers) {
            Some(form_json(&event.body))
        } else {
            source.projection.parse(&event.body)
        };
        let event_type = event_type(source, event, json.as_ref());
        let view = EventView { headers: &event.headers, body: json.as_ref(), event_type: event_type.as_deref() };
        let matched: Vec<usize> = source
            .routes
            .iter()
            .copied()
            .filter(|i| only.is_none_or(|name| *self.routes[*i].name == *name))
            .filter(|i| self.routes[*i].rule.matches(&view))
            .collect();
        let dedupe_key = dedupe_key(source, event, json.as_ref());
        drop(json);
        // computed once: stored with the event and handed to plugins
        let stored_headers = self.stored_headers(source, &event.headers);
        let mut routed = Routed { stored_headers, dedupe_key, event_type, ..Routed::default() };
        for &r in &matched {
            self.plan_route(&self.routes[r], source, event, id_key, &mut routed).await;
        }
        self.finish_plan(event, &routed.stored_headers, &mut routed.deliveries);
        routed.matched = matched;
        routed
    }

    /// The deliveries of one matched route: one per destination, after its transform chain. A
    /// transform output goes to the destinations it names (a subset of the route's) or to all of
    /// the route's; a drop plans nothing; a failure follows the route's `on_error`. Plugins see
    /// the stored headers, never credentials or signatures.
    async fn plan_route(&self, route: &Route, source: &Source, event: &Event, id_key: &str, out: &mut Routed) {
        if route.plugins.is_empty() {
            self.plan_plain(route, id_key, &mut out.deliveries);
            return;
        }
        // Borrowed: the chain lowers these into each plugin's memory without copying them here.
        let input = EventRef {
            id: &event.id.0,
            source: &source.name,
            received_at_ms: crate::store::to_ms(event.received_at) as u64,
            method: "POST",
            path: &source.path,
            headers: &out.stored_headers,
            body: &event.body,
        };
        let started = std::time::Instant::now();
        // the route's chain, around its `plugin` spans
        let mut span = crate::telemetry::Span::child("transform");
        let result = if span.is_recording() {
            span.set("route", &route.name);
            span.set("chain", route.chain_label.clone());
            crate::telemetry::in_span(span.context(), run_chain(&route.plugins, input)).await
        } else {
            run_chain(&route.plugins, input).await
        };
        drop(span);
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(Outcome::Emit(outputs)) => {
                crate::metrics::plugin_call(&route.chain_label, "emit", seconds);
                for (i, output) in outputs.into_iter().enumerate() {
                    // the first output keeps the untransformed id scheme; a split's others get their own
                    let route_key = if i == 0 { route.name.to_string() } else { format!("{}#{i}", route.name) };
                    // what the transform left as it was is not stored again: an unchanged
                    // body is the event's, no headers is none
                    let body = (output.body != event.body).then_some(&output.body);
                    let headers = (!output.headers.is_empty()).then_some(&output.headers);
                    let first = out.deliveries.len();
                    for &d in &route.destinations {
                        let destination = &self.destinations[d].name;
                        if output.destinations.as_ref().is_some_and(|names| !names.iter().any(|n| n == &**destination))
                        {
                            continue;
                        }
                        out.deliveries.push(NewDelivery {
                            body: body.cloned(),
                            headers: headers.cloned(),
                            ..NewDelivery::new(
                                RouteName(route.name.clone()),
                                DestinationName(destination.clone()),
                                message_id(id_key, &route_key, destination),
                            )
                        });
                    }
                    self.plan_steps(route, id_key, &route_key, first, &mut out.deliveries);
                }
            }
            Ok(Outcome::Drop(reason)) => {
                crate::metrics::plugin_call(&route.chain_label, "drop", seconds);
                out.notes
                    .push(RouteNote { route: route.name.to_string(), note: format!("dropped by transform: {reason}") });
            }
            Err(e) => {
                crate::metrics::plugin_call(&route.chain_label, e.error.label(), seconds);
                let reason = format!("transform failed ({}): {e}", e.error.label());
                out.notes.push(RouteNote {
                    route: route.name.to_string(),
                    note: format!("{reason} (on_error: {:?})", route.on_error),
                });
                match route.on_error {
                    OnError::Drop => {}
                    OnError::DeliverOriginal => self.plan_plain(route, id_key, &mut out.deliveries),
                    OnError::Fail => {
                        let start = out.deliveries.len();
                        self.plan_plain(route, id_key, &mut out.deliveries);
                        out.deliveries[start..].iter_mut().for_each(|d| d.failed = Some(reason.clone()));
                    }
                }
            }
        }
    }

    /// Gives each delivery to an ordered destination its order key, read from the body it
    /// delivers (a transform's output, else the event's) or the event's headers, marks those
    /// of batched destinations, and renders the templates of a first step's destination (a later
    /// step's are rendered when the step before it answered). A template that cannot be rendered
    /// fails its delivery with the reason: it is never sent half-rendered.
    fn finish_plan(&self, event: &Event, stored_headers: &[(String, String)], deliveries: &mut [NewDelivery]) {
        if !self.finishes_plans {
            return;
        }
        for i in 0..deliveries.len() {
            // a step after one that cannot be sent is not sent either (steps come after theirs)
            if let Some(reason) = deliveries[i].after.and_then(|a| deliveries[a].failed.clone())
                && deliveries[i].failed.is_none()
            {
                deliveries[i].failed = Some(format!("the step before it was not sent: {reason}"));
            }
            let d = &mut deliveries[i];
            let Some(dest) = self.destination(&d.destination) else { continue };
            if !dest.templates.is_empty() && d.after.is_none() && d.failed.is_none() {
                let body = d.body.as_deref().unwrap_or(&event.body);
                match dest.templates.render(stored_headers, body, None) {
                    Ok(r) => {
                        d.url = r.url;
                        if !r.headers.is_empty() {
                            d.headers = Some(merge_headers(d.headers.take(), r.headers));
                        }
                        if r.body.is_some() {
                            d.body = r.body;
                        }
                    }
                    Err(e) => d.failed = Some(format!("destinations.{}: {e}", dest.name)),
                }
            }
            d.batch = dest.batch.is_some();
            if let Some(ordering) = &dest.ordering {
                let body = d.body.as_deref().unwrap_or(&event.body);
                d.order = Some(OrderSpec { key: ordering.key_of(&event.headers, body), block: ordering.blocks() });
            }
        }
    }

    /// One delivery of `event` straight to `destination` (`replay --reroute --to`): no route, no
    /// transform, the body and forwardable headers as stored, under the route name
    /// [`REPLAY_ROUTE`]; its `webhook-id` is seeded by `id_key` (fresh per replay). An ordered or
    /// batched destination orders or batches it as it would any delivery, and a templated one
    /// renders its templates from the stored headers and body.
    pub fn plan_to(
        &self,
        event: &Event,
        stored_headers: &[(String, String)],
        id_key: &str,
        destination: &DestinationName,
    ) -> NewDelivery {
        let mut d = [NewDelivery::new(
            RouteName(REPLAY_ROUTE.into()),
            destination.clone(),
            message_id(id_key, REPLAY_ROUTE, destination),
        )];
        self.finish_plan(event, stored_headers, &mut d);
        let [d] = d;
        d
    }

    /// The later steps of `route` for the deliveries of one output, `out[first..]`: each follows
    /// its predecessor's delivery with the same body and headers (a step whose predecessor this
    /// output does not deliver to is not planned), and is failed with it.
    fn plan_steps(&self, route: &Route, id_key: &str, route_key: &str, first: usize, out: &mut Vec<NewDelivery>) {
        for step in &route.steps {
            let after = &self.destinations[step.after].name;
            let Some(parent) = out[first..].iter().position(|d| *d.destination == **after).map(|i| first + i) else {
                continue;
            };
            let destination = &self.destinations[step.destination].name;
            let p = &out[parent];
            out.push(NewDelivery {
                body: p.body.clone(),
                headers: p.headers.clone(),
                failed: p.failed.clone(),
                after: Some(parent),
                ..NewDelivery::new(
                    p.route.clone(),
                    DestinationName(destination.clone()),
                    message_id(id_key, route_key, destination),
                )
            });
        }
    }

    /// The deliveries of a route without transforms: one per destination.
    fn plan_plain(&self, route: &Route, id_key: &str, out: &mut Vec<NewDelivery>) {
        let first = out.len();
        for &d in &route.destinations {
            let destination = &self.destinations[d].name;
            out.push(NewDelivery::new(
                RouteName(route.name.clone()),
                DestinationName(destination.clone()),
                message_id(id_key, &route.name, destination),
            ));
        }
        self.plan_steps(route, id_key, &route.name, first, out);
    }

    /// The headers of an event that are stored and forwarded.
    pub fn stored_headers(&self, source: &Source, headers: &HeaderMap) -> Vec<(String, String)> {
        forwardable(headers, &source.never_forward)
    }

    /// A planned delivery as the dispatcher would see it (for `dry-run`).
    pub fn preview(&self, source: &Source, event: &Event, d: &NewDelivery) -> DueDelivery {
        DueDelivery {
            id: crate::ids::DeliveryId(0),
            event_id: event.id.clone(),
            route: d.route.as_str().into(),
            destination: d.destination.as_str().into(),
            msg_id: d.msg_id.as_str().into(),
            attempts: 0,
            headers: Arc::new(self.stored_headers(source, &event.headers)),
            extra_headers: d.headers.clone().map(Arc::new),
            body: d.body.clone().unwrap_or_else(|| event.body.clone()),
            order_key: d.order.as_ref().map(|o| o.key.clone()),
            url: d.url.as_deref().map(Arc::from),
            leads: false,
            context: None,
            lease_until: None,
        }
    }

    /// A body for a debug log line: JSON with the `server.log_redact` paths masked, else a note.
    /// Parsed whole here (the routing parse keeps only what conditions read).
    pub fn loggable_body(&self, body: &[u8]) -> String {
        let mut v = match serde_json::from_slice(body).ok() {
            Some(v) => v,
            None => return format!("<{} bytes, not JSON>", body.len()),
        };
        let mask = serde_json::Value::String("[redacted]".into());
        for p in &self.log_redact {
            p.replace_all(&mut v, &mask);
        }
        v.to_string()
    }
}

/// A form-encoded body as a JSON object of strings (a name given several times: an array of its
/// values, in order), so that `path:` conditions read it as they read JSON.
pub fn form_json(body: &[u8]) -> serde_json::Value {
    use serde_json::Value;
    let mut map = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        let v = Value::String(v.into_owned());
        match map.entry(k.into_owned()) {
            serde_json::map::Entry::Vacant(e) => {
                e.insert(v);
            }
            serde_json::map::Entry::Occupied(mut e) => match e.get_mut() {
                Value::Array(values) => values.push(v),
                first => {
                    let first = first.take();
                    *e.get_mut() = Value::Array(vec![first, v]);
                }
            },
        }
    }
    Value::Object(map)
}

impl Snapshot {
    /// The event's type as the source's preset finds it, parsing the body whatever the routes
    /// read (for `dry-run`; routing itself reads it only when a route tests it).
    pub fn event_type(&self, source: &Source, event: &Event) -> Option<String> {
        let json = if crate::verify::is_form(&event.headers) {
            Some(form_json(&event.body))
        } else {
            serde_json::from_slice(&event.body).ok()
        };
        event_type(source, event, json.as_ref())
    }
}

/// The event's type: the first place of the source's preset that the event fills with a string
/// (a number is taken as its text).
fn event_type(source: &Source, event: &Event, json: Option<&serde_json::Value>) -> Option<String> {
    source.event_type.iter().find_map(|at| match at {
        EventTypeAt::Header(h) => event.headers.get(h)?.to_str().ok().map(str::to_owned),
        EventTypeAt::Path(p) => match p.first(json?)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        },
    })
}

/// The source's own id of this event, if it names one and the event carries it.
fn dedupe_key(source: &Source, event: &Event, json: Option<&serde_json::Value>) -> Option<String> {
    let d = source.dedupe.as_ref()?;
    match &d.key {
        DedupeKey::Header(h) => event.headers.get(h)?.to_str().ok().map(str::to_string),
        DedupeKey::Path(p) => match p.first(json?)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::form_json;
    use serde_json::json;

    #[test]
    fn a_form_body_reads_as_a_json_object_of_strings() {
        assert_eq!(
            form_json(b"From=%2B15551230000&Body=Hello+there&To=1&To=2&To=3&Empty=&flag"),
            json!({"From": "+15551230000", "Body": "Hello there", "To": ["1", "2", "3"], "Empty": "", "flag": ""})
        );
        assert_eq!(form_json(b""), json!({}));
    }
}
