//! `hookyard providers`: the inbound provider catalogue, as `verify.scheme` values with what each
//! expects (the same table the verifier interprets).

use std::process::ExitCode;

use hookyard::verify::catalogue::{Field, PRESETS};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

fn field(f: &Field) -> String {
    match f {
        Field::Header(h) => format!("header {h}"),
        Field::Path(p) => format!("path {p}"),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    use std::fmt::Write as _;
    let mut text = String::new();
    macro_rules! out {
        () => { text.push('\n') };
        ($($arg:tt)*) => { writeln!(text, $($arg)*).expect("a String takes any text") };
    }
    for p in PRESETS {
        let event_type: Vec<String> = p.event_type.iter().map(field).collect();
        let mut extra = Vec::new();
        if p.needs_url {
            extra.push("url");
        }
        if p.handshake == Some(hookyard::verify::Handshake::MetaHub) {
            extra.push("verify_token");
        }
        if args.json {
            let line = json!({
                "scheme": p.name,
                "provider": p.provider,
                "secret": p.secret,
                "signature": p.describe(),
                "tolerance_s": p.tolerance,
                "handshake": p.handshake.map(|h| h.name()),
                "event_type": event_type,
                "event_id": p.event_id.as_ref().map(field),
                "keys": extra,
            });
            out!("{line}");
            continue;
        }
        out!("{:<18} {}", p.name, p.provider);
        out!("  secret:     {}", p.secret);
        out!("  signature:  {}", p.describe());
        if let Some(t) = p.tolerance {
            out!("  tolerance:  {t}s (verify.tolerance)");
        }
        if let Some(h) = p.handshake {
            out!("  handshake:  {} (answered by the gateway)", h.name());
        }
        if !event_type.is_empty() {
            out!("  event type: {}", event_type.join(", then "));
        }
        if let Some(id) = &p.event_id {
            out!("  event id:   {} (for dedupe:)", field(id));
        }
        if !extra.is_empty() {
            out!("  also needs: {}", extra.iter().map(|k| format!("verify.{k}")).collect::<Vec<_>>().join(", "));
        }
    }
    if !args.json {
        out!();
        out!(
            "generic schemes: none, hmac (header, algorithm, encoding, prefix), basic (user:password), api-key (header)"
        );
        out!("docs: docs/providers.md");
    }
    // a closed pipe (`| head`) is not an error
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    Ok(ExitCode::SUCCESS)
}
