//! Following a store's changes: when a reader of live data (an MCP
//! subscription or listen, a page's event stream) should look again. Soon
//! after this process commits something, the burst gathered for
//! [`COALESCE`] so that a fast run does not flood anyone; and every
//! [`POLL`], which also catches writes by another process sharing the
//! database.

use std::time::Duration;

use tokio::sync::broadcast;

use super::{Store, StoreEvent};

/// How long a burst of commits is gathered into one look.
pub const COALESCE: Duration = Duration::from_millis(200);

/// How often to look even without a commit of this process.
pub const POLL: Duration = Duration::from_secs(1);

/// When to look again; see the module docs.
pub struct Changes {
    events: broadcast::Receiver<StoreEvent>,
    poll: tokio::time::Interval,
}

impl Changes {
    /// Changes of `store` from now on.
    pub fn new(store: &Store) -> Self {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            events: store.subscribe(),
            poll,
        }
    }

    /// Waits for the next time to look: a poll tick, or a burst of commits
    /// that has settled for [`COALESCE`], so that a fast run does not flood
    /// the client. False once the store has shut down.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.poll.tick() => return true,
            event = self.events.recv() => {
                if matches!(event, Err(broadcast::error::RecvError::Closed)) {
                    return false;
                }
            }
        }
        let window = tokio::time::sleep(COALESCE);
        tokio::pin!(window);
        loop {
            tokio::select! {
                _ = &mut window => return true,
                more = self.events.recv() => {
                    if matches!(more, Err(broadcast::error::RecvError::Closed)) {
                        return false;
                    }
                }
            }
        }
    }
}
