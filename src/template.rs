//! Templates of a destination's `url`, `headers` and `body` (dynamic endpoints): `{{ $.tenant }}`
//! takes a value from the body as delivered, `{{ header:X-Account }}` from the event's headers, and
//! `{{ response.crm:$.id }}`, `{{ response.crm:header:Location }}` or `{{ response.crm:status }}`
//! from the response of an earlier step of a chain (`then:`).
//!
//! A template is compiled once per config and rendered once per delivery, when it is planned (a
//! chain's later step: when the step before it answered); the result is stored, so every retry
//! sends the same request. Each value is escaped for where it goes: a URL path segment or query
//! value is percent-encoded (it cannot add `/`, `?`, `#` or `@`), a host takes one DNS label, a
//! header value no control characters, a JSON string an escaped string. A value that is missing
//! (or null, or an object where a URL wants text) fails the render with a reason that names the
//! placeholder: the delivery is failed with it, never sent half-rendered.
//!
//! Pure functions: no IO.

use http::HeaderName;
use serde_json::Value;

use crate::rules::{JsonPath, Projection};

/// Where a value comes from.
#[derive(Debug, Clone)]
enum Ref {
    /// A JSONPath into the body as delivered (a transform's output, else the event's).
    Body(JsonPath),
    /// A header of the event (as stored: credentials and signatures are not there).
    Header(HeaderName),
    /// The response of the chain's step to `step` (a destination name).
    Response { step: String, part: ResponsePart },
}

#[derive(Debug, Clone)]
enum ResponsePart {
    Status,
    Header(String),
    Body(JsonPath),
}

/// How a value is written where the placeholder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// One DNS label of a URL's host.
    Host,
    /// In a URL path: percent-encoded, never a `.` or `..` segment of its own.
    Path,
    /// In a URL query: percent-encoded.
    Query,
    /// A header value.
    Header,
    /// Inside a JSON string of a JSON body: escaped as string content.
    JsonString,
    /// Where a JSON value goes in a JSON body: the value as JSON.
    JsonValue,
    /// A text body: the value's text.
    Text,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Value { text: String, from: Ref, at: Position },
}

/// One compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

/// A body template's kind: JSON (values placed as JSON) or text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Text,
}

/// What a render reads: the event's headers, the delivered body (parsed as far as the templates'
/// paths read it, see [`Templates::projection`]), and the responses of the steps before.
pub struct Context<'a> {
    pub headers: &'a [(String, String)],
    pub body: Option<&'a Value>,
    /// `{"crm": {"status": 201, "headers": {"location": "…"}, "body": …}}` (see [`response_entry`]).
    pub responses: Option<&'a Value>,
}

/// Whether `text` holds a placeholder (is a template at all).
pub fn is_template(text: &str) -> bool {
    text.contains("{{")
}

