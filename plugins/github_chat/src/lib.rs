//! GitHub push → chat message. Turns a `push` webhook into `{"text": "...", "channel": "..."}`
//! for a chat incoming-webhook. Config: `channel` (required), `max_commits` (default 5).
//! Other GitHub events (and branch deletions) are dropped.
//!
//! Reads the few fields it needs into borrowed structs ([`hookyard_plugin_sdk::loose`]) rather
//! than building the whole body as a `Value`: the same result, in well under half the guest time.

use std::fmt::Write;

use hookyard_plugin_sdk::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Push<'a> {
    #[serde(rename = "ref", borrow)]
    git_ref: Str<'a>,
    deleted: IsTrue,
    #[serde(borrow)]
    repository: Obj<Repository<'a>>,
    #[serde(borrow)]
    pusher: Obj<Person<'a>>,
    #[serde(borrow)]
    commits: List<Obj<Commit<'a>>>,
    #[serde(borrow)]
    compare: Str<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Repository<'a> {
    #[serde(borrow)]
    full_name: Str<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Person<'a> {
    #[serde(borrow)]
    name: Str<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Commit<'a> {
    #[serde(borrow)]
    id: Str<'a>,
    #[serde(borrow)]
    message: Str<'a>,
    #[serde(borrow)]
    author: Obj<Person<'a>>,
}

/// The chat message, serialized as it is rather than through a `Value` (same bytes: a `Value`
/// orders keys alphabetically).
#[derive(Serialize)]
struct Chat<'a> {
    channel: &'a str,
    text: &'a str,
}

struct GithubChat;

impl Plugin for GithubChat {
    fn transform(event: Event) -> Result<Outcome> {
        if event.header("X-GitHub-Event").is_some_and(|e| e != "push") {
            return Ok(Outcome::drop("not a push"));
        }
        let channel = config::require("channel")?;
        let max: usize = config::get("max_commits").and_then(|v| v.parse().ok()).unwrap_or(5);
        let push: Obj<Push> = event.json_as()?;
        if push.deleted.0 {
            return Ok(Outcome::drop("branch deleted"));
        }
        let repo = push.repository.full_name.as_str().unwrap_or("?");
        let branch = push.git_ref.as_str().unwrap_or("?").trim_start_matches("refs/heads/");
        let who = push.pusher.name.as_str().unwrap_or("?");
        let commits = &push.commits;
        let plural = if commits.len() == 1 { "" } else { "s" };
        // write! into one String: a format! per line would build and copy a String each
        let mut text = format!("{who} pushed {} commit{plural} to {repo} ({branch})", commits.len());
        for c in commits.iter().take(max) {
            let id = c.id.as_str().unwrap_or("");
            let short = id.char_indices().nth(7).map_or(id, |(end, _)| &id[..end]);
            let title = c.message.as_str().unwrap_or("").lines().next().unwrap_or("");
            let author = c.author.name.as_str().unwrap_or("?");
            let _ = write!(text, "\n• {short} {title} ({author})");
        }
        if commits.len() > max {
            let _ = write!(text, "\n… and {} more", commits.len() - max);
        }
        if let Some(url) = push.compare.as_str() {
            text.push('\n');
            text.push_str(url);
        }
        log::debug(&format!("formatted {} commits for {repo}", commits.len()));
        Ok(Outcome::one(Output::json(&Chat { text: &text, channel })))
    }
}

hookyard_plugin_sdk::export!(GithubChat);
