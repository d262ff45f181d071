//! Call counters kept in the database, shared by every process on it (the
//! policy gate's limits, on PostgreSQL): what a counter is and the shape of
//! the update that runs on them.
//!
//! The store only keeps and locks the counters; what a count means (which
//! call is allowed, when a window resets) is the policy gate's rule, handed
//! in as an [`Update`] that runs inside the transaction holding their locks.
//! So the policy depends on the store and not the other way round.

use std::collections::HashMap;
use std::sync::Arc;

/// A counter: its name, and the grant it counts for (`None`: every grant).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The counter's name in the policy.
    pub counter: String,
    /// `None` for a global counter.
    pub grant: Option<String>,
}

/// A counter's current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// When the window opened, in microseconds since the Unix epoch.
    pub start: i64,
    /// Its length in microseconds.
    pub length: i64,
    /// Calls counted in it.
    pub calls: u64,
}

impl Count {
    /// When the window closes, in microseconds since the Unix epoch.
    pub fn ends(&self) -> i64 {
        self.start.saturating_add(self.length)
    }
}

/// Reads and updates the counters a call falls under (absent ones are new),
/// inside the transaction that holds their locks. It may run more than once
/// when the transaction is retried; the last run is the one committed.
pub type Update = Arc<dyn Fn(&mut HashMap<Key, Count>) + Send + Sync>;
