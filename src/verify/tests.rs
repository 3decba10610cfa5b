//! Table-driven tests of every scheme. Expected signatures are literals computed with Python's
//! `hmac`/`hashlib`/`base64` (the one-liner sits next to each table), never with the code under test.

use super::*;

/// The body every vector signs, and a one-byte change of it.
const BODY: &[u8] = br#"{"event":"ping","id":42}"#;
const TAMPERED: &[u8] = br#"{"event":"ping","id":43}"#;
const SECRET: &str = "hy-secret-primary";
const OTHER: &str = "hy-secret-other";
/// The timestamp signed by the timestamped vectors.
const T: u64 = 1_700_000_000;
const TOLERANCE: Duration = Duration::from_secs(300);

// python3 -c 'import base64;[print("whsec_"+base64.b64encode(k).decode()) for k in (b"hookyard-test-key-32-bytes-long!",b"another-test-key-32-bytes-long!!")]'
const WHSEC: &str = "whsec_aG9va3lhcmQtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE=";
const WHSEC_OTHER: &str = "whsec_YW5vdGhlci10ZXN0LWtleS0zMi1ieXRlcy1sb25nISE=";

// python3 -c 'import hmac,hashlib;print(hmac.new(b"hy-secret-primary",b"{\"event\":\"ping\",\"id\":42}",hashlib.sha256).hexdigest())'
const GITHUB_SIG: &str = "b8b34f223cec39d000eca4be8dbb6ebd04fa19f2b49c8512876306d7e7e4ac6d";
// python3 -c 'import hmac,hashlib;[print(hmac.new(k,b"1700000000.{\"event\":\"ping\",\"id\":42}",hashlib.sha256).hexdigest()) for k in (b"hy-secret-primary",b"hy-secret-other")]'
const STRIPE_SIG: &str = "a279ed8509c3b5bf9f92f2f06c5be3c39ed821c4785a1454ca7b9741567d4417";
const STRIPE_SIG_OTHER: &str = "81da33f9d4deafcb513934b1e3619bafc6e8a9f5127432f59def0a8ff3ca4cdc";
// python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b"hy-secret-primary",b"{\"event\":\"ping\",\"id\":42}",hashlib.sha256).digest()).decode())'
const SHOPIFY_SIG: &str = "uLNPIjzsOdAA7KS+jbtuvQT6GfK0nIUSh2MG1+fkrG0=";
// python3 -c 'import hmac,hashlib;print(hmac.new(b"hy-secret-primary",b"v0:1700000000:{\"event\":\"ping\",\"id\":42}",hashlib.sha256).hexdigest())'
const SLACK_SIG: &str = "a95df64a852a6a1a13ed64a0b90c2199499ab108f57737170c111789b1d9e3f5";
// python3 -c 'import hmac,hashlib,base64;[print(base64.b64encode(hmac.new(base64.b64decode(s[6:]),b"msg_1.1700000000.{\"event\":\"ping\",\"id\":42}",hashlib.sha256).digest()).decode()) for s in ("whsec_aG9va3lhcmQtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE=","whsec_YW5vdGhlci10ZXN0LWtleS0zMi1ieXRlcy1sb25nISE=")]'
const STDWH_SIG: &str = "ls1mZFpTn5QzzwtpZRT0+RotSQnz48CkjmzDYNt+7k4=";
const STDWH_SIG_OTHER: &str = "y2HrGIonK77qjOj0KOgDNaaCAH/WQNnRxxyPuzd45+g=";
// python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b"hy-secret-primary",b"{\"event\":\"ping\",\"id\":42}",hashlib.sha512).digest()).decode())'
const HMAC512_SIG: &str = "/NPJ+KXOdyvyI39TRJklZyMW2cbAFY8uL9nkTgl1OzHk1xMoNuX/S+3mWmk5fLLQ/xcppxYIYNLPvcNuWonWvw==";
// python3 -c 'import base64;print(base64.b64encode(b"alice:wonderland").decode())'
const BASIC_CREDENTIALS: &str = "YWxpY2U6d29uZGVybGFuZA==";
const API_KEY: &str = "key-0123456789abcdef";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn secrets(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn header_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

struct Case {
    name: &'static str,
    secrets: &'static [&'static str],
    headers: Vec<(&'static str, String)>,
    body: &'static [u8],
    now: u64,
    /// `Err` holds the expected [`VerifyError::reason`].
    want: Result<(), &'static str>,
}

/// A case that expects success for `BODY` ten seconds after `T`; adjust with the methods below.
fn case<const N: usize>(
    name: &'static str,
    secrets: &'static [&'static str],
    headers: [(&'static str, &str); N],
) -> Case {
    Case {
        name,
        secrets,
        headers: headers.into_iter().map(|(n, v)| (n, v.to_owned())).collect(),
        body: BODY,
        now: T + 10,
        want: Ok(()),
    }
}

impl Case {
    fn body(self, body: &'static [u8]) -> Case {
        Case { body, ..self }
    }
    fn now(self, now: u64) -> Case {
        Case { now, ..self }
    }
    fn fails(self, reason: &'static str) -> Case {
        Case { want: Err(reason), ..self }
    }
}

fn check(scheme: Scheme, cases: &[Case]) {
    for case in cases {
        let label = format!("{} / {}", scheme.name(), case.name);
        let verifier =
            Verifier::new(scheme.clone(), &secrets(case.secrets), TOLERANCE).unwrap_or_else(|e| panic!("{label}: {e}"));
        let headers = header_map(case.headers.iter().map(|(n, v)| (*n, v.as_str())));
        let got = verifier.verify(&headers, case.body, at(case.now));
        assert_eq!(got.as_ref().map(|_| ()).map_err(|e| e.reason()), case.want, "{label}: {got:?}");
        if let Err(error) = got {
            assert_display_is_safe(&error, case.secrets, &case.headers, &label);
        }
    }
}

/// The log line may name headers but must not contain a secret or any 16-character run of a header
/// value (which would be part of a presented signature).
fn assert_display_is_safe(error: &VerifyError, secrets: &[&str], headers: &[(&str, String)], label: &str) {
    let text = error.to_string();
    for secret in secrets {
        assert!(!text.contains(secret), "{label}: {text:?} contains a secret");
    }
    for (_, value) in headers {
        for window in value.as_bytes().windows(16) {
            let window = String::from_utf8_lossy(window);
            assert!(!text.contains(&*window), "{label}: {text:?} repeats header value {value:?}");
        }
    }
}

#[test]
fn none_accepts_everything() {
    check(
        Scheme::None,
        &[
            case("no headers", &[], []),
            case("tampered body", &[], []).body(TAMPERED),
            case("garbage signature", &[], [("X-Hub-Signature-256", "sha1=nope")]),
            case("any time", &[], [("webhook-timestamp", "1")]).now(0),
        ],
    );
}

#[test]
fn github() {
    let valid = format!("sha256={GITHUB_SIG}");
    let upper = format!("sha256={}", GITHUB_SIG.to_uppercase());
    let h = "X-Hub-Signature-256";
    check(
        Scheme::preset("github"),
        &[
            case("valid", &[SECRET], [(h, &valid)]),
            case("upper-case hex", &[SECRET], [(h, &upper)]),
            case("lower-case header name", &[SECRET], [("x-hub-signature-256", &valid)]),
            case("wrong secret", &[OTHER], [(h, &valid)]).fails("mismatch"),
            case("tampered body", &[SECRET], [(h, &valid)]).body(TAMPERED).fails("mismatch"),
            case("missing header", &[SECRET], [("X-Hub-Signature", &valid)]).fails("missing_header"),
            case("wrong prefix", &[SECRET], [(h, &format!("sha1={GITHUB_SIG}"))]).fails("malformed_header"),
            case("not hex", &[SECRET], [(h, &format!("sha256=zz{}", &GITHUB_SIG[2..]))]).fails("malformed_header"),
            case("short", &[SECRET], [(h, &valid[..valid.len() - 2])]).fails("malformed_header"),
            case("repeated header", &[SECRET], [(h, &valid), (h, &valid)]).fails("malformed_header"),
            case("rotation", &[OTHER, SECRET], [(h, &valid)]),
        ],
    );
}

/// GitHub's documented example ("Validating webhook deliveries").
// python3 -c 'import hmac,hashlib;print(hmac.new(b"It'"'"'s a Secret to Everybody",b"Hello, World!",hashlib.sha256).hexdigest())'
#[test]
fn github_documented_vector() {
    let verifier =
        Verifier::new(Scheme::preset("github"), &secrets(&["It's a Secret to Everybody"]), TOLERANCE).expect("valid");
    let headers = header_map([(
        "X-Hub-Signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )]);
    assert!(verifier.verify(&headers, b"Hello, World!", at(T)).is_ok());
}

#[test]
fn stripe() {
    let valid = format!("t={T},v1={STRIPE_SIG}");
    let h = "Stripe-Signature";
    check(
        Scheme::preset("stripe"),
        &[
            case("valid", &[SECRET], [(h, &valid)]),
            case(
                "any v1 may match, v0 ignored",
                &[SECRET],
                [(h, &format!("t={T},v1={STRIPE_SIG_OTHER},v1={STRIPE_SIG},v0=6ffbb59b2300aae63f27"))],
            ),
            case("upper-case hex", &[SECRET], [(h, &format!("t={T},v1={}", STRIPE_SIG.to_uppercase()))]),
            case("wrong secret", &[OTHER], [(h, &valid)]).fails("mismatch"),
            case("tampered body", &[SECRET], [(h, &valid)]).body(TAMPERED).fails("mismatch"),
            case("timestamp is signed", &[SECRET], [(h, &format!("t={},v1={STRIPE_SIG}", T + 1))]).fails("mismatch"),
            case("missing header", &[SECRET], []).fails("missing_header"),
            case("no t", &[SECRET], [(h, &format!("v1={STRIPE_SIG}"))]).fails("malformed_header"),
            case("t not numeric", &[SECRET], [(h, &format!("t=17e8,v1={STRIPE_SIG}"))]).fails("malformed_header"),
            case("two t", &[SECRET], [(h, &format!("t={T},t={T},v1={STRIPE_SIG}"))]).fails("malformed_header"),
            case("no v1", &[SECRET], [(h, &format!("t={T},v0={STRIPE_SIG}"))]).fails("malformed_header"),
            case("v1 not hex", &[SECRET], [(h, &format!("t={T},v1=xyz"))]).fails("malformed_header"),
            case("field without =", &[SECRET], [(h, &format!("t={T},{STRIPE_SIG}"))]).fails("malformed_header"),
            case("not ascii", &[SECRET], [(h, &format!("t={T},v1={STRIPE_SIG},x=é"))]).fails("malformed_header"),
            case("rotation", &[OTHER, SECRET], [(h, &valid)]),
            case("at the tolerance", &[SECRET], [(h, &valid)]).now(T + 300),
            case("too old", &[SECRET], [(h, &valid)]).now(T + 301).fails("timestamp"),
            case("too far in the future", &[SECRET], [(h, &valid)]).now(T - 301).fails("timestamp"),
        ],
    );
}

#[test]
fn shopify() {
    let h = "X-Shopify-Hmac-Sha256";
    check(
        Scheme::preset("shopify"),
        &[
            case("valid", &[SECRET], [(h, SHOPIFY_SIG)]),
            case("wrong secret", &[OTHER], [(h, SHOPIFY_SIG)]).fails("mismatch"),
            case("tampered body", &[SECRET], [(h, SHOPIFY_SIG)]).body(TAMPERED).fails("mismatch"),
            case("missing header", &[SECRET], []).fails("missing_header"),
            case("not base64", &[SECRET], [(h, "uLNP!jzsOdAA7KS+jbtuvQT6GfK0nIUSh2MG1+fkrG0=")])
                .fails("malformed_header"),
            case("hex instead of base64", &[SECRET], [(h, GITHUB_SIG)]).fails("malformed_header"),
            case("missing padding", &[SECRET], [(h, &SHOPIFY_SIG[..SHOPIFY_SIG.len() - 1])]).fails("malformed_header"),
            case("rotation", &[OTHER, SECRET], [(h, SHOPIFY_SIG)]),
        ],
    );
}

#[test]
fn slack() {
    let sig = format!("v0={SLACK_SIG}");
    let ts = T.to_string();
    let (s, t) = ("X-Slack-Signature", "X-Slack-Request-Timestamp");
    check(
        Scheme::preset("slack"),
        &[
            case("valid", &[SECRET], [(s, &sig), (t, &ts)]),
            case("wrong secret", &[OTHER], [(s, &sig), (t, &ts)]).fails("mismatch"),
            case("tampered body", &[SECRET], [(s, &sig), (t, &ts)]).body(TAMPERED).fails("mismatch"),
            case("timestamp is signed", &[SECRET], [(s, &sig), (t, &(T + 1).to_string())]).fails("mismatch"),
            case("missing signature", &[SECRET], [(t, &ts)]).fails("missing_header"),
            case("missing timestamp", &[SECRET], [(s, &sig)]).fails("missing_header"),
            case("wrong version", &[SECRET], [(s, &format!("v1={SLACK_SIG}")), (t, &ts)]).fails("malformed_header"),
            case("timestamp not numeric", &[SECRET], [(s, &sig), (t, "17e8")]).fails("malformed_header"),
            case("negative timestamp", &[SECRET], [(s, &sig), (t, "-1700000000")]).fails("malformed_header"),
            case("rotation", &[OTHER, SECRET], [(s, &sig), (t, &ts)]),
            case("too old", &[SECRET], [(s, &sig), (t, &ts)]).now(T + 301).fails("timestamp"),
            case("too far in the future", &[SECRET], [(s, &sig), (t, &ts)]).now(T - 301).fails("timestamp"),
        ],
    );
}

#[test]
fn standard_webhooks() {
    let sig = format!("v1,{STDWH_SIG}");
    let ts = T.to_string();
    let (i, t, s) = ("Webhook-Id", "Webhook-Timestamp", "Webhook-Signature");
    check(
        Scheme::preset("standard-webhooks"),
        &[
            case("valid", &[WHSEC], [(i, "msg_1"), (t, &ts), (s, &sig)]),
            case(
                "any v1 may match, a v1a of no configured key and other versions are ignored",
                &[WHSEC],
                [
                    (i, "msg_1"),
                    (t, &ts),
                    (
                        s,
                        &format!(
                            "v1a,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA== v2,bm90IGFuIGVkMjU1MTkgc2ln  v1,{STDWH_SIG_OTHER} v1,{STDWH_SIG}"
                        ),
                    ),
                ],
            ),
            case("wrong secret", &[WHSEC_OTHER], [(i, "msg_1"), (t, &ts), (s, &sig)]).fails("mismatch"),
            case("tampered body", &[WHSEC], [(i, "msg_1"), (t, &ts), (s, &sig)]).body(TAMPERED).fails("mismatch"),
            case("id is signed", &[WHSEC], [(i, "msg_2"), (t, &ts), (s, &sig)]).fails("mismatch"),
            case("missing id", &[WHSEC], [(t, &ts), (s, &sig)]).fails("missing_header"),
            case("missing timestamp", &[WHSEC], [(i, "msg_1"), (s, &sig)]).fails("missing_header"),
            case("missing signature", &[WHSEC], [(i, "msg_1"), (t, &ts)]).fails("missing_header"),
            case("timestamp not numeric", &[WHSEC], [(i, "msg_1"), (t, "soon"), (s, &sig)]).fails("malformed_header"),
            case("v1 not base64", &[WHSEC], [(i, "msg_1"), (t, &ts), (s, "v1,!!!!")]).fails("malformed_header"),
            case("no v1", &[WHSEC], [(i, "msg_1"), (t, &ts), (s, &format!("v2,{STDWH_SIG}"))])
                .fails("malformed_header"),
            case("no version", &[WHSEC], [(i, "msg_1"), (t, &ts), (s, STDWH_SIG)]).fails("malformed_header"),
            case("rotation", &[WHSEC_OTHER, WHSEC], [(i, "msg_1"), (t, &ts), (s, &sig)]),
            case("too old", &[WHSEC], [(i, "msg_1"), (t, &ts), (s, &sig)]).now(T + 301).fails("timestamp"),
            case("too far in the future", &[WHSEC], [(i, "msg_1"), (t, &ts), (s, &sig)])
                .now(T - 301)
                .fails("timestamp"),
        ],
    );
}

/// The example published with the Standard Webhooks specification.
// python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}",hashlib.sha256).digest()).decode())'
#[test]
fn standard_webhooks_spec_vector() {
    let verifier = Verifier::new(
        Scheme::preset("standard-webhooks"),
        &secrets(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]),
        TOLERANCE,
    )
    .expect("valid");
    let headers = header_map([
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
    ]);
    assert!(verifier.verify(&headers, br#"{"test": 2432232314}"#, at(1_614_265_330)).is_ok());
}

#[test]
fn hmac_sha512_base64_with_prefix() {
    let scheme = Scheme::Hmac {
        header: HeaderName::from_static("x-signature"),
        algorithm: Algorithm::Sha512,
        encoding: Encoding::Base64,
        prefix: "sha512=".to_owned(),
    };
    let valid = format!("sha512={HMAC512_SIG}");
    let h = "X-Signature";
    check(
        scheme,
        &[
            case("valid", &[SECRET], [(h, &valid)]),
            case("wrong secret", &[OTHER], [(h, &valid)]).fails("mismatch"),
            case("tampered body", &[SECRET], [(h, &valid)]).body(TAMPERED).fails("mismatch"),
            case("missing header", &[SECRET], [("X-Hub-Signature-256", &valid)]).fails("missing_header"),
            case("missing prefix", &[SECRET], [(h, HMAC512_SIG)]).fails("malformed_header"),
            case("a sha256-sized MAC", &[SECRET], [(h, &format!("sha512={SHOPIFY_SIG}"))]).fails("malformed_header"),
            case("rotation", &[OTHER, SECRET], [(h, &valid)]),
        ],
    );
}

#[test]
fn hmac_sha256_hex_without_prefix() {
    let scheme = Scheme::Hmac {
        header: HeaderName::from_static("x-signature"),
        algorithm: Algorithm::Sha256,
        encoding: Encoding::Hex,
        prefix: String::new(),
    };
    let upper = GITHUB_SIG.to_uppercase();
    let h = "X-Signature";
    check(
        scheme,
        &[
            case("valid", &[SECRET], [(h, GITHUB_SIG)]),
            case("upper-case hex", &[SECRET], [(h, &upper)]),
            case("wrong secret", &[OTHER], [(h, GITHUB_SIG)]).fails("mismatch"),
            case("tampered body", &[SECRET], [(h, GITHUB_SIG)]).body(TAMPERED).fails("mismatch"),
            case("missing header", &[SECRET], []).fails("missing_header"),
            case("unexpected prefix", &[SECRET], [(h, &format!("sha256={GITHUB_SIG}"))]).fails("malformed_header"),
            case("rotation", &[OTHER, SECRET], [(h, GITHUB_SIG)]),
        ],
    );
}

#[test]
fn basic() {
    let valid = format!("Basic {BASIC_CREDENTIALS}");
    let h = "Authorization";
    let alice = &["alice:wonderland"];
    check(
        Scheme::Basic,
        &[
            case("valid", alice, [(h, &valid)]),
            case("scheme word is case-insensitive", alice, [(h, &format!("basic {BASIC_CREDENTIALS}"))]),
            case("wrong secret", &["alice:looking-glass"], [(h, &valid)]).fails("mismatch"),
            // python3 -c 'import base64;print(base64.b64encode(b"alice:wonderlan").decode())'
            case("prefix of the password", alice, [(h, "Basic YWxpY2U6d29uZGVybGFu")]).fails("mismatch"),
            case("body is not covered", alice, [(h, &valid)]).body(TAMPERED),
            case("missing header", alice, []).fails("missing_header"),
            case("bearer token", alice, [(h, "Bearer YWxpY2U6d29uZGVybGFuZA==")]).fails("malformed_header"),
            case("not base64", alice, [(h, "Basic alice:wonderland")]).fails("malformed_header"),
            case("no credentials", alice, [(h, "Basic")]).fails("malformed_header"),
            case("rotation", &["bob:builder", "alice:wonderland"], [(h, &valid)]),
        ],
    );
}

#[test]
fn api_key() {
    let scheme = Scheme::ApiKey { header: HeaderName::from_static("x-api-key") };
    let h = "X-Api-Key";
    check(
        scheme,
        &[
            case("valid", &[API_KEY], [(h, API_KEY)]),
            case("wrong secret", &["key-fedcba9876543210"], [(h, API_KEY)]).fails("mismatch"),
            case("prefix of the key", &[API_KEY], [(h, &API_KEY[..API_KEY.len() - 1])]).fails("mismatch"),
            case("body is not covered", &[API_KEY], [(h, API_KEY)]).body(TAMPERED),
            case("missing header", &[API_KEY], [("Authorization", API_KEY)]).fails("missing_header"),
            case("repeated header", &[API_KEY], [(h, API_KEY), (h, API_KEY)]).fails("malformed_header"),
            case("rotation", &["key-fedcba9876543210", API_KEY], [(h, API_KEY)]),
        ],
    );
}

/// Every scheme's provider headers carry the Python-computed value and verify with the same
/// verifier, and fail for another body.
#[test]
fn provider_headers_round_trip() {
    let hmac512 = Scheme::Hmac {
        header: HeaderName::from_static("x-signature"),
        algorithm: Algorithm::Sha512,
        encoding: Encoding::Base64,
        prefix: "sha512=".to_owned(),
    };
    let api_key = Scheme::ApiKey { header: HeaderName::from_static("x-api-key") };
    let github = format!("sha256={GITHUB_SIG}");
    let stripe = format!("t={T},v1={STRIPE_SIG}");
    let slack = format!("v0={SLACK_SIG}");
    let stdwh = format!("v1,{STDWH_SIG}");
    let hmac = format!("sha512={HMAC512_SIG}");
    let basic = format!("Basic {BASIC_CREDENTIALS}");
    let ts = T.to_string();
    /// (scheme, first secret, the provider headers expected for `BODY` at `T`)
    type Row<'a> = (Scheme, &'a str, Vec<(&'a str, &'a str)>);
    let table: Vec<Row> = vec![
        (Scheme::None, "", vec![]),
        (Scheme::preset("github"), SECRET, vec![("x-hub-signature-256", &github)]),
        (Scheme::preset("stripe"), SECRET, vec![("stripe-signature", &stripe)]),
        (Scheme::preset("shopify"), SECRET, vec![("x-shopify-hmac-sha256", SHOPIFY_SIG)]),
        (Scheme::preset("slack"), SECRET, vec![("x-slack-request-timestamp", &ts), ("x-slack-signature", &slack)]),
        (
            Scheme::preset("standard-webhooks"),
            WHSEC,
            vec![("webhook-id", "msg_1"), ("webhook-timestamp", &ts), ("webhook-signature", &stdwh)],
        ),
        (hmac512, SECRET, vec![("x-signature", &hmac)]),
        (Scheme::Basic, "alice:wonderland", vec![("authorization", &basic)]),
        (api_key, API_KEY, vec![("x-api-key", API_KEY)]),
    ];
    for (scheme, secret, want) in table {
        let name = scheme.name();
        // The first secret signs; a second one (for rotation) must not disturb that.
        let second = match name {
            "standard-webhooks" => WHSEC_OTHER,
            "basic" => "bob:builder",
            _ => OTHER,
        };
        let list = if secret.is_empty() { vec![] } else { vec![secret.to_owned(), second.to_owned()] };
        let verifier = Verifier::new(scheme, &list, TOLERANCE).expect("valid");
        let produced = verifier.provider_headers(BODY, at(T), "msg_1");
        let as_text: Vec<(&str, &str)> =
            produced.iter().map(|(n, v)| (n.as_str(), v.to_str().expect("ascii"))).collect();
        assert_eq!(as_text, want, "{name}");

        let headers: HeaderMap = produced.into_iter().collect();
        assert!(verifier.verify(&headers, BODY, at(T + 1)).is_ok(), "{name}");
        let tampered = verifier.verify(&headers, TAMPERED, at(T + 1));
        if matches!(name, "none" | "basic" | "api-key") {
            assert!(tampered.is_ok(), "{name} does not cover the body");
        } else {
            assert!(matches!(tampered, Err(VerifyError::Mismatch)), "{name}: {tampered:?}");
        }
    }
}

#[test]
fn new_rejects_bad_configuration() {
    let hmac_bad_prefix = Scheme::Hmac {
        header: HeaderName::from_static("x-signature"),
        algorithm: Algorithm::Sha256,
        encoding: Encoding::Hex,
        prefix: "sha256=\n".to_owned(),
    };
    let api_key = Scheme::ApiKey { header: HeaderName::from_static("x-api-key") };
    let table: Vec<(Scheme, &[&str], &[&str])> = vec![
        (Scheme::None, &["leftover-secret"], &["takes no secrets"]),
        (Scheme::preset("github"), &[], &["scheme github needs at least one secret"]),
        (Scheme::preset("standard-webhooks"), &[], &["scheme standard-webhooks needs at least one secret"]),
        (Scheme::preset("shopify"), &[SECRET, ""], &["secret 2 is empty"]),
        (
            Scheme::preset("standard-webhooks"),
            &[WHSEC, "c2VjcmV0LXdpdGhvdXQtcHJlZml4"],
            &["secret 2 is not a valid whsec_ (or whpk_) secret: does not start with \"whsec_\""],
        ),
        (
            Scheme::preset("standard-webhooks"),
            &["whsec_not*base64"],
            &["secret 1 is not a valid whsec_ (or whpk_) secret: the part after"],
        ),
        (
            Scheme::preset("standard-webhooks"),
            &["whsec_"],
            &["secret 1 is not a valid whsec_ (or whpk_) secret: the key after"],
        ),
        (Scheme::Basic, &["alice-without-colon"], &["secret 1 is not of the form user:password"]),
        (api_key, &["key with\ttab\u{7f}"], &["secret 1 cannot be sent in a header"]),
        (hmac_bad_prefix, &[SECRET], &["signature prefix"]),
        (
            Scheme::preset("standard-webhooks"),
            &["whpk_AAAA"],
            &["secret 1 is not a valid whpk_ key: an ed25519 public key is 32 bytes"],
        ),
        (
            Scheme::preset("sendgrid"),
            &["bm90IGEga2V5"],
            &["secret 1 is not an ECDSA P-256 public key (PEM, or base64 of DER)"],
        ),
        (
            Scheme::preset("twilio"),
            &[SECRET],
            &["scheme twilio signs the public URL the provider calls: give it as verify.url"],
        ),
        (Scheme::preset("meta"), &[SECRET], &["scheme meta needs verify.verify_token"]),
        (Scheme::preset("gitlab"), &["token\nwith newline"], &["secret 1 cannot be sent in a header"]),
        // Every problem is reported, not just the first.
        (Scheme::Basic, &["", "bob:builder", "carol"], &["secret 1 is empty", "secret 3 is not of the form"]),
    ];
    for (scheme, list, wants) in table {
        let name = scheme.name();
        let error = Verifier::new(scheme, &secrets(list), TOLERANCE).expect_err(name);
        for want in wants {
            assert!(error.contains(want), "{name}: {error:?} lacks {want:?}");
        }
        for secret in list.iter().filter(|s| s.len() > 6) {
            assert!(!error.contains(secret), "{name}: {error:?} quotes a secret");
        }
    }
}

#[test]
fn display_names_the_problem_without_values() {
    let table = [
        (VerifyError::MissingHeader("stripe-signature".to_owned()), "missing header stripe-signature"),
        (
            VerifyError::MalformedHeader {
                header: "webhook-signature".to_owned(),
                reason: "no v1 signature".to_owned(),
            },
            "malformed header webhook-signature: no v1 signature",
        ),
        (VerifyError::TimestampOutOfTolerance { skew_secs: 301 }, "timestamp is 301s old, outside the tolerance"),
        (
            VerifyError::TimestampOutOfTolerance { skew_secs: -301 },
            "timestamp is 301s in the future, outside the tolerance",
        ),
        (VerifyError::Mismatch, "signature does not match any configured secret"),
    ];
    for (error, want) in table {
        assert_eq!(error.to_string(), want);
    }
}

#[test]
fn debug_does_not_show_secrets() {
    let verifier = Verifier::new(Scheme::preset("github"), &secrets(&[SECRET]), TOLERANCE).expect("valid");
    let debug = format!("{verifier:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains("secrets: 1"), "{debug}");
}

#[test]
fn scheme_names() {
    let api_key = Scheme::ApiKey { header: HeaderName::from_static("x-api-key") };
    let hmac = Scheme::Hmac {
        header: HeaderName::from_static("x-signature"),
        algorithm: Algorithm::Sha256,
        encoding: Encoding::Hex,
        prefix: String::new(),
    };
    let table = [
        (Scheme::None, &[][..], "none"),
        (Scheme::preset("github"), &[SECRET][..], "github"),
        (Scheme::preset("stripe"), &[SECRET][..], "stripe"),
        (Scheme::preset("shopify"), &[SECRET][..], "shopify"),
        (Scheme::preset("slack"), &[SECRET][..], "slack"),
        (Scheme::preset("standard-webhooks"), &[WHSEC][..], "standard-webhooks"),
        (hmac, &[SECRET][..], "hmac"),
        (Scheme::Basic, &["a:b"][..], "basic"),
        (api_key, &[API_KEY][..], "api-key"),
    ];
    for (scheme, list, want) in table {
        assert_eq!(Verifier::new(scheme, &secrets(list), TOLERANCE).expect(want).scheme_name(), want);
    }
}
