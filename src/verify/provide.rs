//! Requests signed as each provider signs them, for `hookyard send` and the round-trip tests:
//! every preset of the catalogue can be exercised locally.

use std::time::SystemTime;

use http::{HeaderName, HeaderValue};

use super::catalogue::{Check, Part, Sig, Time, Unit};
use super::keys::PrivateKey;
use super::mac::{self, Decimal, Tag};
use super::{Encoding, Keys, Scheme, Verifier, sorted_form_params, standard_webhooks_signed, unix_seconds};

/// What a provider would send: headers, a query string to add to the URL (Twilio's `bodySHA256`),
/// and the body when the provider signs inside it (Mailgun, Graph's clientState, Linear's
/// timestamp), else `None` (the body as given).
#[derive(Debug, Default)]
pub struct ProviderRequest {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub query: Option<String>,
    pub body: Option<Vec<u8>>,
}

fn value(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(text).map_err(|_| format!("{text:?} cannot be sent in a header"))
}

fn json_object(body: &[u8], what: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(format!("{what} signs inside the body, which must then be a JSON object")),
    }
}

impl Verifier {
    /// The request the provider would send for `body` (signed with the first secret), at `now`.
    /// `form` says whether the body goes as `application/x-www-form-urlencoded`; `msg_id` is the
    /// Standard Webhooks id; `key` signs for asymmetric schemes (ed25519 `v1a`, SendGrid's ECDSA),
    /// whose configured secrets are public keys.
    pub fn provider_request(
        &self,
        body: &[u8],
        now: SystemTime,
        msg_id: &str,
        form: bool,
        key: Option<&PrivateKey>,
    ) -> Result<ProviderRequest, String> {
        let secs = unix_seconds(now);
        let mut out = ProviderRequest::default();
        match (&self.scheme, &self.keys) {
            (Scheme::None, _) => {}
            (Scheme::Basic, Keys::Credentials(c)) => {
                let raw = &c.first().ok_or("no secret")?.raw;
                out.headers.push((http::header::AUTHORIZATION, value(&format!("Basic {}", mac::base64_encode(raw)))?));
            }
            (Scheme::ApiKey { header }, Keys::Credentials(c)) => {
                out.headers.push((
                    header.clone(),
                    HeaderValue::from_bytes(&c.first().ok_or("no secret")?.raw).map_err(|e| e.to_string())?,
                ));
            }
            (Scheme::Hmac { header, encoding, prefix, .. }, Keys::Mac(k)) => {
                out.headers
                    .push((header.clone(), k.first().ok_or("no secret")?.tag(&[body]).header_value(prefix, *encoding)));
            }
            (Scheme::Preset(p), keys) => match (&p.check, keys) {
                (Check::Token { header }, Keys::Credentials(c)) => {
                    out.headers.push((
                        HeaderName::from_static(header),
                        HeaderValue::from_bytes(&c.first().ok_or("no secret")?.raw).map_err(|e| e.to_string())?,
                    ));
                }
                (Check::ClientState, Keys::Credentials(c)) => {
                    let state = String::from_utf8_lossy(&c.first().ok_or("no secret")?.raw).into_owned();
                    let mut map = json_object(body, p.name)?;
                    let items =
                        map.get_mut("value").and_then(|v| v.as_array_mut()).ok_or("the body needs $.value[…]")?;
                    for item in items {
                        if let Some(obj) = item.as_object_mut() {
                            obj.insert("clientState".into(), state.clone().into());
                        }
                    }
                    out.body = Some(serde_json::to_vec(&map).expect("JSON serializes"));
                }
                (Check::BodySignature, Keys::Mac(k)) => {
                    let ts = secs.to_string();
                    let token = format!("{:032x}", fastrand::u128(..));
                    let sig = k.first().ok_or("no secret")?.tag(&[ts.as_bytes(), token.as_bytes()]);
                    let sig = sig.header_value("", Encoding::Hex).to_str().expect("hex").to_owned();
                    if form {
                        let mut b = body.to_vec();
                        let fields = form_urlencoded::Serializer::new(String::new())
                            .append_pair("timestamp", &ts)
                            .append_pair("token", &token)
                            .append_pair("signature", &sig)
                            .finish();
                        if !b.is_empty() {
                            b.push(b'&');
                        }
                        b.extend_from_slice(fields.as_bytes());
                        out.body = Some(b);
                    } else {
                        let mut map = json_object(body, p.name)?;
                        map.insert(
                            "signature".into(),
                            serde_json::json!({"timestamp": ts, "token": token, "signature": sig}),
                        );
                        out.body = Some(serde_json::to_vec(&map).expect("JSON serializes"));
                    }
                }
                (Check::Webhooks { id, timestamp, signature }, Keys::Webhooks { mac, .. }) => {
                    let ts = Decimal::new(secs);
                    let signed = standard_webhooks_signed(msg_id.as_bytes(), ts.as_bytes(), body);
                    let sig = match (mac.first(), key) {
                        (_, Some(key)) => {
                            format!(
                                "v1a,{}",
                                key.sign_v1a(&signed.concat()).ok_or("v1a signs with an ed25519 (whsk_) key")?
                            )
                        }
                        (Some(k), None) => k
                            .tag(&signed)
                            .header_value(super::STANDARD_WEBHOOKS_PREFIX, Encoding::Base64)
                            .to_str()
                            .expect("ASCII")
                            .to_owned(),
                        (None, None) => {
                            return Err("the secrets are whpk_ public keys: sign with --private-key whsk_…".into());
                        }
                    };
                    out.headers.push((HeaderName::from_static(id), value(msg_id)?));
                    out.headers.push((HeaderName::from_static(timestamp), ts.header_value()));
                    out.headers.push((HeaderName::from_static(signature), value(&sig)?));
                }
                (Check::Ecdsa { signature, timestamp }, _) => {
                    let key = key.ok_or("sendgrid signs with a private key: give --private-key (PKCS#8 PEM)")?;
                    let ts = secs.to_string();
                    let sig =
                        key.sign_ecdsa(&[ts.as_bytes(), body].concat()).ok_or("sendgrid signs with a P-256 key")?;
                    out.headers.push((HeaderName::from_static(timestamp), value(&ts)?));
                    out.headers.push((HeaderName::from_static(signature), value(&sig)?));
                }
                (Check::Mac { encoding, sig, signed, time, .. }, Keys::Mac(k)) => {
                    let key = k.first().ok_or("no secret")?;
                    self.sign_mac(&mut out, key, body, secs, form, *encoding, sig, signed, time)?;
                }
                _ => return Err(format!("scheme {} cannot sign with these secrets", p.name)),
            },
            _ => return Err(format!("scheme {} cannot sign with these secrets", self.scheme.name())),
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn sign_mac(
        &self,
        out: &mut ProviderRequest,
        key: &mac::MacKey,
        body: &[u8],
        secs: i64,
        form: bool,
        encoding: Encoding,
        sig: &Sig,
        signed: &[Part],
        time: &Time,
    ) -> Result<(), String> {
        let ts = match time {
            Time::Header(_, Unit::Millis) => (secs * 1000).to_string(),
            _ => secs.to_string(),
        };
        let mut body = body.to_vec();
        if let Time::BodyMillis(k) = time {
            let mut map = json_object(&body, "this scheme")?;
            map.insert((*k).into(), (secs * 1000).into());
            body = serde_json::to_vec(&map).expect("JSON serializes");
            out.body = Some(body.clone());
        }
        if signed.contains(&Part::TwilioParams) && !form {
            out.query = Some(format!("bodySHA256={}", hex::encode(mac::sha256(&body))));
        }
        let url = self.recipe_url(signed, out.query.as_deref()).unwrap_or_default();
        let params = if signed.contains(&Part::TwilioParams) && form { sorted_form_params(&body) } else { Vec::new() };
        let parts: Vec<&[u8]> = signed
            .iter()
            .map(|p| match p {
                Part::Lit(s) => s.as_bytes(),
                Part::Timestamp => ts.as_bytes(),
                Part::Body => &body[..],
                Part::Url | Part::HubspotUrl => url.as_bytes(),
                Part::Method => b"POST",
                Part::TwilioParams => &params[..],
            })
            .collect();
        let tag: Tag = key.tag(&parts);
        let (name, value) = match sig {
            Sig::Header { name, prefix } => (name, tag.header_value(prefix, encoding)),
            Sig::Fields { name, sep, ts: ts_key, sig: key } => {
                (name, tag.header_value(&format!("{ts_key}={ts}{sep}{key}="), encoding))
            }
            Sig::List { name, prefix, .. } => (name, tag.header_value(prefix, encoding)),
        };
        if let Time::Header(t, _) = time {
            out.headers.push((HeaderName::from_static(t), HeaderValue::from_str(&ts).expect("digits")));
        }
        out.headers.push((HeaderName::from_static(name), value));
        Ok(())
    }
}
