//! `hookyard reload` and `hookyard status`: talk to the running instance's admin API.
//!
//! They are needed most when `routes.yaml` is broken, so they do not need it to be valid: the
//! admin address and token are read from the file's `admin:` block alone ([`admin_settings`]),
//! and what could not be read is said on stderr together with what is used instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use hookyard::config::{AdminConfig, Config, yaml};

#[derive(clap::Args)]
pub struct Args {
    /// The config file the admin address and token are read from (only its `admin:` block, so a
    /// file with errors elsewhere still works).
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Base URL of the admin API. Default: `http://` + `admin.listen` of the config. The token is
    /// HOOKYARD_ADMIN_TOKEN if set, else `admin.token` of the config.
    #[arg(long)]
    admin: Option<String>,
}

pub async fn call(args: Args, method: http::Method, path: &str) -> anyhow::Result<ExitCode> {
    let env_token = std::env::var("HOOKYARD_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    let found = admin_settings(&args.config, &|k| std::env::var(k).ok());
    for note in &found.notes {
        eprintln!("note: {note}");
    }
    let listen = found.listen.unwrap_or_else(|| AdminConfig::default().listen);
    let base = args.admin.unwrap_or_else(|| format!("http://{}", connectable(listen)));
    let token = env_token.or(found.token);
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut req = http::Request::builder().method(method).uri(&url);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::new()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach the admin API at {url} (is `hookyard run` running?)"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
        Err(_) => println!("{}", String::from_utf8_lossy(&body)),
    }
    Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A listener on `0.0.0.0` / `::` is reached on loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
        SocketAddr::V6(a) if a.ip().is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())),
        other => other,
    }
}

/// What [`admin_settings`] found: `None` where the file gave nothing usable, and a note for each
/// thing that could not be read, saying what is used instead.
#[derive(Debug, Default, PartialEq)]
pub struct AdminSettings {
    pub listen: Option<SocketAddr>,
    pub token: Option<String>,
    pub notes: Vec<String>,
}

/// Reads `admin.listen` and `admin.token` from the config at `path` without requiring the rest
/// of the file to be valid: the whole file as YAML if it parses, else (a syntax error elsewhere)
/// the top-level `admin:` block cut out line by line. `${VAR}` is expanded with `env` as in the
/// full config.
pub fn admin_settings(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> AdminSettings {
    let file = path.display().to_string();
    let default = AdminConfig::default().listen;
    let fallback = format!("the default admin address {default}, and HOOKYARD_ADMIN_TOKEN as the token if set");
    let mut out = AdminSettings::default();
    let text = match Config::read_text(path) {
        Ok(text) => text,
        Err(e) => {
            out.notes.push(format!("{e}; using {fallback} (or give --admin URL)"));
            return out;
        }
    };
    let admin = match yaml::parse(&text, env) {
        Ok(doc) => doc.value.get("admin").cloned().unwrap_or(Value::Null),
        Err(problem) => {
            let at = problem.mark.map(|m| format!(":{}:{}", m.line, m.col)).unwrap_or_default();
            match admin_block(&text).map(|block| yaml::parse(&block, env)) {
                Some(Ok(doc)) => {
                    out.notes.push(format!(
                        "{file}{at}: {}; the admin address and token are read from its `admin:` block only",
                        problem.message
                    ));
                    doc.value.get("admin").cloned().unwrap_or(Value::Null)
                }
                Some(Err(_)) | None => {
                    out.notes.push(format!(
                        "{file}{at}: {}, and its `admin:` block cannot be read on its own; using {fallback} (or give --admin URL)",
                        problem.message
                    ));
                    return out;
                }
            }
        }
    };
    match admin.get("listen") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_str().and_then(|s| s.parse::<SocketAddr>().ok()) {
            Some(a) => out.listen = Some(a),
            None => out.notes.push(format!("{file}: admin.listen {v} is not an address; using {default}")),
        },
    }
    match admin.get("token") {
        Some(Value::String(t)) => out.token = Some(t.clone()),
        None => {}
        Some(_) => out.notes.push(format!(
            "{file}: admin.token cannot be read (an unset variable?); using HOOKYARD_ADMIN_TOKEN if set"
        )),
    }
    out
}

