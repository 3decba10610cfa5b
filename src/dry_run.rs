//! One event through a snapshot's routing with nothing stored or sent: what `hookyard dry-run`
//! prints, what the console's "try an event" box shows, and how the console explains a stored
//! event by today's config. It makes the same [`Snapshot::route`] call ingress makes, and adds
//! why each route that did not match did not ([`Snapshot::explain`]).

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::snapshot::{Event, Snapshot, Source};

/// The event, each route of its source (`matched`, and `why` not), what the transforms did, and
/// each planned delivery with the request it would send (signed as of the event's arrival; a
/// later step whose templates read an earlier answer has `"request": null`).
pub async fn run(snap: &Snapshot, source: &Source, event: &Event) -> Value {
    let routed = snap.route(source, event, &event.id.0).await;
    let why = snap.explain(source, event);
    let routes: Vec<Value> = source
        .routes
        .iter()
        .zip(why)
        .map(|(r, (_, why))| {
            let matched = routed.matched.contains(r);
            // a route matched by `route` always has no reason here: both evaluate the same rule
            json!({"name": &*snap.routes[*r].name, "matched": matched, "why": if matched { None } else { why }})
        })
        .collect();
    let mut deliveries = Vec::new();
    let names: Vec<String> = routed.deliveries.iter().map(|d| d.destination.to_string()).collect();
    for planned in &routed.deliveries {
        let dest = snap.destination(&planned.destination).expect("planned destinations exist");
        let due = snap.preview(source, event, planned);
        let templated_step = planned.after.is_some() && !dest.templates.is_empty();
        // a later step's templates read the response before it: rendered only once it answers
        let request = match dest.target(&due) {
            Ok(uri) if !templated_step => {
                let req = crate::delivery::build_request(dest, &due, uri, event.received_at);
                let mut headers = Map::new();
                for (k, v) in req.headers() {
                    headers.insert(
                        k.as_str().to_string(),
                        Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                    );
                }
                let mut request = json!({"method": "POST", "url": req.uri().to_string(), "headers": headers});
                match std::str::from_utf8(&due.body) {
                    Ok(s) => request["body"] = Value::String(s.to_string()),
                    Err(_) => {
                        request["body_base64"] =
                            Value::String(base64::engine::general_purpose::STANDARD.encode(&due.body))
                    }
                }
                request
            }
            _ => Value::Null,
        };
        let mut delivery = json!({"route": planned.route, "destination": planned.destination, "request": request});
        if let Some(a) = planned.after {
            // a later step: sent once the delivery to `after` answered 2xx (and its conditions hold)
            delivery["after"] = Value::String(names[a].clone());
        }
        if let Some(reason) = &planned.failed {
            // kept as failed (on_error: fail): stored, never sent as is
            delivery["failed"] = Value::String(reason.clone());
        }
        if let Some(order) = &planned.order {
            // the key it would wait in line under (ordering:)
            delivery["order_key"] = Value::String(order.key.clone());
        }
        deliveries.push(delivery);
    }
    let body_is_json = serde_json::from_slice::<Value>(&event.body).is_ok();
    let event_type = routed.event_type.clone().or_else(|| snap.event_type(source, event));
    json!({
        "event": {"id": event.id.to_string(), "source": &*source.name, "body_is_json": body_is_json, "event_type": event_type},
        "config_version": snap.version,
        "routes": routes,
        "transforms": routed.notes,
        "deliveries": deliveries,
    })
}
