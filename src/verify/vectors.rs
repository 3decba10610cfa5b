//! The catalogue against test vectors computed outside this code: `tests/vectors/providers.json`,
//! written by an independent Python implementation (`tests/vectors/providers.py`: `hmac`,
//! `hashlib`, `cryptography`), with the providers' published examples where they give one. Every
//! preset has a valid request and tampered, wrong-key, stale and unsigned ones; every handshake
//! its exact answer and a forged request.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

use super::catalogue::{self, PRESETS};
use super::{HandshakeOutcome, Inbound, Options, Scheme, Verifier};

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
    handshakes: Vec<HandshakeCase>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    scheme: String,
    secrets: Vec<String>,
    url: Option<String>,
    method: String,
    path_and_query: String,
    headers: Vec<(String, String)>,
    body: String,
    now: u64,
    expect: String,
}

#[derive(Deserialize)]
struct HandshakeCase {
    name: String,
    scheme: String,
    secrets: Vec<String>,
    verify_token: Option<String>,
    method: String,
    path_and_query: String,
    headers: Vec<(String, String)>,
    body: String,
    now: u64,
    response: Response,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn vectors() -> Vectors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/providers.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("tests/vectors/providers.json")).expect("valid JSON")
}

fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(HeaderName::try_from(k.as_str()).unwrap(), HeaderValue::try_from(v.as_str()).unwrap());
    }
    h
}

