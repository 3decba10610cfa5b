//! The body of one OTLP/HTTP export: an `ExportTraceServiceRequest` of one resource, one scope
//! and a batch of spans, written as protobuf in one pass from the recorded spans.
//!
//! Written here rather than built as the protocol's generated types and encoded by prost, because
//! that cost more than the rest of exporting together: a `String` or `Vec` per id, name, key and
//! value, and prost computing each nested message's length again at every level it is nested in
//! (measured: 12,500 instructions of the 28,000 that three spans per event cost). Here every
//! length is computed once, from the records, and nothing is allocated but the body. What it
//! writes is checked against the generated types: the tests decode it with them
//! (`opentelemetry-proto`), as the integration tests' collector does.
//!
//! Fields at their default value (empty strings, no parent) are left out, as protobuf writers do.

use super::{Record, Value};

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// The request for `spans` of service `service_name`, from scope `hookyard` at `version`.
pub(super) fn export_request(service_name: &str, version: &str, spans: &[Record]) -> Vec<u8> {
    let service = Value::Shared(service_name.into());
    // Resource { attributes: [service.name] }
    let resource = field_len(1, key_value_len("service.name", &service));
    // InstrumentationScope { name, version }
    let scope = string_len(1, "hookyard") + string_len(2, version);
    let lens: Vec<usize> = spans.iter().map(span_len).collect();
    // ScopeSpans { scope, spans }
    let scope_spans = field_len(1, scope) + lens.iter().map(|&n| field_len(2, n)).sum::<usize>();
    // ResourceSpans { resource, scope_spans }
    let resource_spans = field_len(1, resource) + field_len(2, scope_spans);

    let mut out = Vec::with_capacity(field_len(1, resource_spans));
    put_len(&mut out, 1, resource_spans);
    put_len(&mut out, 1, resource);
    put_key_value(&mut out, 1, "service.name", &service);
    put_len(&mut out, 2, scope_spans);
    put_len(&mut out, 1, scope);
    put_string(&mut out, 1, "hookyard");
    put_string(&mut out, 2, version);
    for (span, len) in spans.iter().zip(lens) {
        put_len(&mut out, 2, len);
        let start = out.len();
        put_span(&mut out, span);
        debug_assert_eq!(out.len() - start, len, "span {} written as long as measured", span.name);
    }
    out
}

/// `Span` (opentelemetry/proto/trace/v1/trace.proto).
fn span_len(r: &Record) -> usize {
    field_len(1, 16)
        + field_len(2, 8)
        + string_len(3, &r.trace_state)
        + if r.has_parent() { field_len(4, 8) } else { 0 }
        + string_len(5, r.name)
        + key_len(6)
        + varint_len(r.kind as u64)
        + key_len(7)
        + 8
        + key_len(8)
        + 8
        + r.attributes.iter().map(|(k, v)| field_len(9, key_value_len(k, v))).sum::<usize>()
        + r.error.as_ref().map_or(0, |message| field_len(15, status_len(message)))
        + key_len(16)
        + 4
}

fn put_span(out: &mut Vec<u8>, r: &Record) {
    put_bytes(out, 1, &r.trace_id.to_bytes());
    put_bytes(out, 2, &r.span_id.to_bytes());
    put_string(out, 3, &r.trace_state);
    if r.has_parent() {
        put_bytes(out, 4, &r.parent.to_bytes());
    }
    put_string(out, 5, r.name);
    put_key(out, 6, VARINT);
    put_varint(out, r.kind as u64);
    put_key(out, 7, FIXED64);
    out.extend_from_slice(&r.start_ns.to_le_bytes());
    put_key(out, 8, FIXED64);
    out.extend_from_slice(&r.end_ns.to_le_bytes());
    for (k, v) in &r.attributes {
        put_key_value(out, 9, k, v);
    }
    if let Some(message) = &r.error {
        put_len(out, 15, status_len(message));
        put_string(out, 2, message);
        put_key(out, 3, VARINT);
        put_varint(out, STATUS_ERROR);
    }
    put_key(out, 16, FIXED32);
    out.extend_from_slice(&r.flags().to_le_bytes());
}

/// `Status.code` ERROR.
const STATUS_ERROR: u64 = 2;

/// `Status { message, code: ERROR }`.
fn status_len(message: &str) -> usize {
    string_len(2, message) + key_len(3) + varint_len(STATUS_ERROR)
}

/// `KeyValue { key, value: AnyValue }`.
fn key_value_len(key: &str, value: &Value) -> usize {
    string_len(1, key) + field_len(2, any_value_len(value))
}

fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    put_len(out, field, key_value_len(key, value));
    put_string(out, 1, key);
    put_len(out, 2, any_value_len(value));
    match value {
        Value::Int(i) => {
            put_key(out, 3, VARINT);
            put_varint(out, *i as u64);
        }
        // written even when empty: the value is set, to ""
        text => put_bytes(out, 1, text.as_str().unwrap_or_default().as_bytes()),
    }
}

/// `AnyValue { string_value = 1 | int_value = 3 }`: a string is written even when empty (the
/// value is set, to "").
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Int(i) => key_len(3) + varint_len(*i as u64),
        text => field_len(1, text.as_str().unwrap_or_default().len()),
    }
}

/// A length-delimited field of `len` bytes, whole.
fn field_len(field: u32, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

/// A string field, left out when empty.
fn string_len(field: u32, s: &str) -> usize {
    if s.is_empty() { 0 } else { field_len(field, s.len()) }
}

fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The key and length of a length-delimited field; its `len` bytes follow.
fn put_len(out: &mut Vec<u8>, field: u32, len: usize) {
    put_key(out, field, LEN);
    put_varint(out, len as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_len(out, field, b.len());
    out.extend_from_slice(b);
}

fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1 as otlp;
    use prost::Message;

    use super::super::Kind;
    use super::*;

    fn record(name: &'static str, parent: u64, attributes: Vec<(&'static str, Value)>, error: Option<&str>) -> Record {
        Record {
            trace_id: TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            span_id: SpanId::from(0x0123_4567_89ab_cdef),
            parent: SpanId::from(parent),
            remote_parent: parent == 9,
            trace_state: if parent == 9 { "vendor=x".into() } else { String::new() },
            name,
            kind: if parent == 0 { Kind::Server } else { Kind::Internal },
            start_ns: 1_764_000_000_000_000_000,
            end_ns: 1_764_000_000_000_250_000,
            attributes,
            error: error.map(String::from),
        }
    }

    /// The same spans as the protocol's generated types: what the body must decode to.
    fn expected(service: &str, spans: &[Record]) -> ExportTraceServiceRequest {
        let kv = |key: &str, value: any_value::Value| KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        };
        let spans = spans
            .iter()
            .map(|r| otlp::Span {
                trace_id: r.trace_id.to_bytes().to_vec(),
                span_id: r.span_id.to_bytes().to_vec(),
                trace_state: r.trace_state.clone(),
                parent_span_id: if r.has_parent() { r.parent.to_bytes().to_vec() } else { Vec::new() },
                flags: r.flags(),
                name: r.name.into(),
                kind: r.kind as i32,
                start_time_unix_nano: r.start_ns,
                end_time_unix_nano: r.end_ns,
                attributes: r
                    .attributes
                    .iter()
                    .map(|(k, v)| match v {
                        Value::Int(i) => kv(k, any_value::Value::IntValue(*i)),
                        text => kv(k, any_value::Value::StringValue(text.as_str().unwrap().into())),
                    })
                    .collect(),
                status: r
                    .error
                    .as_ref()
                    .map(|m| otlp::Status { message: m.clone(), code: otlp::status::StatusCode::Error as i32 }),
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", any_value::Value::StringValue(service.into()))],
                    ..Default::default()
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "hookyard".into(),
                        version: "0.1.0".into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_batch_decodes_with_the_protocols_own_types() {
        let long = "x".repeat(300); // lengths past one varint byte
        let spans = vec![
            record(
                "event",
                0,
                vec![
                    ("source", Value::Static("github")),
                    ("event_id", Value::Shared("evt_0190f5a2b3c47d8e9f00112233445566".into())),
                    ("http.response.status_code", Value::Int(503)),
                ],
                Some("Service Unavailable"),
            ),
            record("store.commit", 7, vec![("deliveries", Value::Int(0))], None),
            record("delivery", 9, vec![("negative", Value::Int(-1)), ("empty", Value::Static(""))], Some("")),
            record("plugin", 7, vec![("outcome", Value::Str(long.clone()))], Some(&long)),
        ];
        let body = export_request("gw", "0.1.0", &spans);
        let decoded = ExportTraceServiceRequest::decode(&body[..]).expect("a valid ExportTraceServiceRequest");
        assert_eq!(decoded, expected("gw", &spans));
        // and byte for byte what prost writes for the same message
        assert_eq!(body, expected("gw", &spans).encode_to_vec());
    }

    #[test]
    fn an_empty_batch_is_a_request_with_no_spans() {
        let decoded = ExportTraceServiceRequest::decode(&export_request("gw", "0.1.0", &[])[..]).unwrap();
        assert_eq!(decoded, expected("gw", &[]));
    }

    #[test]
    fn varints_are_as_long_as_protobuf_makes_them() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(out.len(), prost::encoding::encoded_len_varint(v), "{v}");
        }
    }
}
