use super::*;

fn parse(text: &str) -> (Config, Vec<String>) {
    let env = |k: &str| match k {
        "GH_SECRET" => Some("from-env".to_string()),
        "DATABASE_URL" => Some("postgres://hookyard:s3cret@db.internal:5432/hooks".to_string()),
        _ => None,
    };
    let (cfg, errors) = Config::parse("routes.yaml", Path::new("."), text, &env);
    (cfg, errors.iter().map(ToString::to_string).collect())
}

const GOOD: &str = r#"
server:
  listen: "127.0.0.1:0"
  max_body_bytes: 2048
egress:
  allow: [127.0.0.0/8, "::1"]
sources:
  github:
    path: /hooks/github
    verify: { scheme: github, secret: "${GH_SECRET}" }
destinations:
  chat:
    url: http://127.0.0.1:9000/chat
    sign: { secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw }
    retry: { schedule: [200ms, 1s], jitter: 0 }
routes:
  - name: pushes
    source: github
    to: [chat]
"#;

#[test]
fn parses_a_good_config() {
    let (cfg, errors) = parse(GOOD);
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(cfg.server.max_body_bytes, 2048);
    assert_eq!(cfg.server.request_timeout.0, std::time::Duration::from_secs(30));
    assert_eq!(cfg.sources[0].1.verify.secret, Some(Secret("from-env".into())));
    let d = &cfg.destinations[0].1;
    assert_eq!(d.timeout_ms, 10_000);
    assert_eq!(d.sign.scheme, SignSchemeName::StandardWebhooks);
    assert_eq!(
        d.retry.schedule,
        Some(vec![Dur(std::time::Duration::from_millis(200)), Dur(std::time::Duration::from_secs(1))])
    );
    assert_eq!(cfg.routes[0].1.name, "pushes");
}

#[test]
fn reports_every_problem_with_position_and_key() {
    let text = r#"
server:
  listn: "127.0.0.1:0"
sources:
  github:
    path: hooks/github
    verify: { scheme: github, secret: "${MISSING_SECRET}" }
  stripe:
    path: /hooks/stripe
    verify: { scheme: stripey, secret: x }
destinations:
  chat:
    url: ftp://example.com/x
    sign: { secret: whsec_abc }
routes:
  - name: a
    source: githb
    to: [chta]
  - name: a
    source: github
    to: [chat, chat]
    bogus: 1
  - name: b
    source: github
    to: [chat]
egress: { allow: [not-a-net] }
"#;
    let (_, errors) = parse(text);
    let want = [
        "routes.yaml:3:3: server.listn: unknown field `listn`, expected one of `listen`, `max_body_bytes`, `max_header_bytes`, `max_connections`, `request_timeout`, `shutdown_grace`, `log_redact`, `trusted_proxies`",
        "routes.yaml:6:5: sources.github.path: must start with '/', got \"hooks/github\"",
        "routes.yaml:7:39: sources.github.verify.secret: environment variable MISSING_SECRET is not set (write ${MISSING_SECRET:-default} to give a default)",
        "routes.yaml:10:15: sources.stripe.verify.scheme: unknown variant `stripey`, expected one of `none`, `hmac`, `basic`, `api-key`, `github`, `gitlab`, `bitbucket`, `stripe`, `shopify`, `slack`, `standard-webhooks`, `svix`, `zoom`, `meta`, `x`, `microsoft-graph`, `dropbox`, `twilio`, `sendgrid`, `paddle`, `linear`, `intercom`, `square`, `mailgun`, `pagerduty`, `typeform`, `calendly`, `hubspot`",
        "routes.yaml:13:5: destinations.chat.url: \"ftp://example.com/x\" must be an absolute http:// or https:// URL",
        "routes.yaml:17:5: routes[0].source: unknown source \"githb\" (did you mean \"github\"?)",
        "routes.yaml:18:10: routes[0].to[0]: unknown destination \"chta\" (did you mean \"chat\"?)",
        "routes.yaml:22:5: routes[1].bogus: unknown field `bogus`, expected one of `name`, `source`, `when`, `to`, `transform`, `on_error`, `then`, `description`",
        "routes.yaml:26:19: egress.allow[0]: \"not-a-net\" is not a CIDR network or IP address",
    ];
    assert_eq!(errors, want);
}