/// The top-level `admin:` mapping of a config text, cut out by lines: from the `admin:` line to
/// the next line that starts in column 0 (comments and blank lines excepted).
fn admin_block(text: &str) -> Option<String> {
    let mut lines = text.lines();
    let first = lines
        .by_ref()
        .find(|l| l.strip_prefix("admin:").is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t'])))?;
    let mut block = format!("{first}\n");
    for l in lines {
        let starts_in_column_0 = l.starts_with(|c: char| !c.is_whitespace() && c != '#');
        if starts_in_column_0 {
            break;
        }
        block.push_str(l);
        block.push('\n');
    }
    Some(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "from-the-environment".to_string())
    }

    fn settings(text: &str) -> AdminSettings {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, text).unwrap();
        let mut s = admin_settings(&path, &env);
        let shown = path.display().to_string();
        s.notes.iter_mut().for_each(|n| *n = n.replace(&shown, "FILE"));
        s
    }

    #[test]
    fn reads_the_admin_block_of_a_broken_file() {
        let addr: SocketAddr = "127.0.0.1:9123".parse().unwrap();
        let block = "admin:\n  # the listener\n  listen: \"127.0.0.1:9123\"\n\n  token: \"${TOKEN}\"\n";
        let cases = [
            // valid file, other errors do not matter
            (format!("server: {{ bogus: 1 }}\n{block}"), None),
            // a syntax error before and after the block
            (format!("sources:\n  a: [\n{block}routes: x\n"), Some("FILE:3:1: invalid YAML: ")),
            (format!("{block}routes:\n  - {{ name: a\n"), Some("FILE:8:1: invalid YAML: ")),
            // flow style
            (
                "admin: { listen: \"127.0.0.1:9123\", token: \"${TOKEN}\" }\nroutes: [\n".to_string(),
                Some("FILE:3:1: invalid YAML: "),
            ),
        ];
        for (text, note) in cases {
            let s = settings(&text);
            assert_eq!((s.listen, s.token.as_deref()), (Some(addr), Some("from-the-environment")), "{text}");
            match note {
                None => assert_eq!(s.notes, Vec::<String>::new()),
                Some(prefix) => {
                    assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
                    assert!(s.notes[0].starts_with(prefix), "{text}: {:?}", s.notes);
                    assert!(
                        s.notes[0].ends_with("; the admin address and token are read from its `admin:` block only"),
                        "{:?}",
                        s.notes
                    );
                }
            }
        }
    }

    #[test]
    fn says_what_it_falls_back_to() {
        let s = settings("admin:\n  listen: [\n");
        assert_eq!((s.listen, s.token), (None, None));
        assert_eq!(s.notes.len(), 1);
        assert!(
            s.notes[0].ends_with(
                ", and its `admin:` block cannot be read on its own; using the default admin address 127.0.0.1:9090, and HOOKYARD_ADMIN_TOKEN as the token if set (or give --admin URL)"
            ),
            "{:?}",
            s.notes
        );
        let s = settings("admin:\n  listen: nowhere\n  token: ${UNSET}\n");
        assert_eq!((s.listen, s.token), (None, None));
        assert_eq!(
            s.notes,
            [
                "FILE: admin.listen \"nowhere\" is not an address; using 127.0.0.1:9090",
                "FILE: admin.token cannot be read (an unset variable?); using HOOKYARD_ADMIN_TOKEN if set"
            ]
        );
        // no admin block in a valid file: the defaults, nothing to say
        assert_eq!(settings("server: {}\n"), AdminSettings::default());
    }
}
