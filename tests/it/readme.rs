//! The README is the front door: its full `routes.yaml` reference must be a valid config, and every
//! command its table documents must exist with the flags it shows.

use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(crate::harness::manifest_dir().join("README.md")).expect("README.md")
}

/// The first ```yaml block after the "routes.yaml reference" heading.
fn reference_yaml(text: &str) -> String {
    let section = text.split("## `routes.yaml` reference").nth(1).expect("reference section");
    let block = section.split("```yaml\n").nth(1).expect("yaml block");
    block.split("```").next().unwrap().to_string()
}

#[test]
fn the_reference_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, reference_yaml(&readme())).unwrap();
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
    assert!(out.status.success(), "the README's reference config does not pass `check`:\n{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok — 2 sources, 1 destinations, 1 routes"));
}

#[test]
fn every_documented_command_exists_with_its_flags() {
    let text = readme();
    let table = text.split("## Commands").nth(1).unwrap().split("\n## ").next().unwrap();
    let mut checked = 0;
    for line in table.lines().filter(|l| l.starts_with("| `hookyard ")) {
        let usage = line.split('`').nth(1).unwrap();
        let words: Vec<&str> = usage.split_whitespace().collect();
        // `hookyard plugin test …`: a lower-case word after the command is a subcommand
        let sub = words.get(2).filter(|w| w.bytes().all(|b| b.is_ascii_lowercase()));
        let command: Vec<&str> = std::iter::once(words[1]).chain(sub.copied()).collect();
        let command = command.join(" ");
        let help = Command::new(crate::harness::bin()).args(command.split(' ')).arg("--help").output().unwrap();
        assert!(help.status.success(), "`hookyard {command} --help` failed");
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in words.iter().filter_map(|w| w.trim_start_matches(['[', '(']).strip_prefix("--")) {
            let flag = flag.split(['=', ']', ')', ' ']).next().unwrap();
            assert!(
                help.contains(&format!("--{flag}")),
                "`hookyard {command}` has no --{flag}, yet the README documents it"
            );
        }
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} commands found in the README table");
}

/// "Every command but `receive` and `plugin test` takes `--config`": each command's help agrees,
/// and `plugin test` names its plugin settings `--plugin-config`.
#[test]
fn the_commands_that_take_config_are_the_documented_ones() {
    let text = readme();
    let exceptions = text
        .split("Every command but ")
        .nth(1)
        .and_then(|rest| rest.split(" takes `--config`").next())
        .expect("the sentence naming the commands without --config");
    let exceptions: Vec<&str> = exceptions.split('`').skip(1).step_by(2).collect();
    assert_eq!(exceptions, ["receive", "plugin test"]);
    let commands = [
        "run",
        "check",
        "dry-run",
        "send",
        "receive",
        "events",
        "event",
        "replay",
        "pause",
        "resume",
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