#[test]
fn reference_checks() {
    let text = r#"
sources:
  a: { path: /same, verify: { scheme: none } }
  b: { path: /same, verify: { scheme: none } }
  "bad name": { path: /x, verify: { scheme: none } }
destinations:
  d: { url: "http://127.0.0.1/", sign: { scheme: none }, timeout_ms: 0, retry: { jitter: 2 } }
routes:
  - { name: r, source: a, to: [d, d] }
  - { name: r, source: a, to: [] }
"#;
    let (_, errors) = parse(text);
    let want = [
        "routes.yaml:4:8: sources.b.path: path \"/same\" is already used by source \"a\"",
        "routes.yaml:5:3: sources.bad name: names may use only letters, digits, '-' and '_'",
        "routes.yaml:7:58: destinations.d.timeout_ms: must be greater than 0",
        "routes.yaml:7:82: destinations.d.retry.jitter: must be between 0 and 1",
        "routes.yaml:9:35: routes[0].to[1]: destination \"d\" is listed twice",
        "routes.yaml:10:7: routes[1].name: duplicate route name \"r\"",
        "routes.yaml:10:27: routes[1].to: must name at least one destination",
    ];
    assert_eq!(errors, want);
}

#[test]
fn syntax_errors_and_wrong_shapes() {
    let (_, errors) = parse("routes: [\n");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("routes.yaml:2:1: invalid YAML"), "{errors:?}");
    let (_, errors) = parse("- a\n- b\n");
    assert_eq!(
        errors,
        ["routes.yaml: the top level must be a mapping with keys server, sources, destinations, routes"]
    );
    let (_, errors) = parse("routes: {a: 1}\nsourcs: {}\n");
    assert_eq!(
        errors,
        [
            "routes.yaml:1:1: routes: must be a list of routes",
            "routes.yaml:2:1: sourcs: unknown key (did you mean \"sources\"?); expected one of server, admin, egress, delivery, storage, telemetry, sources, destinations, routes"
        ]
    );
    let (_, errors) = parse("server: { request_timeout: 30 }\n");
    assert_eq!(
        errors,
        [
            "routes.yaml:1:11: server.request_timeout: expected a duration with a unit such as \"5s\" or \"250ms\", found 30"
        ]
    );
}

#[test]
fn did_you_mean_only_for_close_names() {
    assert_eq!(did_you_mean("chta", ["chat", "billing"].into_iter()), " (did you mean \"chat\"?)");
    assert_eq!(did_you_mean("zzzz", ["chat", "billing"].into_iter()), "");
    assert_eq!(did_you_mean("x", ["y"].into_iter()), "");
}

#[test]
fn storage_commit_timeout_defaults_to_5s_and_must_be_positive() {
    let (cfg, errors) = parse("storage: { commit_timeout: 250ms }\n");
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(cfg.storage.commit_timeout.0, std::time::Duration::from_millis(250));
    let (cfg, _) = parse("storage: { sync: normal }\n");
    assert_eq!(cfg.storage.commit_timeout.0, std::time::Duration::from_secs(5));
    let (_, errors) = parse("storage:\n  commit_timeout: 0s\n");
    assert_eq!(errors, ["routes.yaml:2:3: storage.commit_timeout: must be greater than 0"]);
}

