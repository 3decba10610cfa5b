//! GitHub push → chat message. Turns a `push` webhook into `{"text": "...", "channel": "..."}`
//! for a chat incoming-webhook. Config: `channel` (required), `max_commits` (default 5).
//! Other GitHub events (and branch deletions) are dropped.

use hookyard_plugin_sdk::prelude::*;

struct GithubChat;

impl Plugin for GithubChat {
    fn transform(event: Event) -> Result<Outcome> {
        if event.header("X-GitHub-Event").is_some_and(|e| e != "push") {
            return Ok(Outcome::drop("not a push"));
        }
        let channel = config::require("channel")?;
        let max: usize = config::get("max_commits").and_then(|v| v.parse().ok()).unwrap_or(5);
        let push = event.json()?;
        if push["deleted"] == true {
            return Ok(Outcome::drop("branch deleted"));
        }
        let str_at = |v: &Value| v.as_str().unwrap_or("?").to_string();
        let repo = str_at(&push["repository"]["full_name"]);
        let branch = push["ref"].as_str().unwrap_or("?").trim_start_matches("refs/heads/").to_string();
        let who = str_at(&push["pusher"]["name"]);
        let commits = push["commits"].as_array().map(Vec::as_slice).unwrap_or_default();
        let plural = if commits.len() == 1 { "" } else { "s" };
        let mut text = format!("{who} pushed {} commit{plural} to {repo} ({branch})", commits.len());
        for c in commits.iter().take(max) {
            let id: String = c["id"].as_str().unwrap_or("").chars().take(7).collect();
            let title = c["message"].as_str().unwrap_or("").lines().next().unwrap_or("");
            text.push_str(&format!("\n• {id} {title} ({})", str_at(&c["author"]["name"])));
        }
        if commits.len() > max {
            text.push_str(&format!("\n… and {} more", commits.len() - max));
        }
        if let Some(url) = push["compare"].as_str() {
            text.push_str(&format!("\n{url}"));
        }
        log::debug(&format!("formatted {} commits for {repo}", commits.len()));
        Ok(Outcome::one(Output::json(&json!({ "text": text, "channel": channel }))))
    }
}

hookyard_plugin_sdk::export!(GithubChat);
