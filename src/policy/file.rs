//! The policy file: PolicyLayer's `policy.json` format, parsed strictly.
//!
//! Unknown keys, unknown tools, bad windows and negative maxima are errors
//! that name their place in the file (`tools.NAME.limits[0].window`), so a
//! typo cannot silently weaken a policy. What is accepted:
//!
//! ```json
//! {
//!   "version": "1",
//!   "default": "deny",
//!   "hide": ["get_session"],
//!   "all_tools": { "limits": [] },
//!   "tools": {
//!     "record_session_finish": {
//!       "action": "allow",
//!       "reason": "shown when the tool is denied",
//!       "limits": [{ "counter": "finish_rate", "window": "minute", "max": 30, "scope": "grant" }]
//!     }
//!   }
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// Whether a tool may be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The tool is listed and may be called (within its limits).
    Allow,
    /// The tool is left out of `tools/list` and every call is refused.
    Deny,
}

/// The length of a rate-limit window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (24 hours).
    Day,
}

impl Window {
    /// The window's length in microseconds.
    pub fn micros(self) -> i64 {
        const SECOND: i64 = 1_000_000;
        match self {
            Window::Second => SECOND,
            Window::Minute => 60 * SECOND,
            Window::Hour => 3600 * SECOND,
            Window::Day => 86_400 * SECOND,
        }
    }

    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }
}

/// Whom a limit's counter counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One counter per grant: per token when tokens are configured, else
    /// per MCP session the server issued, or per transport (`stdio`, and
    /// `http` for every stateless HTTP caller).
    #[default]
    Grant,
    /// One counter for every caller of this server process.
    Global,
}

/// One rate limit: at most `max` counted calls per `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The counter's name; tools naming the same counter are counted together.
    pub counter: String,
    /// The window length.
    pub window: Window,
    /// Calls allowed per window.
    pub max: u64,
    /// Per grant or global.
    pub scope: Scope,
}

/// What the policy says about one tool named under `tools`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRule {
    /// Allowed or denied.
    pub action: Action,
    /// Told to the caller when the tool is denied.
    pub reason: Option<String>,
    /// Limits counted on every allowed call.
    pub limits: Vec<Limit>,
}

/// A parsed and checked policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// For tools not named under `tools`.
    pub default: Action,
    /// Tools left out of `tools/list` and refused, whatever else is said.
    pub hide: BTreeSet<String>,
    /// `hide: ["*"]`: every tool is hidden.
    pub hide_all: bool,
    /// Limits counted on every call of every tool.
    pub all_tools_limits: Vec<Limit>,
    /// Per-tool rules.
    pub tools: BTreeMap<String, ToolRule>,
}

impl Policy {
    /// No file: everything is allowed and nothing is counted.
    pub fn allow_all() -> Self {
        Self {
            default: Action::Allow,
            hide: BTreeSet::new(),
            hide_all: false,
            all_tools_limits: Vec::new(),
            tools: BTreeMap::new(),
        }
    }

    /// Parses and checks `text` against the server's `known_tools`.
    pub fn parse(text: &str, known_tools: &[String]) -> Result<Policy, PolicyError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let raw: RawPolicy = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            PolicyError {
                place: if path == "." { String::new() } else { path },
                message: e.into_inner().to_string(),
            }
        })?;
        raw.check(known_tools)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path, known_tools: &[String]) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            place: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::parse(&text, known_tools)
    }

    /// Whether `tool` may be called at all; the reason when not.
    pub fn verdict(&self, tool: &str) -> Result<(), String> {
        if self.hide_all || self.hide.contains(tool) {
            return Err(format!("the policy hides {tool}"));
        }
        match self.tools.get(tool) {
            Some(rule) if rule.action == Action::Allow => Ok(()),
            Some(rule) => Err(rule
                .reason
                .clone()
                .unwrap_or_else(|| format!("the policy denies {tool}"))),
            None if self.default == Action::Allow => Ok(()),
            None => Err(format!(
                "the policy denies {tool} (default: deny, and the tool is not listed)"
            )),
        }
    }

    /// Every limit a call of `tool` counts against.
    pub fn limits_for<'a>(&'a self, tool: &str) -> impl Iterator<Item = &'a Limit> + 'a {
        let own = self.tools.get(tool).map(|r| r.limits.as_slice());
        self.all_tools_limits
            .iter()
            .chain(own.unwrap_or_default().iter())
    }
}

/// A policy file that cannot be used, with the place in it that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// Where, e.g. `tools.record_session_finish.limits[0].window`; empty for the whole file.
    pub place: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.place, self.message)
        }
    }
}