impl Template {
    /// The template of a URL. Placeholders may stand in the host (one DNS label each), the path
    /// and the query; not in the scheme, the user info, the port or the fragment. The URL with
    /// its placeholders filled must be an absolute `http://` or `https://` URL.
    pub fn url(text: &str) -> Result<Template, String> {
        let raw = split(text)?;
        let (scheme_end, rest) = match text.find("://") {
            Some(i) => (i, i + 3),
            None => return Err(format!("\"{text}\" must be an absolute http:// or https:// URL")),
        };
        let authority_end = text[rest..].find(['/', '?', '#']).map_or(text.len(), |i| rest + i);
        let authority = &text[rest..authority_end];
        let userinfo_end = authority.rfind('@').map(|i| rest + i);
        // the port: after the last ':' of the authority that is not inside an IPv6 literal
        let port_start =
            authority.rfind(':').filter(|&i| !authority[i..].contains(']')).map(|i| rest + i).filter(|&i| {
                // a ':' inside a placeholder (response.crm:$.x) is not the port's
                !raw.iter().any(|p| matches!(p, RawPart::Value { start, end, .. } if *start < i && i < *end))
            });
        let query_start = text[authority_end..].find('?').map(|i| authority_end + i);
        let fragment_start = text[authority_end..].find('#').map(|i| authority_end + i);
        let mut parts = Vec::with_capacity(raw.len());
        for p in raw {
            match p {
                RawPart::Literal(s) => parts.push(Part::Literal(s)),
                RawPart::Value { start, text: inner, .. } => {
                    let at = if start < scheme_end + 3 {
                        return Err(format!("{{{{ {inner} }}}}: the scheme cannot be a placeholder"));
                    } else if fragment_start.is_some_and(|f| start > f) {
                        return Err(format!("{{{{ {inner} }}}}: the fragment cannot hold a placeholder"));
                    } else if start < authority_end {
                        if userinfo_end.is_some_and(|u| start < u) {
                            return Err(format!("{{{{ {inner} }}}}: the user info cannot hold a placeholder"));
                        }
                        if port_start.is_some_and(|p| start > p) {
                            return Err(format!("{{{{ {inner} }}}}: the port cannot be a placeholder"));
                        }
                        Position::Host
                    } else if query_start.is_some_and(|q| start > q) {
                        Position::Query
                    } else {
                        Position::Path
                    };
                    parts.push(Part::Value { from: parse_ref(&inner)?, text: inner, at });
                }
            }
        }
        let t = Template { parts };
        let sample = t.sample();
        match sample.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => Ok(t),
            Ok(_) => Err(format!("\"{text}\" must be an absolute http:// or https:// URL")),
            Err(e) => Err(format!("invalid URL \"{text}\" (with its placeholders filled: \"{sample}\"): {e}")),
        }
    }

    /// The template of a header value.
    pub fn header(text: &str) -> Result<Template, String> {
        Template::with_position(text, |_| Position::Header)
    }

    /// The template of a body: JSON when it reads as JSON with its placeholders filled (a
    /// placeholder inside a string is escaped into it; elsewhere the value goes in as JSON), else
    /// text.
    pub fn body(text: &str) -> Result<(Template, BodyKind), String> {
        let json_like = text.trim_start().starts_with(['{', '[']);
        if !json_like {
            return Template::with_position(text, |_| Position::Text).map(|t| (t, BodyKind::Text));
        }
        // a placeholder is inside a JSON string when an odd number of unescaped quotes precede it
        let mut in_string = false;
        let mut escaped = false;
        let mut parts = Vec::new();
        for p in split(text)? {
            match p {
                RawPart::Literal(s) => {
                    for c in s.chars() {
                        match c {
                            _ if escaped => escaped = false,
                            '\\' if in_string => escaped = true,
                            '"' => in_string = !in_string,
                            _ => {}
                        }
                    }
                    parts.push(Part::Literal(s));
                }
                RawPart::Value { text: inner, .. } => {
                    let at = if in_string { Position::JsonString } else { Position::JsonValue };
                    parts.push(Part::Value { from: parse_ref(&inner)?, text: inner, at });
                }
            }
        }
        let t = Template { parts };
        serde_json::from_str::<Value>(&t.sample())
            .map_err(|e| format!("the body template is not JSON once its placeholders are filled: {e}"))?;
        Ok((t, BodyKind::Json))
    }

    fn with_position(text: &str, at: impl Fn(&str) -> Position) -> Result<Template, String> {
        let parts = split(text)?
            .into_iter()
            .map(|p| match p {
                RawPart::Literal(s) => Ok(Part::Literal(s)),
                RawPart::Value { text, .. } => Ok(Part::Value { from: parse_ref(&text)?, at: at(&text), text }),
            })
            .collect::<Result<_, String>>()?;
        Ok(Template { parts })
    }

    /// The template with every placeholder filled by a harmless sample (for validation).
    fn sample(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.as_str(),
                Part::Value { at: Position::JsonValue, .. } => "0",
                Part::Value { .. } => "x",
            })
            .collect()
    }

    /// Adds what this template's body paths read to `projection`.
    pub fn read_by(&self, projection: &mut Projection) {
        for p in &self.parts {
            if let Part::Value { from: Ref::Body(path), .. } = p {
                path.read_by(projection);
            }
        }
    }

    /// The steps whose responses this template reads.
    pub fn steps(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value { from: Ref::Response { step, .. }, .. } => Some(step.as_str()),
            _ => None,
        })
    }

    /// Whether it holds a placeholder.
    pub fn is_dynamic(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Value { .. }))
    }

    /// Fills the placeholders from `cx`; the reason names the first one that cannot be filled.
    pub fn render(&self, cx: &Context<'_>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Value { text, from, at } => {
                    let value = lookup(from, cx).ok_or_else(|| format!("{{{{ {text} }}}}: {}", missing(from, cx)))?;
                    place(&value, *at, &mut out).map_err(|why| format!("{{{{ {text} }}}}: {why}"))?;
                }
            }
        }
        Ok(out)
    }
}

