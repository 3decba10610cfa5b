//! The README is the front door and `docs/` the reference: the full `routes.yaml` reference must be
//! a valid config, every command the documentation shows must exist with the flags it shows, every
//! `section.key` it names must be in the reference, every docs page must be reachable from the
//! README, and every link between the documents must resolve.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// README.md and every `docs/*.md`, as (path relative to the repository, text). The pages are read
/// from the directory, not listed here, so a page added to `docs/` is checked like the others (and
/// must be linked from the README: `every_link_resolves_and_the_readme_reaches_every_page`).
fn docs() -> Vec<(String, String)> {
    let root = crate::harness::manifest_dir();
    let mut pages: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    assert!(!pages.is_empty(), "docs/ has no pages");
    std::iter::once("README.md".to_string())
        .chain(pages)
        .map(|path| {
            let text = std::fs::read_to_string(root.join(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            (path, text)
        })
        .collect()
}

/// The one document with a heading ending in `title` (any level), and the text after that heading.
fn section(title: &str) -> (String, String) {
    let found: Vec<(String, String)> = docs()
        .into_iter()
        .filter_map(|(path, text)| {
            let start = text.lines().position(|l| l.starts_with('#') && l.trim_start_matches('#').trim() == title)?;
            Some((path, text.lines().skip(start + 1).collect::<Vec<_>>().join("\n")))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the heading `{title}` should be in exactly one document: {:?}",
        found.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    found.into_iter().next().unwrap()
}

/// The first ```yaml block after the "`routes.yaml` reference" heading.
fn reference_yaml() -> String {
    let (_, section) = section("`routes.yaml` reference");
    let block = section.split("```yaml\n").nth(1).expect("yaml block");
    block.split("```").next().unwrap().to_string()
}

#[test]
fn the_reference_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, reference_yaml()).unwrap();
    // the reference names a CA file for https destinations
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(dir.path().join("internal-ca.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
    // ... a client certificate and its key for mutual TLS
    let client = rcgen::generate_simple_self_signed(Vec::<String>::new()).unwrap();
    std::fs::write(dir.path().join("client.pem"), client.cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), client.signing_key.serialize_pem()).unwrap();
    // ... and a plugin (built by plugins/build.sh)
    std::fs::create_dir_all(dir.path().join("plugins/dist")).unwrap();
    std::fs::copy(
        crate::harness::manifest_dir().join("plugins/dist/github_chat.wasm"),
        dir.path().join("plugins/dist/github_chat.wasm"),
    )
    .expect("plugins/dist/github_chat.wasm: run plugins/build.sh first");
    let out = Command::new(crate::harness::bin())
        .args(["check", "--config"])
        .arg(&config)
        .env("GITHUB_WEBHOOK_SECRET", "gh-secret")
        .env("GITHUB_WEBHOOK_SECRET_PREVIOUS", "gh-secret-previous")
        .env("PARTNER_SECRET", "partner-secret")
        .env("CHAT_SIGNING_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the documented reference config does not pass `check`:\n{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok — 2 sources, 4 destinations, 2 routes"));
}

/// `hookyard COMMAND --help`, once per command.
fn help(cache: &mut BTreeMap<String, String>, command: &str, doc: &str) -> String {
    cache
        .entry(command.to_string())
        .or_insert_with(|| {
            let out = Command::new(crate::harness::bin()).args(command.split(' ')).arg("--help").output().unwrap();
            assert!(out.status.success(), "{doc} shows `hookyard {command}`, but `hookyard {command} --help` failed");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .clone()
}

/// Checks one usage, `hookyard` left out (`plugin test X --body F [-H 'K: V']…`): its command
/// exists, and so does every flag it shows. Returns the command.
fn check_usage(cache: &mut BTreeMap<String, String>, usage: &str, doc: &str) -> String {
    let words: Vec<&str> = usage.split_whitespace().collect();
    // `hookyard plugin test …`: a lower-case word after the command is a subcommand
    let sub = words.get(1).filter(|w| w.bytes().all(|b| b.is_ascii_lowercase()) && words[0] == "plugin");
    let command: Vec<&str> = std::iter::once(words[0]).chain(sub.copied()).collect();
    let command = command.join(" ");
    let help = help(cache, &command, doc);
    for word in &words {
        let word = word.trim_start_matches(['[', '(']);
        if let Some(flag) = word.strip_prefix("--") {
            let flag = flag.split(['=', ']', ')', ' ']).next().unwrap();
            assert!(
                help.contains(&format!("--{flag}")),
                "`hookyard {command}` has no --{flag}, yet {doc} documents it"
            );
        } else if let Some(short) =
            word.strip_prefix('-').filter(|s| s.len() == 1 && s.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            assert!(
                help.contains(&format!("-{short},")),
                "`hookyard {command}` has no -{short}, yet {doc} documents it"
            );
        }
    }
    command
}

#[test]
fn every_documented_command_exists_with_its_flags() {
    let (doc, section) = section("Commands");
    let table = section.split("\n## ").next().unwrap();
    let mut cache = BTreeMap::new();
    let mut checked = 0;
    for line in table.lines().filter(|l| l.starts_with("| `hookyard ")) {
        let usage = line.split('`').nth(1).unwrap();
        check_usage(&mut cache, usage.strip_prefix("hookyard ").unwrap(), &doc);
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} commands found in the table of {doc}");
}

/// Code blocks (```` ```sh ````) and code spans of a document, without the fences.
fn code(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut blocks, mut spans) = (Vec::new(), Vec::new());
    let mut fence: Option<String> = None;
    for line in text.lines() {
        match (&mut fence, line.strip_prefix("```")) {
            (None, Some(_)) => fence = Some(String::new()),
            (Some(block), Some(_)) => {
                blocks.push(std::mem::take(block));
                fence = None;
            }
            (Some(block), None) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, None) => spans.extend(line.split('`').skip(1).step_by(2).map(str::to_string)),
        }
    }
    (blocks, spans)
}

/// Every `hookyard …` and `cargo run --release -- …` in the README's and the docs' code (commands
/// in prose, examples in shell blocks) names a command that exists, with flags it has.
#[test]
fn every_command_the_docs_show_exists_with_its_flags() {
    let mut cache = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (doc, text) in docs() {
        let (blocks, spans) = code(&text);
        // a shell line: continuations joined, the comment cut off, up to a pipe or a redirection
        let lines = blocks.iter().flat_map(|block| {
            block.replace("\\\n", " ").lines().map(|l| l.split(" # ").next().unwrap().to_string()).collect::<Vec<_>>()
        });
        for code in lines.chain(spans) {
            // the table's alternatives (`pending\|delivered`) are not pipes
            let code = code.replace("\\|", " ");
            for start in ["hookyard ", "cargo run --release -- "] {
                for (at, _) in code.match_indices(start) {
                    // `hookyard` as a word, not the tail of another one
                    if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '/') {
                        continue;
                    }
                    let usage = code[at + start.len()..].split(['|', '>', ';', '&']).next().unwrap();
                    if !usage.starts_with(|c: char| c.is_ascii_lowercase()) {
                        continue;
                    }
                    seen.insert(check_usage(&mut cache, usage, &doc));
                }
            }
        }
    }
    for command in ["run", "check", "send", "receive", "events", "export", "replay", "plugin test", "reload", "status"]
    {
        assert!(seen.contains(command), "no document shows `hookyard {command}`: {seen:?}");
    }
}

/// "Every command but `receive` and `plugin test` takes `--config`": each command's help agrees,
/// and `plugin test` names its plugin settings `--plugin-config`.
#[test]
fn the_commands_that_take_config_are_the_documented_ones() {
    let sentences: Vec<String> = docs()
        .into_iter()
        .filter_map(|(_, text)| {
            let rest = text.split("Every command but ").nth(1)?;
            Some(rest.split(" takes `--config`").next()?.to_string())
        })
        .collect();
    assert_eq!(sentences.len(), 1, "the sentence naming the commands without --config, once: {sentences:?}");
    let exceptions: Vec<&str> = sentences[0].split('`').skip(1).step_by(2).collect();
    assert_eq!(exceptions, ["receive", "plugin test"]);
    let commands = [
        "run",
        "check",
        "dry-run",
        "send",
        "receive",
        "events",
        "event",
        "export",
        "replay",
        "pause",
        "resume",
        "migrate",
        "plugin test",
        "reload",
        "status",
    ];
    for command in commands {
        let help = Command::new(crate::harness::bin()).args(command.split(' ')).arg("--help").output().unwrap();
        assert!(help.status.success(), "`hookyard {command} --help` failed");
        let help = String::from_utf8_lossy(&help.stdout);
        let takes_config = help.contains("--config <CONFIG>");
        assert_eq!(takes_config, !exceptions.contains(&command), "`hookyard {command} --help`:\n{help}");
    }
    let help = Command::new(crate::harness::bin()).args(["plugin", "test", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--plugin-config <KEY=VALUE>"));
}

/// A `server.max_body_bytes` named anywhere in the README or the docs is a key of the reference's
/// `server:` section (and so, by `the_reference_config_is_valid`, a key `check` accepts).
#[test]
fn every_documented_setting_is_in_the_reference() {
    let sections = ["server", "admin", "egress", "delivery", "storage", "telemetry"];
    let mut keys = BTreeSet::new();
    let mut current = "";
    for line in reference_yaml().lines() {
        if let Some(name) = line.strip_suffix(':').filter(|n| !n.starts_with([' ', '#'])) {
            current = sections.iter().find(|s| **s == name).copied().unwrap_or("");
        } else if let Some(key) = line
            .strip_prefix("  ")
            // an optional part shown commented out (`  # postgres:`) is documented too
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .and_then(|l| l.split_once(':'))
            .map(|(k, _)| k)
            && !current.is_empty()
            && !key.starts_with([' ', '#'])
        {
            keys.insert(format!("{current}.{key}"));
        }
    }
    assert!(keys.len() >= 20, "the reference's settings: {keys:?}");
    let mut named = 0;
    for (doc, text) in docs() {
        for span in code(&text).1 {
            let Some((section, rest)) = span.split_once('.') else { continue };
            if !sections.contains(&section) {
                continue;
            }
            let key: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            let setting = format!("{section}.{key}");
            assert!(keys.contains(&setting), "{doc} names `{span}`, which the `routes.yaml` reference does not have");
            named += 1;
        }
    }
    assert!(named >= 20, "only {named} settings named in the docs");
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.insert(anchor(line));
        }
    }
    anchors
}

/// Every relative link in the README, the docs, ARCHITECTURE.md and the benchmark and plugin
/// READMEs names a file that exists (and a heading that exists, with `#`), and the README links to
/// every page of `docs/`.
#[test]
fn every_link_resolves_and_the_readme_reaches_every_page() {
    let root = crate::harness::manifest_dir();
    let mut files = docs();
    for extra in ["ARCHITECTURE.md", "bench/README.md", "plugins/README.md"] {
        files.push((extra.to_string(), std::fs::read_to_string(root.join(extra)).expect(extra)));
    }
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut from_readme = BTreeSet::new();
    let mut checked = 0;
    for (doc, text) in &files {
        let dir = Path::new(doc).parent().unwrap();
        for target in link.captures_iter(text).map(|c| c[1].to_string()) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() { Path::new(doc).to_path_buf() } else { dir.join(path) };
            // `docs/../plugins/README.md` → `plugins/README.md`
            let mut normal = std::path::PathBuf::new();
            for part in file.components() {
                match part {
                    std::path::Component::ParentDir => {
                        assert!(normal.pop(), "{doc}: link {target} leaves the repository")
                    }
                    std::path::Component::CurDir => {}
                    part => normal.push(part),
                }
            }
            assert!(root.join(&normal).exists(), "{doc}: link {target}: {} does not exist", normal.display());
            if !fragment.is_empty() {
                let text = std::fs::read_to_string(root.join(&normal)).unwrap();
                assert!(
                    anchors(&text).contains(fragment),
                    "{doc}: link {target}: {} has no heading #{fragment}",
                    normal.display()
                );
            }
            if doc == "README.md" {
                from_readme.insert(normal.to_string_lossy().into_owned());
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} links found");
    for (page, _) in docs().iter().skip(1) {
        assert!(from_readme.contains(page), "README.md does not link to {page}");
    }
}

/// The README's tour quotes the bundled `routes.yaml`: every line it shows is in that file.
#[test]
fn the_readme_excerpt_of_routes_yaml_is_in_it() {
    let readme = &docs()[0].1;
    let tour = readme.split("An excerpt of the bundled").nth(1).expect("the tour's excerpt");
    let excerpt = tour.split("```yaml\n").nth(1).unwrap().split("```").next().unwrap();
    let bundled = std::fs::read_to_string(crate::harness::manifest_dir().join("routes.yaml")).unwrap();
    let bundled: BTreeSet<&str> = bundled.lines().collect();
    for line in excerpt.lines().filter(|l| !l.trim_start().starts_with('#')) {
        assert!(bundled.contains(line), "the README quotes a line routes.yaml does not have: {line:?}");
    }
}

/// docs/providers.md shows one ```yaml block per preset of the catalogue, in its order, each a
/// whole config that `check` accepts with its `${ENV}` variables set, and `dedupe:` on the
/// provider's event id where the preset names one; its table lists the presets in the same order
/// with their tolerances.
#[test]
fn every_provider_block_is_a_valid_config() {
    use hookyard::verify::catalogue::{Field, PRESETS};
    // SendGrid's secret is an ECDSA P-256 public key, base64 of its DER SubjectPublicKeyInfo
    // (made once with python3 `cryptography`); any other variable may hold a `whsec_` secret
    // (destinations' `sign.secret` and the Standard Webhooks and Svix sources need one).
    const SENDGRID_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE613Ioyyi7zSaW1l2bdxav7d5tAnYcZoUvFYvxtlAc1U7JhLH017CRN2N2kJBduLqL+pi5P/iwVdMqT3DV5I/Aw==";
    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let text = std::fs::read_to_string(crate::harness::manifest_dir().join("docs/providers.md")).unwrap();
    let blocks: Vec<&str> = text.split("```yaml\n").skip(1).map(|rest| rest.split("```").next().unwrap()).collect();
    let variable = regex::Regex::new(r"\$\{([A-Za-z0-9_]+)\}").unwrap();
    let scheme = regex::Regex::new(r"scheme: ([a-z0-9-]+)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut shown = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let name = &scheme.captures(block).unwrap_or_else(|| panic!("block {i} names no scheme:\n{block}"))[1];
        let config = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&config, block).unwrap();
        let mut check = Command::new(crate::harness::bin());
        check.args(["check", "--config"]).arg(&config);
        for var in variable.captures_iter(block) {
            check.env(&var[1], if &var[1] == "SENDGRID_VERIFICATION_KEY" { SENDGRID_KEY } else { WHSEC });
        }
        let out = check.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "docs/providers.md: the {name} block does not pass `check`:\n{stderr}\n{block}");
        assert!(stderr.is_empty(), "docs/providers.md: `check` warns about the {name} block:\n{stderr}");
        if let Some(preset) = PRESETS.iter().find(|p| p.name == name) {
            let dedupe = match preset.event_id {
                Some(Field::Header(h)) => Some(format!("dedupe: {{ header: {h} }}")),
                Some(Field::Path(p)) => Some(format!("dedupe: {{ path: {p} }}")),
                None => None,
            };
            match dedupe {
                Some(d) => assert!(
                    block.to_lowercase().contains(&d.to_lowercase()),
                    "docs/providers.md: the {name} block should have `{d}`:\n{block}"
                ),
                None => assert!(!block.contains("dedupe:"), "{name} names no event id, yet its block dedupes"),
            }
        }
        shown.push(name.to_string());
    }
    let presets: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
    assert_eq!(shown, presets, "docs/providers.md: one block per preset, in catalogue order");
    // the summary table: `| [`github`](#…) | … | tolerance | …`
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("| [`"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let listed: Vec<&str> = rows.iter().map(|r| r[0].split('`').nth(1).unwrap()).collect();
    assert_eq!(listed, presets, "docs/providers.md: the table lists every preset, in catalogue order");
    for (row, preset) in rows.iter().zip(PRESETS) {
        let tolerance = preset.tolerance.map_or("—".to_string(), |s| format!("{s} s"));
        assert_eq!(row[4], tolerance, "docs/providers.md: the tolerance of {}", preset.name);
    }
}
