//! TEMPORARY STUB (replaced by the real module).
#![allow(dead_code, unused_variables)]
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    pub header: Option<String>,
    pub path: Option<String>,
    pub equals: Option<serde_json::Value>,
}
pub struct Rule;
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError { pub path: String, pub message: String }
pub fn compile(conditions: &[ConditionConfig]) -> Result<Rule, Vec<RuleError>> { Ok(Rule) }
pub struct EventView<'a> { pub headers: &'a http::HeaderMap, pub body: Option<&'a serde_json::Value> }
impl Rule {
    pub fn matches(&self, event: &EventView<'_>) -> bool { true }
    pub fn needs_body(&self) -> bool { false }
}