enum RawPart {
    Literal(String),
    /// A placeholder at `start..end` (its braces included) of the template, trimmed text inside.
    Value {
        start: usize,
        end: usize,
        text: String,
    },
}

fn split(text: &str) -> Result<Vec<RawPart>, String> {
    let mut parts = Vec::new();
    let mut rest = 0;
    while let Some(open) = text[rest..].find("{{").map(|i| rest + i) {
        if open > rest {
            parts.push(RawPart::Literal(text[rest..open].to_string()));
        }
        let close = text[open + 2..]
            .find("}}")
            .map(|i| open + 2 + i)
            .ok_or_else(|| format!("a placeholder opened at byte {open} is not closed with }}}}"))?;
        let inner = text[open + 2..close].trim();
        if inner.is_empty() {
            return Err(format!("an empty placeholder at byte {open}"));
        }
        if inner.contains("{{") {
            return Err(format!("a placeholder opened at byte {open} is not closed before the next {{{{"));
        }
        parts.push(RawPart::Value { start: open, end: close + 2, text: inner.to_string() });
        rest = close + 2;
    }
    if rest < text.len() {
        parts.push(RawPart::Literal(text[rest..].to_string()));
    }
    if text[rest..].contains("}}") {
        return Err("a }} closes no placeholder".into());
    }
    Ok(parts)
}

fn parse_ref(text: &str) -> Result<Ref, String> {
    let bad = |m: String| format!("{{{{ {text} }}}}: {m}");
    if text.starts_with('$') {
        return JsonPath::parse(text).map(Ref::Body).map_err(bad);
    }
    if let Some(h) = text.strip_prefix("header:") {
        return HeaderName::try_from(h.trim())
            .map(Ref::Header)
            .map_err(|_| bad(format!("\"{}\" is not a valid header name", h.trim())));
    }
    if let Some(r) = text.strip_prefix("response.") {
        let (step, what) =
            r.split_once(':').ok_or_else(|| bad("write response.<step>:status, :header:Name or :$.path".into()))?;
        let step = step.trim();
        if step.is_empty() {
            return Err(bad("name the step (its destination) after `response.`".into()));
        }
        let what = what.trim();
        let part = if what == "status" {
            ResponsePart::Status
        } else if let Some(h) = what.strip_prefix("header:") {
            let h = HeaderName::try_from(h.trim())
                .map_err(|_| bad(format!("\"{}\" is not a valid header name", h.trim())))?;
            ResponsePart::Header(h.as_str().to_string())
        } else if what.starts_with('$') {
            ResponsePart::Body(JsonPath::parse(what).map_err(bad)?)
        } else {
            return Err(bad(format!("\"{what}\": write status, header:Name or a JSONPath ($…)")));
        };
        return Ok(Ref::Response { step: step.to_string(), part });
    }
    Err(bad("write a JSONPath ($.…), header:Name or response.<step>:…".into()))
}

fn lookup(from: &Ref, cx: &Context<'_>) -> Option<Value> {
    match from {
        Ref::Body(path) => path.first(cx.body?).filter(|v| !v.is_null()).cloned(),
        Ref::Header(h) => {
            cx.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(h.as_str())).map(|(_, v)| Value::String(v.clone()))
        }
        Ref::Response { step, part } => {
            let r = cx.responses?.get(step)?;
            match part {
                ResponsePart::Status => r.get("status").cloned(),
                ResponsePart::Header(h) => r.get("headers")?.get(h).cloned(),
                ResponsePart::Body(path) => path.first(r.get("body")?).filter(|v| !v.is_null()).cloned(),
            }
        }
    }
}