#[test]
fn storage_postgres_takes_its_url_from_the_environment_and_is_checked() {
    let (cfg, errors) = parse("storage:\n  postgres: { url: \"${DATABASE_URL}\" }\n");
    assert_eq!(errors, Vec::<String>::new());
    let pg = cfg.storage.postgres.expect("postgres");
    assert_eq!(pg.url.0, "postgres://hookyard:s3cret@db.internal:5432/hooks");
    assert_eq!((pg.pool, pg.schema.as_str()), (16, "public"));
    assert_eq!((pg.connect_timeout.0.as_secs(), pg.statement_timeout.0.as_secs()), (5, 30));
    assert!(!format!("{pg:?}").contains("s3cret"), "Debug hides the URL: {pg:?}");
    // the url itself is checked by the store (snapshot::tests::storage_postgres_is_checked_…)
    let (_, errors) = parse("storage:\n  postgres: { url: \"${NO_SUCH_URL}\" }\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("environment variable NO_SUCH_URL is not set"), "{errors:?}");
    let (_, errors) = parse("storage:\n  postgres: { pool: 4 }\n");
    assert_eq!(errors, ["routes.yaml:2:3: storage.postgres: missing field `url`"]);
}

#[test]
fn the_cluster_settings_have_defaults_and_are_checked() {
    let (cfg, errors) = parse("storage:\n  postgres: { url: \"${DATABASE_URL}\" }\n");
    assert_eq!(errors, Vec::<String>::new());
    let pg = cfg.storage.postgres.expect("postgres");
    let secs = |d: crate::config::Dur| d.0.as_secs();
    assert_eq!((secs(pg.lease), secs(pg.heartbeat), secs(pg.node_timeout)), (60, 1, 10));
    assert_eq!(pg.node_id, None);
    let (_, errors) = parse(
        "storage:\n  postgres: { url: \"${DATABASE_URL}\", lease: 12s, heartbeat: 2s, node_timeout: 5s, node_id: \"web 1\" }\n\
         destinations:\n  slow: { url: \"https://example.com/\", sign: { scheme: none }, timeout_ms: 10000 }\n",
    );
    assert_eq!(
        errors,
        [
            "routes.yaml:2:39: storage.postgres.lease: must be longer than the longest destination timeout (destinations.slow.timeout_ms: 10000 ms) plus 5s, at least 15s",
            "routes.yaml:2:66: storage.postgres.node_timeout: must be at least 3 heartbeats (6s): a live instance must not look dead for one late heartbeat",
            "routes.yaml:2:84: storage.postgres.node_id: must be 1 to 100 characters without spaces or control characters",
        ]
    );
    let (_, errors) = parse("storage:\n  postgres: { url: \"${DATABASE_URL}\", heartbeat: 0s }\n");
    assert_eq!(errors, ["routes.yaml:2:39: storage.postgres.heartbeat: must be greater than 0"]);
}

#[test]
fn source_guards_are_checked() {
    let text = r#"
server: { trusted_proxies: [10.0.0.0/8, "proxy.internal"] }
sources:
  a:
    path: /a
    verify: { scheme: none }
    allow_ips: [192.0.2.0/24, "2001:db8::/32", 127.0.0.1, 300.1.1.1/8]
    rate_limit: { per_second: 0, burst: 0 }
  b:
    path: /b
    verify: { scheme: none }
    allow_ips: []
    rate_limit: { per_second: 0.5 }
  c:
    path: /c
    verify: { scheme: none }
    rate_limit: { per_second: 10, brust: 3 }
"#;
    let (cfg, errors) = parse(text);
    let want = [
        "routes.yaml:2:41: server.trusted_proxies[1]: \"proxy.internal\" is not a CIDR network or IP address",
        "routes.yaml:7:59: sources.a.allow_ips[3]: \"300.1.1.1/8\" is not a CIDR network or IP address",
        "routes.yaml:8:19: sources.a.rate_limit.per_second: must be a number of requests per second, at least 0.0000116 (one a day)",
        "routes.yaml:8:34: sources.a.rate_limit.burst: must be at least 1",
        "routes.yaml:12:5: sources.b.allow_ips: must list at least one network (leave the key out to allow every address)",
        "routes.yaml:17:35: sources.c.rate_limit.brust: unknown field `brust`, expected `per_second` or `burst`",
    ];
    assert_eq!(errors, want);
    let b = &cfg.sources.iter().find(|(n, _)| n == "b").unwrap().1;
    assert_eq!(b.rate_limit.unwrap().burst(), 1, "the default burst is a second's worth, at least 1");
    let limit = SourceRateLimit { per_second: 2.5, burst: None };
    assert_eq!(limit.burst(), 3);
}

/// `${file:PATH}`: one trailing newline stripped, relative paths from the config's directory,
/// errors at the key with the path (never the content), and every file recorded for reload.
#[test]
fn secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &[u8]| std::fs::write(dir.path().join(name), content).unwrap();
    write("gh", b"s3cr3t-from-file\n");
    write("crlf", b"with-crlf\r\n");
    write("two-newlines", b"keeps-one\n\n");
    write("empty", b"");
    write("newline-only", b"\n");
    write("blank", b"  \t\n");
    write("big", &vec![b'x'; 64 * 1024 + 1]);
    write("binary", &[0xff, 0xfe, b'x']);
    let d = dir.path().display();
    let text = format!(
        r#"
sources:
  ok:
    path: /ok
    verify: {{ scheme: github, secret: "${{file:gh}}", secrets: ["${{file:{d}/crlf}}", "${{file:two-newlines}}"] }}
  missing:
    path: /missing
    verify: {{ scheme: github, secret: "${{file:/nonexistent/secret}}" }}
  empty:
    path: /empty
    verify: {{ scheme: github, secret: "${{file:empty}}" }}
  newline:
    path: /newline
    verify: {{ scheme: github, secret: "${{file:newline-only}}" }}
  blank:
    path: /blank
    verify: {{ scheme: github, secret: "${{file:blank}}" }}
  big:
    path: /big
    verify: {{ scheme: github, secret: "${{file:big}}" }}
  binary:
    path: /binary
    verify: {{ scheme: github, secret: "${{file:binary}}" }}
  dir:
    path: /dir
    verify: {{ scheme: github, secret: "${{file:.}}" }}
"#
    );
    let (cfg, errors) = Config::parse("routes.yaml", dir.path(), &text, &|_| None);
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let want = [
        "routes.yaml:8:39: sources.missing.verify.secret: cannot read secret file /nonexistent/secret: No such file or directory (os error 2)".to_string(),
        format!("routes.yaml:11:39: sources.empty.verify.secret: secret file {d}/empty is empty"),
        format!("routes.yaml:14:39: sources.newline.verify.secret: secret file {d}/newline-only is empty"),
        format!("routes.yaml:17:39: sources.blank.verify.secret: secret file {d}/blank holds only whitespace"),
        format!(
            "routes.yaml:20:39: sources.big.verify.secret: cannot read secret file {d}/big: the file is 65537 bytes, over the 65536-byte limit for a secret file"
        ),
        format!("routes.yaml:23:39: sources.binary.verify.secret: secret file {d}/binary is not UTF-8 text"),
        format!("routes.yaml:26:39: sources.dir.verify.secret: cannot read secret file {d}/.: not a regular file (a directory)"),
    ];
    assert_eq!(errors, want);
    assert!(errors.iter().all(|e| !e.contains("xxxx")), "never the content");
    let ok = &cfg.sources.iter().find(|(n, _)| n == "ok").unwrap().1.verify;
    assert_eq!(ok.secret, Some(Secret("s3cr3t-from-file".into())));
    assert_eq!(ok.secrets, [Secret("with-crlf".into()), Secret("keeps-one\n".into())]);
    let recorded: Vec<String> = cfg.secret_files.iter().map(|f| f.path.display().to_string()).collect();
    assert_eq!(recorded[..3], [format!("{d}/gh"), format!("{d}/crlf"), format!("{d}/two-newlines")]);
    assert_eq!(recorded.len(), 10);
    assert!(cfg.secret_files[..3].iter().all(|f| f.sha256.is_some()));
    assert_eq!(cfg.secret_files[3].sha256, None, "a missing file is recorded, so a reload watches for it");
}