fn error(place: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        place: place.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: String,
    default: Action,
    #[serde(default)]
    hide: Vec<String>,
    #[serde(default)]
    all_tools: Option<RawAllTools>,
    #[serde(default)]
    tools: BTreeMap<String, RawTool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllTools {
    #[serde(default)]
    limits: Vec<RawLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    limits: Vec<RawLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    counter: String,
    window: Window,
    max: u64,
    #[serde(default)]
    scope: Scope,
}

impl RawPolicy {
    fn check(self, known_tools: &[String]) -> Result<Policy, PolicyError> {
        if self.version != "1" {
            return Err(error(
                "version",
                format!(
                    "{:?} is not a version this server knows; write \"1\"",
                    self.version
                ),
            ));
        }
        let unknown = |place: String, name: &str| {
            error(
                place,
                format!(
                    "unknown tool {name:?}; the tools are: {}",
                    known_tools.join(", ")
                ),
            )
        };
        let mut hide_all = false;
        let mut hide = BTreeSet::new();
        for (i, name) in self.hide.iter().enumerate() {
            if name == "*" {
                hide_all = true;
            } else if known_tools.iter().any(|t| t == name) {
                hide.insert(name.clone());
            } else {
                return Err(unknown(format!("hide[{i}]"), name));
            }
        }
        // One counter has one window: its count means nothing otherwise.
        let mut windows: BTreeMap<String, (Window, String)> = BTreeMap::new();
        let mut limits = |raw: Vec<RawLimit>, at: &str| -> Result<Vec<Limit>, PolicyError> {
            let mut out = Vec::with_capacity(raw.len());
            for (i, l) in raw.into_iter().enumerate() {
                let place = format!("{at}.limits[{i}]");
                if l.counter.trim().is_empty() {
                    return Err(error(format!("{place}.counter"), "must not be empty"));
                }
                match windows.get(&l.counter) {
                    Some((w, first)) if *w != l.window => {
                        return Err(error(
                            format!("{place}.window"),
                            format!(
                                "counter {:?} has window {} at {first}; one counter has one window",
                                l.counter,
                                w.as_str()
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        windows.insert(l.counter.clone(), (l.window, place.clone()));
                    }
                }
                out.push(Limit {
                    counter: l.counter,
                    window: l.window,
                    max: l.max,
                    scope: l.scope,
                });
            }
            Ok(out)
        };
        let all_tools_limits = match self.all_tools {
            Some(all) => limits(all.limits, "all_tools")?,
            None => Vec::new(),
        };
        let mut tools = BTreeMap::new();
        for (name, rule) in self.tools {
            if !known_tools.contains(&name) {
                return Err(unknown(format!("tools.{name}"), &name));
            }
            let rule = ToolRule {
                // Listing a tool allows it, as in PolicyLayer: under
                // `default: deny`, `"tool": {}` opens that one tool.
                action: rule.action.unwrap_or(Action::Allow),
                reason: rule.reason,
                limits: limits(rule.limits, &format!("tools.{name}"))?,
            };
            tools.insert(name, rule);
        }
        Ok(Policy {
            default: self.default,
            hide,
            hide_all,
            all_tools_limits,
            tools,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The tools the test policies may name (the gate's tests use them too).
    pub(crate) fn tools() -> Vec<String> {
        [
            "get_session",
            "record_session_finish",
            "record_session_start",
            "record_test_outcome",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The policy file of the issue, which must load and behave as written.
    pub(crate) const ISSUE_EXAMPLE: &str = r#"{
      "version": "1",
      "default": "deny",
      "tools": {
        "record_session_finish": {
          "limits": [
            { "counter": "record_session_finish_rate", "window": "minute", "max": 30, "scope": "grant" }
          ]
        }
      }
    }"#;

    #[test]
    fn the_issue_example_allows_only_record_session_finish_with_one_limit() {
        let p = Policy::parse(ISSUE_EXAMPLE, &tools()).expect("parses");
        assert!(p.verdict("record_session_finish").is_ok());
        assert!(p.verdict("get_session").is_err());
        assert!(p.verdict("record_session_start").is_err());
        let limits: Vec<_> = p.limits_for("record_session_finish").collect();
        assert_eq!(
            limits,
            [&Limit {
                counter: "record_session_finish_rate".into(),
                window: Window::Minute,
                max: 30,
                scope: Scope::Grant,
            }]
        );
    }

    #[test]
    fn default_allow_with_a_denied_tool_gives_its_reason() {
        let p = Policy::parse(
            r#"{"version": "1", "default": "allow", "tools": {
                "record_session_start": {"action": "deny", "reason": "recording is read-only here"}}}"#,
            &tools(),
        )
        .expect("parses");
        assert!(p.verdict("get_session").is_ok());
        assert_eq!(
            p.verdict("record_session_start"),
            Err("recording is read-only here".into())
        );
    }

    #[test]
    fn hide_and_all_tools_limits_apply_to_every_tool() {
        let p = Policy::parse(
            r#"{"version": "1", "default": "allow", "hide": ["get_session"],
                "all_tools": {"limits": [{"counter": "all", "window": "day", "max": 5, "scope": "global"}]}}"#,
            &tools(),
        )
        .expect("parses");
        assert!(p.verdict("get_session").is_err());
        assert_eq!(p.limits_for("record_session_start").count(), 1);
        let all = Policy::parse(
            r#"{"version": "1", "default": "allow", "hide": ["*"]}"#,
            &tools(),
        )
        .expect("parses");
        assert!(all.verdict("record_session_start").is_err());
    }

    /// Each malformed file is refused with a message naming its place.
    #[test]
    fn each_malformed_policy_is_refused_naming_the_place() {
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"{"version": "1", "default": "deny", "tools": {"record_session_finish": {"limits": [
                    {"counter": "c", "window": "fortnight", "max": 3}]}}}"#,
                "tools.record_session_finish.limits[0].window",
                "unknown variant `fortnight`, expected one of `second`, `minute`, `hour`, `day`",
            ),
            (
                r#"{"version": "1", "default": "deny", "tools": {"record_session_finish": {"limits": [
                    {"counter": "c", "window": "minute", "max": -1}]}}}"#,
                "tools.record_session_finish.limits[0].max",
                "invalid value: integer `-1`",
            ),
            (
                r#"{"version": "1", "default": "deny", "tools": {"record_sesion_finish": {}}}"#,
                "tools.record_sesion_finish",
                "unknown tool \"record_sesion_finish\"",
            ),
            (
                r#"{"version": "1", "default": "deny", "rules": {}}"#,
                "rules",
                "unknown field `rules`",
            ),
            (
                r#"{"version": "1", "default": "deny", "tools": {"get_session": {"actoin": "deny"}}}"#,
                "tools.get_session.actoin",
                "unknown field `actoin`",
            ),
            (
                r#"{"version": "1", "default": "maybe"}"#,
                "default",
                "unknown variant `maybe`",
            ),
            (
                r#"{"version": "2", "default": "deny"}"#,
                "version",
                "\"2\" is not a version",
            ),
            (r#"{"default": "deny"}"#, "", "missing field `version`"),
            (
                r#"{"version": "1", "default": "deny", "tools": {"get_session": {"limits": [
                    {"counter": "c", "window": "minute", "max": 3, "scope": "everyone"}]}}}"#,
                "tools.get_session.limits[0].scope",
                "unknown variant `everyone`, expected `grant` or `global`",
            ),
            (
                r#"{"version": "1", "default": "deny", "tools": {"get_session": {"limits": [
                    {"counter": "c", "window": "minute", "max": 3, "per": "grant"}]}}}"#,
                "tools.get_session.limits[0].per",
                "unknown field `per`",
            ),
            (
                r#"{"version": "1", "default": "deny", "tools": {
                    "get_session": {"limits": [{"counter": "c", "window": "minute", "max": 3}]},
                    "record_session_start": {"limits": [{"counter": "c", "window": "hour", "max": 3}]}}}"#,
                "tools.record_session_start.limits[0].window",
                "one counter has one window",
            ),
            (
                r#"{"version": "1", "default": "deny", "tools": {"get_session": {"limits": [
                    {"counter": " ", "window": "minute", "max": 3}]}}}"#,
                "tools.get_session.limits[0].counter",
                "must not be empty",
            ),
            (
                r#"{"version": "1", "default": "deny", "hide": ["nope"]}"#,
                "hide[0]",
                "unknown tool \"nope\"",
            ),
            (
                r#"{"version": "1", "default": "deny", "all_tools": {"limits": [{"window": "minute", "max": 3}]}}"#,
                "all_tools.limits[0]",
                "missing field `counter`",
            ),
            ("not json", "", "expected"),
        ];
        for (text, place, message) in cases {
            let err = Policy::parse(text, &tools()).expect_err(text);
            assert_eq!(&err.place, place, "{text}: {err}");
            assert!(err.message.contains(message), "{text}: {err}");
            if !place.is_empty() {
                assert!(err.to_string().starts_with(&format!("{place}: ")), "{err}");
            }
        }
    }
}
