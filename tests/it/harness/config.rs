//! A typed builder for the `routes.yaml` most tests need, rendered as YAML that still reads like
//! the file a user writes: `server.listen` and (with a destination) `egress.allow` on loopback,
//! sources on `/hooks/NAME` without verification unless told, destinations without signing
//! unless told, routes from one source to named destinations. Values are YAML as written
//! (`.when("{ header: X-Kind, equals: push }")`); `.set` adds a top-level section. Where the YAML itself is what a test checks (config errors with their lines, a
//! reload of edited text), tests keep writing it out.
//!
//! ```ignore
//! Config::new()
//!     .source("app", Source::open())
//!     .destination("sink", Dest::url(&sink.url("/")).retry_schedule(["100ms"]))
//!     .route(Route::new("all").from("app").to(["sink"]))
//!     .render()
//! ```

use std::fmt::Write as _;

/// A whole config. `render` gives the YAML.
#[derive(Debug, Clone, Default)]
pub struct Config {
    server: Vec<(String, String)>,
    sections: Vec<(String, String)>,
    sources: Vec<(String, Source)>,
    destinations: Vec<(String, Dest)>,
    routes: Vec<Route>,
}

impl Config {
    /// `server: { listen: "127.0.0.1:0" }` and nothing else yet.
    pub fn new() -> Config {
        Config::default()
    }

    /// Another key of `server:` (`.server("max_body_bytes", "1024")`).
    pub fn server(mut self, key: &str, value: &str) -> Config {
        self.server.push((key.to_string(), value.to_string()));
        self
    }

    /// A top-level section as one line (`.set("delivery", "{ max_pending: 2 }")`).
    pub fn set(mut self, key: &str, value: &str) -> Config {
        self.sections.push((key.to_string(), value.to_string()));
        self
    }

    pub fn source(mut self, name: &str, source: Source) -> Config {
        self.sources.push((name.to_string(), source));
        self
    }

    pub fn destination(mut self, name: &str, dest: Dest) -> Config {
        self.destinations.push((name.to_string(), dest));
        self
    }

    pub fn route(mut self, route: Route) -> Config {
        self.routes.push(route);
        self
    }

    pub fn render(&self) -> String {
        let mut y = String::new();
        let server: Vec<String> = std::iter::once("listen: \"127.0.0.1:0\"".to_string())
            .chain(self.server.iter().map(|(k, v)| format!("{k}: {v}")))
            .collect();
        writeln!(y, "server: {{ {} }}", server.join(", ")).unwrap();
        if !self.destinations.is_empty() && !self.sections.iter().any(|(k, _)| k == "egress") {
            // the sinks are on loopback, which the SSRF guard refuses unless allowed
            y.push_str("egress: { allow: [127.0.0.0/8] }\n");
        }
        for (k, v) in &self.sections {
            writeln!(y, "{k}: {v}").unwrap();
        }
        if !self.sources.is_empty() {
            y.push_str("sources:\n");
            for (name, s) in &self.sources {
                writeln!(y, "  {name}:").unwrap();
                writeln!(y, "    path: /hooks/{name}").unwrap();
                writeln!(y, "    verify: {}", s.verify).unwrap();
                for (k, v) in &s.keys {
                    writeln!(y, "    {k}: {v}").unwrap();
                }
            }
        }
        if !self.destinations.is_empty() {
            y.push_str("destinations:\n");
            for (name, d) in &self.destinations {
                writeln!(y, "  {name}:").unwrap();
                writeln!(y, "    url: {}", d.url).unwrap();
                writeln!(y, "    sign: {}", d.sign).unwrap();
                for (k, v) in &d.keys {
                    writeln!(y, "    {k}: {v}").unwrap();
                }
            }
        }
        if !self.routes.is_empty() {
            y.push_str("routes:\n");
            for r in &self.routes {
                writeln!(y, "  - name: {}", r.name).unwrap();
                writeln!(y, "    source: {}", r.source.as_deref().expect("Route::from names the source")).unwrap();
                if !r.when.is_empty() {
                    y.push_str("    when:\n");
                    for c in &r.when {
                        writeln!(y, "      - {c}").unwrap();
                    }
                }
                for (k, v) in &r.keys {
                    writeln!(y, "    {k}: {v}").unwrap();
                }
                writeln!(y, "    to: [{}]", r.to.join(", ")).unwrap();
            }
        }
        y
    }
}