/// serde stops at an item's first problem; `item` reads the item again without the offending key
/// until it reads, and drops the follow-on `missing field` of a mapping a key was taken out of.
#[test]
fn every_problem_of_an_item_is_reported() {
    let text = "destinations:\n  d:\n    ulr: http://x/\n    timeout_ms: soon\n    bogus: 1\n    tls: { a: 1, b: 2 }\n";
    let (cfg, errors) = parse(text);
    let short: Vec<String> = errors.iter().map(|e| e.split(", expected").next().unwrap().to_string()).collect();
    assert_eq!(
        short,
        [
            "routes.yaml:3:5: destinations.d.ulr: unknown field `ulr`",
            "routes.yaml:4:5: destinations.d.timeout_ms: invalid type: string \"soon\"",
            "routes.yaml:5:5: destinations.d.bogus: unknown field `bogus`",
            "routes.yaml:6:12: destinations.d.tls.a: unknown field `a`",
            "routes.yaml:6:18: destinations.d.tls.b: unknown field `b`",
        ]
    );
    assert!(cfg.destinations.is_empty());
    // past the bound, the rest is summed up in one line
    let many: String = (0..MAX_PROBLEMS_PER_ITEM + 5).map(|i| format!("  bogus{i}: 1\n")).collect();
    let (_, errors) = parse(&format!("server:\n{many}"));
    assert_eq!(errors.len(), MAX_PROBLEMS_PER_ITEM + 1);
    assert_eq!(errors[0], "routes.yaml:1:1: server: more problems, not listed: at most 100 are listed per item");
    // a missing field with nothing taken out is reported
    let (_, errors) = parse("destinations:\n  d: { sign: { scheme: none } }\n");
    assert_eq!(errors, ["routes.yaml:2:3: destinations.d: missing field `url`"]);
}