fn missing(from: &Ref, cx: &Context<'_>) -> String {
    match from {
        Ref::Body(_) if cx.body.is_none() => "the body is not JSON".into(),
        Ref::Body(_) => "the body has no value there".into(),
        Ref::Header(h) => format!("the event has no {h} header"),
        Ref::Response { step, .. } if cx.responses.and_then(|r| r.get(step)).is_none() => {
            format!("no response of step {step} (it is not a step before this one)")
        }
        Ref::Response { step, .. } => format!("the response of {step} has no value there"),
    }
}

/// The text of a scalar (a string as is, a number or boolean as JSON writes it).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn place(v: &Value, at: Position, out: &mut String) -> Result<(), String> {
    let kind = || if v.is_array() { "an array" } else { "an object" };
    match at {
        Position::JsonValue => out.push_str(&v.to_string()),
        Position::JsonString => {
            let text = scalar(v).unwrap_or_else(|| v.to_string());
            let quoted = Value::String(text).to_string();
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
        Position::Text => out.push_str(&scalar(v).unwrap_or_else(|| v.to_string())),
        Position::Header => {
            let text = scalar(v).ok_or_else(|| format!("is {}; a header takes text", kind()))?;
            if http::HeaderValue::from_str(&text).is_err() {
                return Err("is not a valid header value (control characters or non-ASCII)".into());
            }
            out.push_str(&text);
        }
        Position::Host => {
            let text = scalar(v).ok_or_else(|| format!("is {}; a host takes text", kind()))?;
            let label = !text.is_empty()
                && text.len() <= 63
                && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !text.starts_with('-')
                && !text.ends_with('-');
            if !label {
                return Err(format!("\"{text}\" is not one DNS label (letters, digits and '-', at most 63)"));
            }
            out.push_str(&text.to_ascii_lowercase());
        }
        Position::Path | Position::Query => {
            let text = scalar(v).ok_or_else(|| format!("is {}; a URL takes text", kind()))?;
            if at == Position::Path && (text == "." || text == "..") {
                return Err(format!("\"{text}\" would be a dot segment of the path"));
            }
            percent_encode(&text, out);
        }
    }
    Ok(())
}

/// Percent-encodes every byte but the unreserved ones (RFC 3986 §2.3).
fn percent_encode(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A response as a later step's templates see it: `{"status": 201, "headers": {lowercase name:
/// value}, "body": the JSON body, else its text}`.
pub fn response_entry(status: Option<u16>, headers: &[(String, String)], body: &[u8]) -> Value {
    let body =
        serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let headers: serde_json::Map<String, Value> =
        headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone()))).collect();
    serde_json::json!({ "status": status, "headers": headers, "body": body })
}

/// A destination's templates, compiled (`None` parts are not templated).
#[derive(Debug, Clone, Default)]
pub struct Templates {
    pub url: Option<Template>,
    pub headers: Vec<(HeaderName, Template)>,
    pub body: Option<(Template, BodyKind)>,
    /// What the templates read of a body: only that is parsed (nothing, when none reads it).
    pub projection: Projection,
}

/// A delivery's request as its destination's templates render it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    pub url: Option<String>,
    /// Header values rendered (and the content type of a rendered body).
    pub headers: Vec<(String, String)>,
    pub body: Option<bytes::Bytes>,
}

impl Templates {
    /// Whether anything is templated.
    pub fn is_empty(&self) -> bool {
        self.url.is_none() && self.headers.is_empty() && self.body.is_none()
    }

    /// Every step whose response the templates read.
    pub fn steps(&self) -> Vec<&str> {
        let mut steps: Vec<&str> = self
            .url
            .iter()
            .chain(self.headers.iter().map(|(_, t)| t))
            .chain(self.body.iter().map(|(t, _)| t))
            .flat_map(Template::steps)
            .collect();
        steps.sort_unstable();
        steps.dedup();
        steps
    }