/// One `sources:` entry.
#[derive(Debug, Clone)]
pub struct Source {
    verify: String,
    keys: Vec<(String, String)>,
}

impl Source {
    /// `verify: { scheme: none }`.
    pub fn open() -> Source {
        Source::verify("{ scheme: none }")
    }

    /// `verify: { scheme: github, secret: "SECRET" }`.
    pub fn github(secret: &str) -> Source {
        Source::verify(&format!("{{ scheme: github, secret: \"{secret}\" }}"))
    }

    /// Any `verify:` value.
    pub fn verify(verify: &str) -> Source {
        Source { verify: verify.to_string(), keys: Vec::new() }
    }

    /// Another key (`.key("dedupe", "{ header: X-GitHub-Delivery }")`).
    pub fn key(mut self, key: &str, value: &str) -> Source {
        self.keys.push((key.to_string(), value.to_string()));
        self
    }
}

/// One `destinations:` entry.
#[derive(Debug, Clone)]
pub struct Dest {
    url: String,
    sign: String,
    keys: Vec<(String, String)>,
}

impl Dest {
    /// `url: URL`, `sign: { scheme: none }`.
    pub fn url(url: &str) -> Dest {
        Dest { url: url.to_string(), sign: "{ scheme: none }".to_string(), keys: Vec::new() }
    }

    /// Any `sign:` value.
    pub fn sign(mut self, sign: &str) -> Dest {
        self.sign = sign.to_string();
        self
    }

    /// `retry: { schedule: [..], jitter: 0 }` (no jitter: tests time the retries).
    pub fn retry_schedule<const N: usize>(self, schedule: [&str; N]) -> Dest {
        self.key("retry", &format!("{{ schedule: [{}], jitter: 0 }}", schedule.join(", ")))
    }

    /// Another key (`.key("timeout_ms", "300")`).
    pub fn key(mut self, key: &str, value: &str) -> Dest {
        self.keys.push((key.to_string(), value.to_string()));
        self
    }
}

/// One `routes:` entry.
#[derive(Debug, Clone)]
pub struct Route {
    name: String,
    source: Option<String>,
    when: Vec<String>,
    to: Vec<String>,
    keys: Vec<(String, String)>,
}

impl Route {
    pub fn new(name: &str) -> Route {
        Route { name: name.to_string(), source: None, when: Vec::new(), to: Vec::new(), keys: Vec::new() }
    }

    pub fn from(mut self, source: &str) -> Route {
        self.source = Some(source.to_string());
        self
    }

    pub fn to<const N: usize>(mut self, destinations: [&str; N]) -> Route {
        self.to = destinations.iter().map(|d| d.to_string()).collect();
        self
    }

    /// One more condition, as YAML (`"{ header: X-Kind, equals: push }"`); all must hold.
    pub fn when(mut self, condition: &str) -> Route {
        self.when.push(condition.to_string());
        self
    }

    /// Another key (`.key("transform", "[{ plugin: p.wasm }]")`).
    pub fn key(mut self, key: &str, value: &str) -> Route {
        self.keys.push((key.to_string(), value.to_string()));
        self
    }
}

#[test]
fn renders_what_a_user_would_write() {
    let yaml = Config::new()
        .server("max_body_bytes", "1024")
        .set("delivery", "{ max_pending: 2 }")
        .source("app", Source::open())
        .source("gh", Source::github("s3cret").key("dedupe", "{ header: X-GitHub-Delivery }"))
        .destination("sink", Dest::url("http://127.0.0.1:9/x").retry_schedule(["100ms", "1s"]))
        .route(Route::new("r").from("gh").when("{ header: X-Kind, equals: push }").to(["sink"]))
        .render();
    assert_eq!(
        yaml,
        r#"server: { listen: "127.0.0.1:0", max_body_bytes: 1024 }
egress: { allow: [127.0.0.0/8] }
delivery: { max_pending: 2 }
sources:
  app:
    path: /hooks/app
    verify: { scheme: none }
  gh:
    path: /hooks/gh
    verify: { scheme: github, secret: "s3cret" }
    dedupe: { header: X-GitHub-Delivery }
destinations:
  sink:
    url: http://127.0.0.1:9/x
    sign: { scheme: none }
    retry: { schedule: [100ms, 1s], jitter: 0 }
routes:
  - name: r
    source: gh
    when:
      - { header: X-Kind, equals: push }
    to: [sink]
"#
    );
}