#[test]
fn batch_settings_have_defaults_and_are_checked() {
    let dest = |name: &str, batch: &str| {
        format!("  {name}:\n    url: http://127.0.0.1:9/\n    sign: {{ scheme: none }}\n    batch: {batch}\n")
    };
    let text = format!(
        "destinations:\n{}{}{}{}{}",
        dest("defaults", "{}"),
        dest("units", "{ max_events: 10, max_bytes: 512KiB, max_wait: 250ms, format: ndjson }"),
        dest("zero", "{ max_events: 0, max_bytes: 0, max_wait: 0s }"),
        dest("bad", "{ max_bytes: 1 MiB, format: xml }"),
        "  both:\n    url: http://127.0.0.1:9/\n    sign: { scheme: none }\n    ordering: destination\n    batch: {}\n",
    );
    let (cfg, errors) = parse(&text);
    assert_eq!(
        errors,
        [
            "routes.yaml:13:14: destinations.zero.batch.max_events: must be between 1 and 10000",
            "routes.yaml:13:29: destinations.zero.batch.max_bytes: must be between 1 byte and 64 MiB",
            "routes.yaml:13:43: destinations.zero.batch.max_wait: must be more than 0 and at most 1h",
            "routes.yaml:17:32: destinations.bad.batch.format: unknown variant `xml`, expected `json_array` or `ndjson`",
            "routes.yaml:22:5: destinations.both.batch: batch and ordering cannot be combined on one destination (yet): choose one",
        ]
    );
    let batch = |name: &str| cfg.destinations.iter().find(|(n, _)| n == name).unwrap().1.batch.clone().unwrap();
    assert_eq!(batch("defaults"), BatchConfig::default());
    assert_eq!(
        (batch("defaults").max_events, batch("defaults").max_bytes, batch("defaults").max_wait.0),
        (100, ByteSize(1 << 20), std::time::Duration::from_secs(1))
    );
    let units = batch("units");
    assert_eq!((units.max_events, units.max_bytes, units.format), (10, ByteSize(512 << 10), BatchFormat::Ndjson));
}