fn verifier(scheme: &str, secrets: &[String], url: Option<String>, verify_token: Option<String>) -> Verifier {
    let preset = catalogue::preset(scheme).unwrap_or_else(|| panic!("{scheme} is in the catalogue"));
    let verify_token = verify_token.or_else(|| (scheme == "meta").then(|| "unused-here".to_owned()));
    Verifier::with_options(Scheme::Preset(preset), secrets, Options { tolerance: None, url, verify_token })
        .unwrap_or_else(|e| panic!("{scheme}: {e}"))
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn every_preset_verifies_the_independent_vectors() {
    let v = vectors();
    let mut seen: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for case in &v.cases {
        let verifier = verifier(&case.scheme, &case.secrets, case.url.clone(), None);
        let headers = header_map(&case.headers);
        let query = case.path_and_query.split_once('?').map(|(_, q)| q);
        let req = Inbound { method: &case.method, query, headers: &headers, body: case.body.as_bytes() };
        let got = verifier.verify_request(&req, at(case.now));
        let got = match &got {
            Ok(()) => "ok",
            Err(e) => e.reason(),
        };
        assert_eq!(got, case.expect, "{}: {:?}", case.name, verifier.verify_request(&req, at(case.now)));
        seen.entry(catalogue::preset(&case.scheme).unwrap().name).or_default().push(&case.expect);
    }
    // every preset has an accepted request and a rejected one of each kind that applies to it
    for p in PRESETS {
        let expects = seen.get(p.name).unwrap_or_else(|| panic!("no vectors for {}", p.name));
        assert!(expects.contains(&"ok"), "{}: no accepted vector", p.name);
        assert!(expects.iter().filter(|e| **e == "mismatch").count() >= 2, "{}: tampered and wrong-key", p.name);
        if p.tolerance.is_some() {
            assert!(expects.contains(&"timestamp"), "{}: no stale vector", p.name);
        }
    }
}

/// The server's order: a query handshake first, then verification, then a body handshake.
fn answer(verifier: &Verifier, case: &HandshakeCase) -> Response {
    let headers = header_map(&case.headers);
    let method = Method::from_bytes(case.method.as_bytes()).unwrap();
    let query = case.path_and_query.split_once('?').map(|(_, q)| q);
    let outcome = verifier.handshake_by_query(&method, query).or_else(|| {
        let req = Inbound { method: method.as_str(), query, headers: &headers, body: case.body.as_bytes() };
        match verifier.verify_request(&req, at(case.now)) {
            Err(_) => Some(HandshakeOutcome::Refused { handshake: verifier.handshake().unwrap(), why: "" }),
            Ok(()) => verifier.handshake_by_body(&headers, case.body.as_bytes()).map(HandshakeOutcome::Answer),
        }
    });
    match outcome.unwrap_or_else(|| panic!("{}: not taken for a handshake", case.name)) {
        HandshakeOutcome::Answer(a) => {
            let mut headers = vec![("content-type".to_owned(), a.content_type.to_owned())];
            if a.is_text() {
                headers.push(("x-content-type-options".to_owned(), "nosniff".to_owned()));
            }
            Response { status: 200, headers, body: String::from_utf8(a.body.to_vec()).unwrap() }
        }
        HandshakeOutcome::Refused { .. } => Response {
            status: 401,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: "{\"error\":\"unauthorized\"}".to_owned(),
        },
    }
}

#[test]
fn every_handshake_answers_byte_exactly_and_refuses_forgeries() {
    let v = vectors();
    let mut kinds = BTreeMap::new();
    for case in &v.handshakes {
        let verifier = verifier(&case.scheme, &case.secrets, None, case.verify_token.clone());
        let got = answer(&verifier, case);
        assert_eq!(got, case.response, "{}", case.name);
        *kinds.entry((case.scheme.as_str(), got.status)).or_insert(0) += 1;
    }
    for p in PRESETS.iter().filter(|p| p.handshake.is_some()) {
        assert!(kinds.contains_key(&(p.name, 200)), "{}: no answered handshake", p.name);
    }
    for forged in ["slack", "zoom", "meta", "x"] {
        assert!(kinds.contains_key(&(forged, 401)), "{forged}: no forged handshake");
    }
}

/// `hookyard send`'s signing, checked by the verifier: every preset has a local round trip.
#[test]
fn every_preset_signs_what_it_verifies() {
    use super::keys::PrivateKey;
    let now = at(1_764_770_000);
    let ed = PrivateKey::decode("whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let p256 = PrivateKey::decode(P256_PEM).unwrap();
    for p in PRESETS {
        for form in [false, true] {
            let (secret, key) = match p.name {
                "standard-webhooks" | "svix" => ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(), None),
                "sendgrid" => (p256.public_secret(), Some(&p256)),
                _ => ("s3cret-for-the-round-trip".to_owned(), None),
            };
            let body: &[u8] = match (p.name, form) {
                (_, true) => b"From=%2B15551230000&Body=Hello+there",
                ("microsoft-graph", _) => br#"{"value":[{"changeType":"created"}]}"#,
                ("sendgrid" | "hubspot", _) => br#"[{"event":"delivered"}]"#,
                _ => br#"{"type":"x","event":"y"}"#,
            };
            if form && matches!(p.name, "microsoft-graph" | "linear" | "x") {
                continue; // JSON-only senders
            }
            let url = p.needs_url.then(|| "https://hooks.example.com/in".to_owned());
            let verifier = verifier(p.name, &[secret], url, None);
            let signed = verifier.provider_request(body, now, "msg_1", form, key).unwrap();
            let mut headers = HeaderMap::new();
            if form {
                headers
                    .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
            }
            headers.extend(signed.headers.into_iter().map(|(k, v)| (Some(k), v)));
            let body = signed.body.unwrap_or_else(|| body.to_vec());
            let req = Inbound { method: "POST", query: signed.query.as_deref(), headers: &headers, body: &body };
            assert_eq!(verifier.verify_request(&req, now).map_err(|e| e.to_string()), Ok(()), "{} form={form}", p.name);
            let mut tampered = body.clone();
            *tampered.last_mut().unwrap() ^= 1;
            let req = Inbound { body: &tampered, ..req };
            if !matches!(p.name, "gitlab" | "mailgun") {
                assert!(verifier.verify_request(&req, now).is_err(), "{} form={form}: a tampered body passed", p.name);
            }
        }
    }
    // ed25519: v1a with a whpk_ key
    let verifier = verifier("standard-webhooks", &[ed.public_secret()], None, None);
    let signed = verifier.provider_request(b"{}", now, "msg_2", false, Some(&ed)).unwrap();
    let headers: HeaderMap = signed.headers.into_iter().collect();
    assert!(headers["webhook-signature"].to_str().unwrap().starts_with("v1a,"));
    assert_eq!(verifier.verify_request(&Inbound::post(&headers, b"{}"), now).map_err(|e| e.to_string()), Ok(()));
}

const P256_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkYe6bUNE5zxvBA8D
yqg/4imtq5gzTbIJlve7tbnYi4+hRANCAARu5Erg5O42QgMDhuJrJNcd3JpRXa9U
V6LjyE/BbFjXxmDLAW+TAxWmX7uiMXSWzKxJKwRA2O26F6dRmtiOqHfu
-----END PRIVATE KEY-----";

/// X's CRC answer is `sha256=<base64 HMAC(secret, token)>`, the format of its event signatures:
/// a token signed that way must never pass as an event. Tokens cannot start with `{`; bodies must.
#[test]
fn an_x_crc_answer_never_signs_an_event() {
    let verifier = verifier("x", &["consumer-secret".to_owned()], None, None);
    let token = "AbC123_-+/=";
    let Some(HandshakeOutcome::Answer(answer)) =
        verifier.handshake_by_query(&Method::GET, Some(&format!("crc_token={}", token.replace('+', "%2B"))))
    else {
        panic!("a CRC is answered")
    };
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-twitter-webhooks-signature", body["response_token"].as_str().unwrap().parse().unwrap());
    let err = verifier.verify(&headers, token.as_bytes(), at(1)).unwrap_err();
    assert_eq!(err.to_string(), "malformed body: x sends JSON objects only");
    let refused = verifier.handshake_by_query(&Method::GET, Some("crc_token=%7B%22a%22%3A1%7D"));
    assert!(matches!(refused, Some(HandshakeOutcome::Refused { .. })), "{refused:?}");
}

/// While Zoom's secret rolls, the validation is answered with the secret that signed it.
#[test]
fn zoom_answers_with_the_secret_that_signed_the_validation() {
    use hmac::{Hmac, Mac};
    let hex_mac = |key: &str, parts: &[&[u8]]| {
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        parts.iter().for_each(|p| m.update(p));
        hex::encode(m.finalize().into_bytes())
    };
    let verifier = verifier("zoom", &["old-secret".to_owned(), "new-secret".to_owned()], None, None);
    let body = br#"{"payload":{"plainToken":"P1"},"event_ts":1,"event":"endpoint.url_validation"}"#;
    let ts = "1764770000";
    let mut headers = HeaderMap::new();
    headers.insert("x-zm-request-timestamp", ts.parse().unwrap());
    let signature = format!("v0={}", hex_mac("new-secret", &[b"v0:", ts.as_bytes(), b":", body]));
    headers.insert("x-zm-signature", signature.parse().unwrap());
    verifier.verify(&headers, body, at(1_764_770_000)).unwrap();
    let answer = verifier.handshake_by_body(&headers, body).unwrap();
    let expected = format!(r#"{{"plainToken":"P1","encryptedToken":"{}"}}"#, hex_mac("new-secret", &[b"P1"]));
    assert_eq!(String::from_utf8(answer.body.to_vec()).unwrap(), expected);
}
