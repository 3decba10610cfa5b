//! `hookyard dry-run`: one event through routing, nothing sent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use hookyard::snapshot::{Event, EventId};
use serde_json::{Map, Value, json};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Source the event arrives at.
    #[arg(long)]
    source: String,
    /// A request header, `'Name: value'`; repeatable.
    #[arg(long = "header", short = 'H', value_parser = super::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// File holding the request body.
    #[arg(long)]
    body: PathBuf,
    /// Event id to use (default: a new one), for reproducible output.
    #[arg(long)]
    event_id: Option<String>,
    /// Unix time to sign with (default: now), for reproducible output.
    #[arg(long)]
    timestamp: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let snap = match hookyard::snapshot::build(&args.config, &hookyard::snapshot::Plugins::from_env()) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    super::print_warnings(&snap);
    let Some(source) = snap.source_by_name(&args.source) else {
        let names: Vec<&str> = snap.sources.iter().map(|s| &*s.name).collect();
        anyhow::bail!("unknown source {:?}; sources are: {}", args.source, names.join(", "));
    };
    let body = Bytes::from(std::fs::read(&args.body).with_context(|| format!("cannot read {}", args.body.display()))?);
    let mut headers = http::HeaderMap::new();
    for (k, v) in args.headers {
        headers.append(k, v);
    }
    if !headers.contains_key(http::header::CONTENT_TYPE) {
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    }
    let now = match args.timestamp {
        Some(t) => UNIX_EPOCH + Duration::from_secs(t),
        None => SystemTime::now(),
    };
    let id = args.event_id.map(|s| EventId(s.into())).unwrap_or_else(EventId::generate);
    let event = Event { id, source: source.name.clone(), received_at: now, headers, body };
    let routed = super::runtime()?.block_on(snap.route(source, &event, &event.id.0));
    let routed_event_type = routed.event_type.clone();
    let routes: Vec<Value> = source
        .routes
        .iter()
        .map(|r| json!({"name": &*snap.routes[*r].name, "matched": routed.matched.contains(r)}))
        .collect();
    let mut deliveries = Vec::new();
    let names: Vec<String> = routed.deliveries.iter().map(|d| d.destination.to_string()).collect();
    for planned in routed.deliveries {
        let dest = snap.destination(&planned.destination).expect("planned destinations exist");
        let due = snap.preview(source, &event, &planned);
        let templated_step = planned.after.is_some() && !dest.templates.is_empty();
        // a later step's templates read the response before it: rendered only once it answers
        let request = match dest.target(&due) {
            Ok(uri) if !templated_step => {
                let req = hookyard::delivery::build_request(dest, &due, uri, now);
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
    let event_type = routed_event_type.or_else(|| snap.event_type(source, &event));
    let out = json!({
        "event": {"id": event.id.to_string(), "source": &*source.name, "body_is_json": body_is_json, "event_type": event_type},
        "routes": routes,
        "transforms": routed.notes,
        "deliveries": deliveries,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