#[test]
fn chains_and_templates_are_checked_with_their_keys() {
    let text = r#"
sources:
  app: { path: /hooks/app, verify: { scheme: none } }
destinations:
  crm: { url: "https://crm.example.com/{{ $.tenant }}/in", headers: { X-Account: "{{ header:X-Account }}" }, sign: { scheme: none } }
  billing: { url: "https://billing.example.com/link/{{ response.crm:$.id }}", sign: { scheme: none } }
  port: { url: "https://example.com:{{ $.port }}/", sign: { scheme: none } }
  audit: { url: "https://audit.example.com/", body: '{"a": {{ $.a }', sign: { scheme: none } }
  queue: { url: "https://q.example.com/{{ $.x }}", sign: { scheme: none }, batch: { max_events: 10 } }
  notify: { url: "https://n.example.com/", sign: { scheme: none }, ordering: { key: "$.k" } }
routes:
  - { name: ok, source: app, to: [crm], then: [{ destination: billing, status: [201] }] }
  - { name: first, source: app, to: [billing] }
  - { name: two, source: app, to: [crm, audit], then: [{ destination: billing }] }
  - { name: bad, source: app, to: [crm], then: [{ destination: crm }, { destination: billing, after: nope, status: [404] }, { destination: notify }] }
"#;
    let (_, errors) = parse(text);
    assert_eq!(
        errors,
        [
            "routes.yaml:7:11: destinations.port.url: {{ $.port }}: the port cannot be a placeholder",
            "routes.yaml:8:47: destinations.audit.body: a placeholder opened at byte 6 is not closed with }}",
            "routes.yaml:9:76: destinations.queue.batch: a batch is one request: its url, headers and body cannot be templates",
            "routes.yaml:13:38: routes[1].to[0]: destination \"billing\" reads the response of \"crm\": it can only be a step after it (then:), not a first destination",
            "routes.yaml:14:56: routes[2].then[0].after: the route sends to several destinations: name the one this step follows",
            "routes.yaml:15:51: routes[3].then[0].destination: destination \"crm\" is already in this route's chain (each destination takes one place)",
            "routes.yaml:15:95: routes[3].then[1].after: \"nope\" is neither one of this route's `to` nor an earlier step",
            "routes.yaml:15:125: routes[3].then[2]: destination \"notify\" is a step and cannot be ordered or batched (yet)",
        ]
    );
}

#[test]
fn telemetry_otlp_has_defaults_and_is_checked() {
    let (cfg, errors) = parse(&format!("{GOOD}telemetry:\n  otlp: {{ endpoint: \"http://127.0.0.1:4318\" }}\n"));
    assert_eq!(errors, Vec::<String>::new());
    let otlp = cfg.telemetry.otlp.expect("otlp");
    assert_eq!((otlp.endpoint.as_str(), otlp.service_name.as_str()), ("http://127.0.0.1:4318", "hookyard"));
    assert!(otlp.headers.is_empty());
    assert_eq!(otlp.sample_ratio, 1.0);
    let (_, errors) = parse("telemetry:\n  otlp: { endpoint: \"http://c:4318\", sample_ratio: 1.5 }\n");
    assert_eq!(errors, ["routes.yaml:2:38: telemetry.otlp.sample_ratio: must be from 0 to 1"]);
    // not set: nothing is exported
    assert_eq!(parse(GOOD).0.telemetry, TelemetryConfig::default());

    // an item with an unknown key is left out whole, so its values are checked in a second run
    let (_, errors) = parse("telemetry:\n  otlp:\n    endpoint: \"http://c:4318\"\n    servce_name: gw\n");
    assert_eq!(
        errors,
        [
            "routes.yaml:4:5: telemetry.otlp.servce_name: unknown field `servce_name`, expected one of `endpoint`, `service_name`, `headers`, `sample_ratio`"
        ]
    );
    let text = r#"
telemetry:
  otlp:
    endpoint: "grpc://collector:4317"
    headers: { "bad header": x }
"#;
    let (_, errors) = parse(text);
    assert_eq!(
        errors,
        [
            "routes.yaml:4:5: telemetry.otlp.endpoint: \"grpc://collector:4317\" must be an absolute http:// or https:// URL without a query",
            "routes.yaml:5:16: telemetry.otlp.headers.bad header: not a valid header name",
        ]
    );
    let (_, errors) = parse("telemetry:\n  otlp: { endpoint: \"http://[::1\" }\n");
    assert_eq!(errors, ["routes.yaml:2:11: telemetry.otlp.endpoint: invalid URL \"http://[::1\": invalid authority"]);
    let (_, errors) = parse("telemetry:\n  metrics: {}\n");
    assert_eq!(errors, ["routes.yaml:2:3: telemetry.metrics: unknown field `metrics`, expected `otlp`"]);
}
