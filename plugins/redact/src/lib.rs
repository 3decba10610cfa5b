//! PII redaction. Masks the values at the dotted paths in config `paths`
//! (`paths=customer.email,items[*].card`), and with `scrub=true` also masks anything that looks
//! like an email address or a payment card number (13-19 digits passing the Luhn check) in any
//! string. Config: `mask` (default `[REDACTED]`). A body that is not JSON is an error.

use hookyard_plugin_sdk::prelude::*;

struct Redact;

impl Plugin for Redact {
    fn transform(event: Event) -> Result<Outcome> {
        let mask = config::get("mask").unwrap_or("[REDACTED]");
        let mut body = event.json()?;
        for path in config::list("paths") {
            let path = JsonPath::parse(path).map_err(PluginError::fatal)?;
            path.for_each_mut(&mut body, &mut |v| *v = json!(mask));
        }
        if config::flag("scrub", false)? {
            scrub(&mut body, mask);
        }
        Ok(Outcome::one(Output::json(&body)))
    }
}

fn scrub(value: &mut Value, mask: &str) {
    match value {
        Value::String(s) if s.split_whitespace().any(|w| is_email(w) || is_card(w)) || is_card(s) => {
            *s = mask.to_string();
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(v, mask)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub(v, mask)),
        _ => {}
    }
}

fn is_email(word: &str) -> bool {
    let word = word.trim_matches(|c: char| !c.is_alphanumeric());
    match word.split_once('@') {
        Some((user, domain)) => {
            !user.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        }
        None => false,
    }
}

/// 13-19 digits, spaces and dashes allowed between them, passing the Luhn checksum.
fn is_card(text: &str) -> bool {
    if !text.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '-') {
        return false;
    }
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    sum.is_multiple_of(10)
}

hookyard_plugin_sdk::export!(Redact);
