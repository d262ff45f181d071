//! The audit trail: one row per MCP tool call, and per gated read of a
//! resource or prompt, stored by the backend like every other write, read
//! newest first.

use crate::model::Timestamp;

/// One MCP tool call as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The row's id (0 before it is stored); ids grow with time.
    pub id: u64,
    /// When the call arrived.
    pub at: Timestamp,
    /// The grant it was made under: a token's grant name, else
    /// `mcp-session:ID` (a session the server issued), `stdio` or `http`.
    pub grant: String,
    /// `stdio` or `http`.
    pub transport: String,
    /// The tool called; for a resource or a prompt, the MCP method
    /// (`resources/read`, `prompts/get`, …).
    pub tool: String,
    /// The gate's decision: `allowed`, `denied`, `limited`, or `unknown` (no such tool).
    pub decision: String,
    /// For an allowed call, `ok` or `error` (the tool's answer).
    pub result: Option<String>,
    /// Why a call was refused, or the error an allowed call answered; for a
    /// resource or a prompt, also what was read and as which tools.
    pub reason: Option<String>,
    /// Time from the call's arrival to its answer, in microseconds.
    pub duration_us: u64,
}

/// Longest reason (and tool name) kept, in bytes; a tool error can quote a
/// large argument, and an unknown tool's name is whatever the client sent.
const MAX_REASON_BYTES: usize = 1000;

/// The part of a reason that is kept: at most [`MAX_REASON_BYTES`], cut on a
/// character boundary.
pub fn bounded(text: &str) -> &str {
    if text.len() <= MAX_REASON_BYTES {
        return text;
    }
    let mut end = MAX_REASON_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Environment, Source};
    use crate::store::{Store, StoreConfig};

    #[tokio::test]
    async fn audit_rows_come_back_newest_first_and_sessions_keep_their_grant() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let store = Store::open(StoreConfig::new(dir.path().join("a.db"))).await?;
        for (i, decision) in ["allowed", "limited", "denied"].into_iter().enumerate() {
            store
                .record_audit(AuditEntry {
                    id: 0,
                    at: Timestamp(1_000 + i as i64),
                    grant: "alice".into(),
                    transport: "http".into(),
                    // An unknown tool's name is whatever the client sent.
                    tool: if decision == "denied" {
                        "x".repeat(1_000_000)
                    } else {
                        "record_session_finish".into()
                    },
                    decision: decision.into(),
                    result: (decision == "allowed").then(|| "ok".into()),
                    reason: (decision != "allowed").then(|| "é".repeat(2000)),
                    duration_us: 42,
                })
                .await?;
        }
        let rows = store.recent_audit(2).await?;
        let decisions: Vec<&str> = rows.iter().map(|r| r.decision.as_str()).collect();
        assert_eq!(decisions, ["denied", "limited"]);
        assert_eq!(rows[0].at, Timestamp(1_002));
        // Long reasons are cut on a character boundary.
        assert!(rows[0].reason.as_ref().is_some_and(|r| r.len() <= 1000));
        assert_eq!(rows[0].tool.len(), 1000);
        assert_eq!(rows[1].tool, "record_session_finish");

        let tagged = uuid::Uuid::new_v4();
        let untagged = uuid::Uuid::new_v4();
        let env = Environment {
            os: "Linux".into(),
            python_version: "3.12".into(),
            ..Default::default()
        };
        store
            .start_session_as(tagged, Source::Plugin, env.clone(), None, Some("ci".into()))
            .await?;
        // A retry under another grant keeps the first tag.
        store
            .start_session_as(tagged, Source::Plugin, env.clone(), None, Some("x".into()))
            .await?;
        store
            .start_session(untagged, Source::Plugin, env, None)
            .await?;
        assert_eq!(store.session_grant(tagged).await?, Some("ci".into()));
        assert_eq!(store.session_grant(untagged).await?, None);
        store.shutdown().await;
        Ok(())
    }
}
