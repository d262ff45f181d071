//! The answers of the three record tools of the original Node server.

use schemars::JsonSchema;
use serde::Serialize;

use super::SessionView;

/// Answer of `record_session_start`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionStartedView {
    /// The new session's id; pass it as `session_id` to the other record tools.
    pub session_id: String,
    /// The session.
    pub session: SessionView,
}

/// Answer of `record_test_outcome`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OutcomeRecordedView {
    /// The session it was appended to.
    pub session_id: String,
    /// The position it was stored at.
    pub seq: u64,
    /// The test.
    pub nodeid: String,
    /// The outcome.
    pub outcome: String,
}

/// Answer of `record_session_finish`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionFinishedView {
    /// The session finished.
    pub session_id: String,
    /// The session as stored.
    pub session: SessionView,
}
