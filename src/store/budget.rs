//! The bound on the bytes of outcomes waiting to be committed, shared by
//! every sender of one store, so a client sending large messages fast cannot
//! grow the server's memory: past the budget it waits (backpressure), as it
//! does for a full queue.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::model::Outcome;

/// Bytes of outcomes that may wait in the queue or in the writer at once.
pub const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// The budget is counted in KiB, which fits a semaphore's `u32` permits.
const BUDGET_UNIT: usize = 1024;

/// The queued-bytes budget shared by every sender.
#[derive(Clone)]
pub struct ByteBudget(Arc<Semaphore>);

/// A share of the [`ByteBudget`], released when dropped.
pub struct QueuedBytes {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Default for ByteBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl ByteBudget {
    /// A budget of [`MAX_QUEUED_BYTES`].
    pub fn new() -> Self {
        ByteBudget(Arc::new(Semaphore::new(MAX_QUEUED_BYTES / BUDGET_UNIT)))
    }

    /// Waits until `outcomes` fit in the budget and takes their share; a
    /// batch larger than the whole budget takes all of it.
    pub async fn take(&self, outcomes: &[Outcome]) -> QueuedBytes {
        let bytes: usize = outcomes.iter().map(Outcome::approximate_size).sum();
        let units = bytes
            .div_ceil(BUDGET_UNIT)
            .clamp(1, MAX_QUEUED_BYTES / BUDGET_UNIT);
        // The semaphore is never closed, so acquiring only fails if it were.
        let permit = self.0.clone().acquire_many_owned(units as u32).await.ok();
        QueuedBytes { _permit: permit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TestOutcome;
    use std::time::Duration;

    fn batch(outcomes: usize, longrepr_bytes: usize) -> Vec<Outcome> {
        (1..=outcomes as u64)
            .map(|seq| {
                let mut o = Outcome::new(seq, format!("t.py::test_{seq}"), TestOutcome::Failed);
                o.longrepr = "x".repeat(longrepr_bytes);
                o
            })
            .collect()
    }

    #[tokio::test]
    async fn a_sender_past_the_byte_budget_waits_until_the_writer_frees_it() {
        let budget = ByteBudget::new();
        // Three quarters of the budget, then a second batch that does not fit.
        let first = budget.take(&batch(3, MAX_QUEUED_BYTES / 4)).await;
        let second = batch(2, MAX_QUEUED_BYTES / 4);
        let waiting = tokio::time::timeout(Duration::from_millis(100), budget.take(&second)).await;
        assert!(
            waiting.is_err(),
            "the second batch did not wait for the budget"
        );
        // Small batches still fit in the quarter that is left.
        let small =
            tokio::time::timeout(Duration::from_secs(5), budget.take(&batch(10, 100))).await;
        assert!(small.is_ok(), "a small batch waited although it fits");
        drop(first);
        let freed = tokio::time::timeout(Duration::from_secs(5), budget.take(&second)).await;
        assert!(
            freed.is_ok(),
            "the second batch still waits after the first was freed"
        );
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_whole_budget_takes_all_of_it_instead_of_waiting_forever() {
        let budget = ByteBudget::new();
        let huge = batch(4, MAX_QUEUED_BYTES / 2);
        let taken = tokio::time::timeout(Duration::from_secs(5), budget.take(&huge)).await;
        assert!(taken.is_ok());
    }
}
