//! Live push across replicas: one connection per replica listens on
//! [`CHANNEL`] and turns what every replica commits into [`StoreEvent`]s.
//!
//! A notification is tiny (`<session id> <status> <stored seq>`), sent
//! inside the committing transaction, so only committed changes are heard.
//! Bursts are coalesced: what has arrived by the time the listener looks is
//! reduced to the newest state of each session. After the connection is
//! lost (the database restarted), the listener reconnects, listens again,
//! and re-reads the watermarks of every session that is open or closed
//! since, announcing each that moved meanwhile: nothing is missed.

use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::schema::CHANNEL;
use crate::model::{SessionStatus, Timestamp};
use crate::store::StoreEvent;
use crate::store::location::PgUrl;

/// Most sessions whose last announced state is remembered.
const MAX_KNOWN: usize = 100_000;

/// Starts the listener; it runs until `stop`.
pub fn spawn(
    url: PgUrl,
    pool: deadpool_postgres::Pool,
    events: broadcast::Sender<StoreEvent>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut listener = Listener {
            url,
            pool,
            events,
            known: HashMap::new(),
            lost_at: None,
        };
        tokio::select! {
            _ = listener.run() => {}
            _ = stop.cancelled() => {}
        }
    });
}

struct Listener {
    url: PgUrl,
    pool: deadpool_postgres::Pool,
    events: broadcast::Sender<StoreEvent>,
    /// The last state announced of each session.
    known: HashMap<Uuid, (SessionStatus, u64)>,
    /// When the connection was lost, if it was.
    lost_at: Option<Timestamp>,
}

/// Parses a notification's payload.
fn parse(payload: &str) -> Option<StoreEvent> {
    let mut parts = payload.split(' ');
    let session = Uuid::parse_str(parts.next()?).ok()?;
    let status = parts.next()?.parse().ok()?;
    let outcomes_stored = parts.next()?.parse().ok()?;
    Some(StoreEvent {
        session,
        status,
        outcomes_stored,
    })
}

impl Listener {
    async fn run(&mut self) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.listen_once().await {
                Ok(()) => delay = Duration::from_millis(100),
                Err(e) => {
                    tracing::debug!(error = %e, "the change listener is not connected");
                }
            }
            if self.lost_at.is_none() {
                self.lost_at = Some(Timestamp::now());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Connects, listens, catches up, and forwards until the connection ends.
    async fn listen_once(&mut self) -> crate::error::Result<()> {
        let (tx, mut rx) = mpsc::unbounded_channel::<StoreEvent>();
        // Named apart from the pool's connections, for whoever reads
        // pg_stat_activity.
        let mut config = self.url.config.clone();
        let name = config.get_application_name().unwrap_or("pytest-mcp");
        config.application_name(format!("{name} (listen)"));
        let client = match super::tls_connector(&self.url)? {
            Some(tls) => connect(&config, tls, tx).await?,
            None => connect(&config, tokio_postgres::NoTls, tx).await?,
        };
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        if let Some(lost) = self.lost_at.take() {
            // Listening again: announce what moved while nobody listened.
            if let Err(e) = self.catch_up(lost).await {
                tracing::warn!(error = %e, "re-reading sessions after reconnecting");
            }
        }
        let every = Duration::from_secs(5);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                first = rx.recv() => {
                    let Some(first) = first else { break };
                    let mut latest: HashMap<Uuid, StoreEvent> = HashMap::new();
                    latest.insert(first.session, first);
                    while let Ok(more) = rx.try_recv() {
                        let slot = latest.entry(more.session).or_insert(more);
                        if more.outcomes_stored >= slot.outcomes_stored {
                            *slot = more;
                        }
                    }
                    for event in latest.into_values() {
                        self.announce(event);
                    }
                }
                _ = ping.tick() => {
                    // A dead connection is noticed even when nothing is sent.
                    if client.simple_query("").await.is_err() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Announces `event` unless it is what was announced last for its session.
    fn announce(&mut self, event: StoreEvent) {
        let state = (event.status, event.outcomes_stored);
        if self.known.get(&event.session) == Some(&state) {
            return;
        }
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        if event.status.is_closed() {
            self.known.remove(&event.session);
        } else {
            self.known.insert(event.session, state);
        }
        let _ = self.events.send(event);
    }

    /// Announces every session that is open, or closed since `lost` (with a
    /// margin for clocks), as it is now.
    async fn catch_up(&mut self, lost: Timestamp) -> crate::error::Result<()> {
        let since = lost.as_micros() - 60_000_000;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, status, outcomes_stored FROM sessions
                 WHERE status IN ('running', 'incomplete') OR finished_at >= $1
                    OR started_at >= $1",
                &[&since],
            )
            .await?;
        for r in rows {
            let status: String = r.get(1);
            let Ok(status) = status.parse::<SessionStatus>() else {
                continue;
            };
            self.announce(StoreEvent {
                session: r.get(0),
                status,
                outcomes_stored: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            });
        }
        Ok(())
    }
}

/// Connects, and drives the connection on a task of its own that sends
/// every notification heard to `tx`; `tx` closes when the connection ends.
async fn connect<T>(
    config: &tokio_postgres::Config,
    tls: T,
    tx: mpsc::UnboundedSender<StoreEvent>,
) -> crate::error::Result<tokio_postgres::Client>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            forward(m, &tx);
        }
    });
    Ok(client)
}

fn forward(message: AsyncMessage, tx: &mpsc::UnboundedSender<StoreEvent>) {
    if let AsyncMessage::Notification(n) = message
        && n.channel() == CHANNEL
        && let Some(event) = parse(n.payload())
    {
        let _ = tx.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_the_session_its_status_and_watermark() {
        let id = Uuid::new_v4();
        let e = parse(&format!("{id} running 42")).expect("parses");
        assert_eq!(
            (e.session, e.status, e.outcomes_stored),
            (id, SessionStatus::Running, 42)
        );
        assert!(parse("nonsense").is_none());
    }
}