    /// Renders every template for a delivery of `body` with the event's `headers` and the
    /// responses before it.
    pub fn render(
        &self,
        headers: &[(String, String)],
        body: &[u8],
        responses: Option<&Value>,
    ) -> Result<Rendered, String> {
        let parsed = if self.projection.is_empty() { None } else { self.projection.parse(body) };
        let cx = Context { headers, body: parsed.as_ref(), responses };
        let url = self.url.as_ref().map(|t| t.render(&cx).map_err(|e| format!("url: {e}"))).transpose()?;
        let mut out_headers = Vec::with_capacity(self.headers.len() + 1);
        for (name, t) in &self.headers {
            out_headers.push((name.as_str().to_string(), t.render(&cx).map_err(|e| format!("headers.{name}: {e}"))?));
        }
        let body = match &self.body {
            None => None,
            Some((t, kind)) => {
                let text = t.render(&cx).map_err(|e| format!("body: {e}"))?;
                let content_type = match kind {
                    BodyKind::Json => "application/json",
                    BodyKind::Text => "text/plain; charset=utf-8",
                };
                out_headers.push(("content-type".into(), content_type.into()));
                Some(bytes::Bytes::from(text))
            }
        };
        Ok(Rendered { url, headers: out_headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cx<'a>(body: &'a Value, headers: &'a [(String, String)], responses: Option<&'a Value>) -> Context<'a> {
        Context { headers, body: Some(body), responses }
    }

    #[test]
    fn a_path_segment_cannot_escape_its_segment() {
        let t = Template::url("https://hooks.example.com/t/{{ $.tenant }}/in?acct={{ $.acct }}").unwrap();
        let body = json!({"tenant": "a/../b?x=1#y@evil.com", "acct": "1&admin=true"});
        assert_eq!(
            t.render(&cx(&body, &[], None)).unwrap(),
            "https://hooks.example.com/t/a%2F..%2Fb%3Fx%3D1%23y%40evil.com/in?acct=1%26admin%3Dtrue"
        );
        for dots in ["..", "."] {
            let body = json!({"tenant": dots, "acct": 1});
            assert_eq!(
                t.render(&cx(&body, &[], None)).unwrap_err(),
                format!("{{{{ $.tenant }}}}: \"{dots}\" would be a dot segment of the path")
            );
        }
    }

    #[test]
    fn a_host_placeholder_takes_one_dns_label() {
        let t = Template::url("https://{{ $.tenant }}.hooks.example.com/in").unwrap();
        let ok = json!({"tenant": "Acme-1"});
        assert_eq!(t.render(&cx(&ok, &[], None)).unwrap(), "https://acme-1.hooks.example.com/in");
        for bad in ["evil.com/", "a.b", "x@evil.com", "", "-a", "evil.com:80"] {
            let body = json!({ "tenant": bad });
            let err = t.render(&cx(&body, &[], None)).unwrap_err();
            assert!(err.contains("is not one DNS label"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_placeholders_where_they_could_change_the_target() {
        let cases = [
            ("{{ $.s }}://example.com/", "the scheme cannot be a placeholder"),
            ("https://example.com:{{ $.port }}/", "the port cannot be a placeholder"),
            ("https://{{ $.u }}@example.com/", "the user info cannot hold a placeholder"),
            ("https://example.com/#{{ $.f }}", "the fragment cannot hold a placeholder"),
            ("https://example.com/{{ $.a", "not closed"),
            ("https://example.com/{{ }}", "an empty placeholder"),
            ("https://example.com/{{ $..[ }}", "{{ $..[ }}"),
            ("https://example.com/{{ tenant }}", "write a JSONPath"),
            ("https://example.com/{{ response.crm }}", "write response.<step>:status"),
            ("ftp://example.com/{{ $.a }}", "must be an absolute http:// or https:// URL"),
        ];
        for (url, want) in cases {
            let err = Template::url(url).unwrap_err();
            assert!(err.contains(want), "{url}: {err}");
        }
        // a response placeholder's ':' is not the port's
        assert!(Template::url("https://example.com:8443/x/{{ response.crm:$.id }}").is_ok());
    }

    #[test]
    fn missing_values_name_their_placeholder() {
        let t = Template::url("https://example.com/{{ $.a.b }}").unwrap();
        let body = json!({"a": {}});
        assert_eq!(t.render(&cx(&body, &[], None)).unwrap_err(), "{{ $.a.b }}: the body has no value there");
        let body = json!({"a": {"b": null}});
        assert_eq!(t.render(&cx(&body, &[], None)).unwrap_err(), "{{ $.a.b }}: the body has no value there");
        let body = json!({"a": {"b": {"c": 1}}});
        assert_eq!(t.render(&cx(&body, &[], None)).unwrap_err(), "{{ $.a.b }}: is an object; a URL takes text");
        let not_json = Context { headers: &[], body: None, responses: None };
        assert_eq!(t.render(&not_json).unwrap_err(), "{{ $.a.b }}: the body is not JSON");
        let h = Template::header("{{ header:X-Account }}").unwrap();
        assert_eq!(h.render(&not_json).unwrap_err(), "{{ header:X-Account }}: the event has no x-account header");
        let r = Template::header("{{ response.crm:$.id }}").unwrap();
        assert_eq!(
            r.render(&not_json).unwrap_err(),
            "{{ response.crm:$.id }}: no response of step crm (it is not a step before this one)"
        );
    }

    #[test]
    fn header_values_cannot_carry_a_new_line() {
        let t = Template::header("acct-{{ $.a }}").unwrap();
        let body = json!({"a": "1\r\nX-Injected: yes"});
        assert_eq!(
            t.render(&cx(&body, &[], None)).unwrap_err(),
            "{{ $.a }}: is not a valid header value (control characters or non-ASCII)"
        );
        let headers = [("X-Account".to_string(), "42".to_string())];
        let t = Template::header("{{ header:x-account }}/{{ $.a }}").unwrap();
        assert_eq!(t.render(&cx(&json!({"a": 7}), &headers, None)).unwrap(), "42/7");
    }

    #[test]
    fn a_json_body_escapes_strings_and_places_values() {
        let (t, kind) = Template::body(
            r#"{"name": "Mr {{ $.name }}", "n": {{ $.n }}, "tags": {{ $.tags }}, "q": "\"{{ $.n }}\""}"#,
        )
        .unwrap();
        assert_eq!(kind, BodyKind::Json);
        let body = json!({"name": "\"quoted\" \\ and\nnew line", "n": 3, "tags": ["a", {"b": null}]});
        let out = t.render(&cx(&body, &[], None)).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"name": "Mr \"quoted\" \\ and\nnew line", "n": 3, "tags": ["a", {"b": null}], "q": "\"3\""})
        );
        assert!(Template::body(r#"{"a": {{ $.a }} "#).unwrap_err().contains("is not JSON once its placeholders"));
        let (text, kind) = Template::body("hello {{ $.name }}").unwrap();
        assert_eq!(kind, BodyKind::Text);
        assert_eq!(text.render(&cx(&json!({"name": "<b>"}), &[], None)).unwrap(), "hello <b>");
    }

    #[test]
    fn reads_earlier_responses() {
        let responses =
            json!({ "crm": response_entry(Some(201), &[("Location".into(), "/c/9".into())], br#"{"id": "c_9"}"#) });
        let body = json!({});
        let t = Template::url("https://billing.example.com/link/{{ response.crm:$.id }}?from={{ response.crm:header:location }}&s={{ response.crm:status }}").unwrap();
        assert_eq!(t.steps().collect::<Vec<_>>(), ["crm", "crm", "crm"]);
        assert_eq!(
            t.render(&cx(&body, &[], Some(&responses))).unwrap(),
            "https://billing.example.com/link/c_9?from=%2Fc%2F9&s=201"
        );
    }

    #[test]
    fn renders_a_destination_with_its_content_type() {
        let mut templates = Templates {
            url: Some(Template::url("https://example.com/{{ $.t }}").unwrap()),
            headers: vec![(HeaderName::from_static("x-account"), Template::header("{{ header:x-acct }}").unwrap())],
            body: Some(Template::body(r#"{"t": "{{ $.t }}"}"#).unwrap()),
            ..Templates::default()
        };
        for t in [templates.url.as_ref().unwrap(), &templates.body.as_ref().unwrap().0] {
            t.read_by(&mut templates.projection);
        }
        let r = templates.render(&[("X-Acct".into(), "7".into())], br#"{"t": "a b", "big": [1,2,3]}"#, None).unwrap();
        assert_eq!(r.url.as_deref(), Some("https://example.com/a%20b"));
        assert_eq!(
            r.headers,
            [("x-account".to_string(), "7".to_string()), ("content-type".into(), "application/json".into())]
        );
        assert_eq!(r.body.as_deref(), Some(&br#"{"t": "a b"}"#[..]));
        assert_eq!(templates.render(&[], b"{}", None).unwrap_err(), "url: {{ $.t }}: the body has no value there");
    }
}
