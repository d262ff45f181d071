//! The gRPC front end: the `pytest_mcp.v1.Recorder` service, standard health
//! checking and server reflection (v1 and v1alpha), on one listener.
//!
//! Handlers are thin: validate and convert (see [`convert`]), call the store,
//! convert back. `StreamOutcomes` pipelines: it reads the next batch while
//! earlier ones commit, and sends acks strictly in order, each only after its
//! batch is on disk.

pub mod convert;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::auth::{Grant, Tokens};
use crate::error::Error;
use crate::model::{SessionRef, SessionStatus, Timestamp, parse_session_id};
use crate::store::{OutcomeFilter, SessionFilter, Store};
use crate::views::{DefaultProject, Scope};

/// Generated protobuf types and service traits for `pytest_mcp.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("pytest_mcp.v1");
}

/// The encoded descriptor set of `proto/`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pytest_mcp_descriptor.bin"));

/// Largest message the server accepts, in bytes; larger ones get RESOURCE_EXHAUSTED.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Batches of one stream that may be committing at once before the stream
/// stops reading (backpressure to the client).
const IN_FLIGHT_BATCHES: usize = 16;

/// Outcomes sent per page when a watcher catches up from the store.
const WATCH_PAGE: usize = 1000;

/// The Recorder service.
#[derive(Clone)]
pub struct RecorderService {
    store: Store,
    shutdown: CancellationToken,
}

impl RecorderService {
    /// A service over `store`; open streams end when `shutdown` is cancelled.
    pub fn new(store: Store, shutdown: CancellationToken) -> Self {
        Self { store, shutdown }
    }

    /// The project a read names (an unknown one is NOT_FOUND naming the
    /// ones there are), else the most recently active one.
    async fn scope(&self, project: Option<&str>) -> Result<Scope, Error> {
        Scope::resolve(&self.store, project, &DefaultProject::MostRecent).await
    }

    /// A session argument, `latest` of `project` when one is named (the
    /// newest of any project when not), with the scope it was read in.
    async fn session_ref(
        &self,
        text: &str,
        project: String,
    ) -> Result<(SessionRef, Option<Scope>), Error> {
        let session = SessionRef::parse(text, "session_id")?;
        // An id names the same session in every project.
        let latest = matches!(session, SessionRef::Latest(_));
        match opt(project).filter(|_| latest) {
            Some(name) => {
                let scope = self.scope(Some(&name)).await?;
                Ok((session.scoped(&scope.project), Some(scope)))
            }
            None => Ok((session, None)),
        }
    }

    /// The newest session of `project` (any project when empty), which need
    /// not have a session yet: what a watch for the next session waits on.
    async fn latest_of(&self, project: String) -> Result<SessionRef, Error> {
        match opt(project) {
            Some(name) => {
                let scope = Scope::resolve(&self.store, None, &DefaultProject::Named(name)).await?;
                Ok(SessionRef::Latest(Some(scope.project)))
            }
            None => Ok(SessionRef::Latest(None)),
        }
    }

    /// Waits for a session newer than `latest` names now, and returns it.
    async fn next_session(
        &self,
        latest: SessionRef,
        events: &mut broadcast::Receiver<crate::store::StoreEvent>,
    ) -> Result<crate::model::Session, Error> {
        let before = match self.store.get_session(latest.clone()).await {
            Ok(s) => Some(s.id),
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    return Err(Error::Unavailable("the server is shutting down".into()));
                }
                event = events.recv() => match event {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Error::Unavailable("the store closed".into()));
                    }
                },
            }
            match self.store.get_session(latest.clone()).await {
                Ok(s) if Some(s.id) != before => return Ok(s),
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Says which projects there are when `latest` of a named one finds nothing.
fn explain(scope: Option<&Scope>, e: Error) -> Error {
    match scope {
        Some(scope) => scope.explain(e),
        None => e,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn page_size(requested: u32, default: usize, max: usize) -> usize {
    match requested {
        0 => default,
        n => (n as usize).min(max),
    }
}

fn opt(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// What the ack task does next, in stream order.
enum Next {
    Ack(String, crate::store::backend::Fut<u64>),
    Fail(Status),
}

/// Converts the decoder's "message too large" into RESOURCE_EXHAUSTED, the
/// code gRPC uses for size limits.
fn stream_error(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        Status::resource_exhausted(format!(
            "request: message too large ({}); send smaller batches",
            status.message()
        ))
    } else {
        status
    }
}

#[tonic::async_trait]
impl pb::recorder_server::Recorder for RecorderService {
    async fn start_session(
        &self,
        request: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::StartSessionResponse>, Status> {
        let grant = request.extensions().get::<Grant>().map(|g| g.0.clone());
        let req = request.into_inner();
        let id = parse_session_id(&req.session_id, "session_id")?;
        let source = convert::source_from_pb(req.source, "source")?;
        let environment = convert::environment_from_pb(req.environment.unwrap_or_default())?;
        let started_at = req
            .started_at
            .as_ref()
            .map(|t| convert::timestamp_from_pb(t, "started_at"))
            .transpose()?;
        let session = self
            .store
            .start_session_as(id, source, environment, started_at, grant)
            .await?;
        Ok(Response::new(pb::StartSessionResponse {
            session: Some(convert::session_to_pb(&session)),
            keep_passing_output: self.store.keeps_passing_output(),
        }))
    }

    type StreamOutcomesStream = BoxStream<pb::StreamOutcomesResponse>;

    async fn stream_outcomes(
        &self,
        request: Request<Streaming<pb::StreamOutcomesRequest>>,
    ) -> Result<Response<Self::StreamOutcomesStream>, Status> {
        let mut inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(IN_FLIGHT_BATCHES);
        let (next_tx, mut next_rx) = mpsc::channel::<Next>(IN_FLIGHT_BATCHES);

        // Acks leave in the order batches arrived, each after its commit.
        tokio::spawn(async move {
            while let Some(next) = next_rx.recv().await {
                let item = match next {
                    Next::Ack(session_id, committed) => match committed.await {
                        Ok(acked_seq) => Ok(pb::StreamOutcomesResponse {
                            session_id,
                            acked_seq,
                        }),
                        Err(e) => Err(Status::from(e)),
                    },
                    Next::Fail(status) => Err(status),
                };
                let failed = item.is_err();
                if out_tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });

        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = next_tx
                            .send(Next::Fail(Status::unavailable(
                                "the server is shutting down; every acknowledged outcome is stored, resend the rest",
                            )))
                            .await;
                        break;
                    }
                    m = inbound.message() => m,
                };
                let request = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = next_tx.send(Next::Fail(stream_error(status))).await;
                        break;
                    }
                };
                let step = async {
                    let (id, outcomes, units) = convert_batch(request, &store)?;
                    let rx = store.enqueue_append(id, outcomes, units).await?;
                    Ok::<_, Error>(Next::Ack(id.to_string(), rx))
                };
                let next = step.await.unwrap_or_else(|e| Next::Fail(e.into()));
                let stop = matches!(next, Next::Fail(_));
                if next_tx.send(next).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn finish_session(
        &self,
        request: Request<pb::FinishSessionRequest>,
    ) -> Result<Response<pb::FinishSessionResponse>, Status> {
        let req = request.into_inner();
        let id = parse_session_id(&req.session_id, "session_id")?;
        let summary = convert::summary_from_pb(
            req.summary
                .ok_or_else(|| Error::invalid("summary", "is required"))?,
        );
        let finished_at = req
            .finished_at
            .as_ref()
            .map(|t| convert::timestamp_from_pb(t, "finished_at"))
            .transpose()?;
        let session = self
            .store
            .finish_session(id, summary, req.outcomes_sent, finished_at)
            .await?;
        Ok(Response::new(pb::FinishSessionResponse {
            session: Some(convert::session_to_pb(&session)),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let req = request.into_inner();
        let (session_ref, scope) = self.session_ref(&req.session_id, req.project).await?;
        let session = self
            .store
            .get_session(session_ref)
            .await
            .map_err(|e| explain(scope.as_ref(), e))?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(convert::session_to_pb(&session)),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let req = request.into_inner();
        let statuses = req
            .status
            .iter()
            .enumerate()
            .map(|(i, s)| convert::status_from_pb(*s, &format!("status[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        // Empty: a listing of every project's sessions, each naming its own.
        let project = match opt(req.project) {
            Some(name) => Some(self.scope(Some(&name)).await?.project),
            None => None,
        };
        let filter = SessionFilter { statuses, project };
        let page = self
            .store
            .list_sessions(
                filter,
                page_size(req.page_size, 50, 1000),
                opt(req.page_token),
            )
            .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.items.iter().map(convert::session_to_pb).collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn list_outcomes(
        &self,
        request: Request<pb::ListOutcomesRequest>,
    ) -> Result<Response<pb::ListOutcomesResponse>, Status> {
        let req = request.into_inner();
        let (session_ref, scope) = self.session_ref(&req.session_id, req.project).await?;
        let outcomes = req
            .outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| convert::test_outcome_from_pb(*o, &format!("outcomes[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let filter = OutcomeFilter {
            outcomes,
            nodeid_contains: opt(req.nodeid_contains),
        };
        let (session, page) = self
            .store
            .list_outcomes(
                session_ref,
                filter,
                page_size(req.page_size, 100, 10_000),
                opt(req.page_token),
            )
            .await
            .map_err(|e| explain(scope.as_ref(), e))?;
        let id = session.id.to_string();
        Ok(Response::new(pb::ListOutcomesResponse {
            outcomes: page
                .items
                .iter()
                .map(|o| convert::outcome_to_pb(&id, o))
                .collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn get_test_history(
        &self,
        request: Request<pb::GetTestHistoryRequest>,
    ) -> Result<Response<pb::GetTestHistoryResponse>, Status> {
        let req = request.into_inner();
        let scope = self.scope(opt(req.project).as_deref()).await?;
        let page = self
            .store
            .test_history(
                req.nodeid,
                &scope.project,
                page_size(req.page_size, 50, 1000),
                opt(req.page_token),
            )
            .await?;
        Ok(Response::new(pb::GetTestHistoryResponse {
            entries: page
                .items
                .iter()
                .map(|e| pb::TestHistoryEntry {
                    session: Some(convert::session_to_pb(&e.session)),
                    outcome: Some(convert::outcome_to_pb(
                        &e.session.id.to_string(),
                        &e.outcome,
                    )),
                })
                .collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    type WatchSessionStream = BoxStream<pb::WatchSessionResponse>;

    async fn list_quarantine(
        &self,
        request: Request<pb::ListQuarantineRequest>,
    ) -> Result<Response<pb::ListQuarantineResponse>, Status> {
        let req = request.into_inner();
        let project = opt(req.project);
        let entries = self
            .store
            .quarantine_list(project.as_deref(), false, Timestamp::now())
            .await?;
        Ok(Response::new(pb::ListQuarantineResponse {
            entries: entries.iter().map(convert::quarantine_to_pb).collect(),
        }))
    }

    async fn get_dependencies(
        &self,
        request: Request<pb::GetDependenciesRequest>,
    ) -> Result<Response<pb::GetDependenciesResponse>, Status> {
        let req = request.into_inner();
        let scope = self.scope(opt(req.project).as_deref()).await?;
        let snapshot = self.store.deps_snapshot(&scope.project).await?;
        let mut units: Vec<pb::UnitRef> = snapshot
            .units
            .iter()
            .map(|u| pb::UnitRef {
                kind: convert::unit_kind_to_pb(u.kind) as i32,
                path: u.path.clone(),
                name: u.name.clone(),
                checksum: u.checksum.clone(),
            })
            .collect();
        units.sort_by(|a, b| {
            (a.kind, &a.path, &a.name, &a.checksum).cmp(&(b.kind, &b.path, &b.name, &b.checksum))
        });
        units.dedup();
        Ok(Response::new(pb::GetDependenciesResponse {
            units,
            watched_files: snapshot
                .watched_files
                .iter()
                .map(|(path, checksum)| pb::UnitRef {
                    kind: pb::UnitKind::File as i32,
                    path: path.clone(),
                    name: String::new(),
                    checksum: checksum.clone(),
                })
                .collect(),
            project: snapshot.project.clone(),
        }))
    }

    async fn select_affected(
        &self,
        request: Request<pb::SelectAffectedRequest>,
    ) -> Result<Response<pb::SelectAffectedResponse>, Status> {
        let req = request.into_inner();
        let scope = self.scope(opt(req.project).as_deref()).await?;
        let change = convert::change_from_pb(req.change)?;
        let described = change.describe().to_string();
        let select = crate::store::affected::SelectRequest {
            change: Some(change),
            collected: (!req.collected.is_empty()).then_some(req.collected),
            watch: req.watch,
        };
        let (snapshot, selection) = self.store.affected(&scope.project, &select).await?;
        let view = crate::views::AffectedView::new(&snapshot, &selection, described);
        Ok(Response::new(pb::SelectAffectedResponse {
            tests: selection
                .tests
                .into_iter()
                .map(|t| pb::AffectedTest {
                    nodeid: t.nodeid,
                    reason: t.reason,
                })
                .collect(),
            total: selection.total,
            confidence: selection.confidence.as_str().to_string(),
            notes: selection.notes,
            command: view.command,
            all: selection.all,
            unselected: selection.unselected,
        }))
    }

    async fn watch_session(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        let req = request.into_inner();
        let next = req.session_id.trim().eq_ignore_ascii_case("next");
        // Subscribe before reading what is stored, so nothing committed in
        // between is missed.
        let mut events = self.store.subscribe();
        let session = if next {
            let latest = self.latest_of(req.project).await?;
            self.next_session(latest, &mut events).await?
        } else {
            let (session_ref, scope) = self.session_ref(&req.session_id, req.project).await?;
            self.store
                .get_session(session_ref)
                .await
                .map_err(|e| explain(scope.as_ref(), e))?
        };
        let (tx, rx) = mpsc::channel(64);
        let watcher = Watcher {
            store: self.store.clone(),
            tx,
            id: session.id,
            sent_seq: 0,
        };
        tokio::spawn(watcher.run(session, events, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Turns one stream message into a session id and validated outcomes.
/// One StreamOutcomes message as the store takes it: the session, its
/// outcomes and the code units it declares.
type Batch = (
    Uuid,
    Vec<crate::model::Outcome>,
    Vec<crate::model::CodeUnit>,
);

fn convert_batch(request: pb::StreamOutcomesRequest, store: &Store) -> Result<Batch, Error> {
    let id = parse_session_id(&request.session_id, "session_id")?;
    if request.outcomes.is_empty() {
        return Err(Error::invalid("outcomes", "must hold at least one outcome"));
    }
    let mut outcomes = Vec::with_capacity(request.outcomes.len());
    for (i, o) in request.outcomes.into_iter().enumerate() {
        if !o.session_id.is_empty() && o.session_id != request.session_id {
            return Err(Error::invalid(
                format!("outcomes[{i}].session_id"),
                format!(
                    "{:?} differs from the request's session_id {:?}; one message carries one session",
                    o.session_id, request.session_id
                ),
            ));
        }
        let outcome = convert::outcome_from_pb(o)
            .and_then(|mut o| store.prepare(&mut o).map(|()| o))
            .map_err(|e| e.within(format_args!("outcomes[{i}]")))?;
        if let Some(prev) = outcomes.last().map(|p: &crate::model::Outcome| p.seq)
            && outcome.seq <= prev
        {
            return Err(Error::invalid(
                format!("outcomes[{i}].seq"),
                format!(
                    "{} after {prev}; seqs in a message must increase",
                    outcome.seq
                ),
            ));
        }
        outcomes.push(outcome);
    }
    let units = request
        .units
        .into_iter()
        .enumerate()
        .map(|(i, u)| convert::unit_from_pb(u).map_err(|e| e.within(format_args!("units[{i}]"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((id, outcomes, units))
}

/// Sends one session's stored and new outcomes to a watcher.
struct Watcher {
    store: Store,
    tx: mpsc::Sender<Result<pb::WatchSessionResponse, Status>>,
    id: Uuid,
    sent_seq: u64,
}

fn watch_done(status: SessionStatus) -> bool {
    status != SessionStatus::Running
}

impl Watcher {
    async fn send(&self, event: pb::watch_session_response::Event) -> bool {
        self.tx
            .send(Ok(pb::WatchSessionResponse { event: Some(event) }))
            .await
            .is_ok()
    }

    /// Sends every stored outcome after the last one sent; false when the watcher left.
    async fn catch_up(&mut self) -> Result<bool, Error> {
        let id = self.id.to_string();
        loop {
            let page = self
                .store
                .outcomes_after(self.id, self.sent_seq, WATCH_PAGE)
                .await?;
            let n = page.len();
            for o in page {
                self.sent_seq = o.seq;
                let event =
                    pb::watch_session_response::Event::Outcome(convert::outcome_to_pb(&id, &o));
                if !self.send(event).await {
                    return Ok(false);
                }
            }
            if n < WATCH_PAGE {
                return Ok(true);
            }
        }
    }

    async fn run(
        mut self,
        session: crate::model::Session,
        mut events: broadcast::Receiver<crate::store::StoreEvent>,
        shutdown: CancellationToken,
    ) {
        let mut status = session.status;
        if !self
            .send(pb::watch_session_response::Event::Session(
                convert::session_to_pb(&session),
            ))
            .await
        {
            return;
        }
        if let Err(e) = self.watch(&mut status, &mut events, &shutdown).await {
            let _ = self.tx.send(Err(e.into())).await;
        }
    }

    async fn watch(
        &mut self,
        status: &mut SessionStatus,
        events: &mut broadcast::Receiver<crate::store::StoreEvent>,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let mut dirty = true;
        loop {
            if dirty {
                if !self.catch_up().await? {
                    return Ok(());
                }
                let now = self.store.get_session(SessionRef::Id(self.id)).await?;
                // Outcomes committed after the catch-up are sent before the
                // final status, so the stream is complete when it ends.
                if now.outcomes_stored > self.sent_seq && !self.catch_up().await? {
                    return Ok(());
                }
                if now.status != *status {
                    *status = now.status;
                    if !self
                        .send(pb::watch_session_response::Event::Session(
                            convert::session_to_pb(&now),
                        ))
                        .await
                    {
                        return Ok(());
                    }
                }
                if watch_done(*status) {
                    return Ok(());
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    return Err(Error::Unavailable("the server is shutting down; watch again to continue".into()));
                }
                _ = self.tx.closed() => return Ok(()),
                event = events.recv() => match event {
                    Ok(e) => dirty = e.session == self.id,
                    // Missed events: re-read the store, which is the truth.
                    Err(broadcast::error::RecvError::Lagged(_)) => dirty = true,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }
}

/// Checks a call's bearer token when tokens are configured, and puts the
/// grant it belongs to into the request's extensions.
#[derive(Clone)]
pub struct Authenticate {
    tokens: Option<Arc<Tokens>>,
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(request);
        };
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        match tokens.check(header) {
            Ok(grant) => {
                request.extensions_mut().insert(grant);
                Ok(request)
            }
            Err(refusal) => {
                tracing::debug!(?refusal, "refused an unauthenticated gRPC call");
                Err(Status::unauthenticated(refusal.message()))
            }
        }
    }
}

/// Bytes a client may send on one stream ahead of the handler reading them.
///
/// h2 closes a connection (GOAWAY `too_many_data_frames`) once the framing
/// overhead of small DATA frames it holds unread exceeds a budget of half
/// the connection window; each frame under 256 bytes counts 256 minus its
/// size. A plugin sends one outcome per message (about 60-100 bytes), and a
/// stream whose handler waits on a commit holds up to its window of them, so
/// with h2's 1 MiB windows a fast legitimate sender was cut off. The budget
/// still guards against floods: what a connection can hold unread is
/// bounded by its streams' windows (MAX_STREAMS_PER_CONNECTION times this,
/// 4 MiB), and the connection window is set so that this much of messages
/// of 52 bytes or more stays within the budget (CONNECTION_WINDOW / 2 =
/// 16 MiB of counted overhead, about 250 KiB per full stream of such
/// messages). Smaller frames than that on every stream at once are a flood,
/// and still get the GOAWAY.
const STREAM_WINDOW: u32 = 64 * 1024;

/// Streams one gRPC connection may have open at once (a plugin uses one).
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// The connection-level window: large enough that every stream's window of
/// small messages fits h2's budget (see [`STREAM_WINDOW`]); memory is
/// bounded by the stream windows, not by this.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Serves the Recorder, health and reflection on `listener` until `shutdown`
/// is cancelled; health turns NOT_SERVING first, open streams get their
/// final acks, then it returns.
///
/// With `tokens`, every Recorder rpc needs `authorization: Bearer <token>`.
/// Health checks and reflection stay open: a load balancer can probe the
/// server without a credential, and grpcurl can find the method it is asked
/// to call (and then show the Recorder's own UNAUTHENTICATED). They reveal
/// only whether the server is up and the API's shape, which is public in
/// `proto/`, never a recorded result.
///
/// `limits` bound its connections and how long a silent one is kept
/// ([`crate::conn`]).
pub async fn serve(
    listener: TcpListener,
    store: Store,
    tokens: Option<Arc<Tokens>>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    limits: crate::conn::Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let auth = Authenticate { tokens };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let service_name =
        <pb::recorder_server::RecorderServer<RecorderService> as tonic::server::NamedService>::NAME;
    health_reporter
        .set_service_status(service_name, tonic_health::ServingStatus::Serving)
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    // Both reflection versions, each listing every service (the other
    // version's included), so grpcurl 1.8 (v1alpha) and newer (v1) agree.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Health follows the database: NOT_SERVING while it does not answer
    // (a PostgreSQL server restarting), SERVING again once it does.
    tokio::spawn(follow_database(
        store.clone(),
        health_reporter.clone(),
        service_name,
        shutdown.clone(),
    ));

    let recorder =
        pb::recorder_server::RecorderServer::new(RecorderService::new(store, shutdown.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let signal = {
        let shutdown = shutdown.clone();
        let reporter = health_reporter.clone();
        async move {
            shutdown.cancelled().await;
            reporter
                .set_service_status(service_name, tonic_health::ServingStatus::NotServing)
                .await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    };

    // The builder's tcp_nodelay / tcp_keepalive apply only to listeners it
    // binds itself; on a listener handed in they are set here. Without
    // TCP_NODELAY every small ack waits on Nagle's algorithm and delayed ACKs,
    // which halves the ingest rate.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    // At most `limits.max_connections` connections, each sending its preface
    // in time (crate::conn). The stream is polled one connection at a time,
    // so at most one accepted connection waits for a slot.
    let slots = Arc::new(crate::conn::Slots::new(limits.max_connections));
    let incoming = futures_util::StreamExt::filter_map(incoming, move |accepted| {
        let slots = slots.clone();
        async move {
            let tcp = match accepted {
                Ok(tcp) => tcp,
                Err(e) => return Some(Err(e)),
            };
            let slot = slots.acquire().await?;
            Some(Ok(crate::conn::Limited::new(
                tcp,
                slot,
                limits.header_timeout,
            )))
        }
    });

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        // No request timeout: a StreamOutcomes stream lives as long as the
        // test run. Dead peers are found by HTTP/2 and TCP keepalive instead.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // Flow-control windows sized for h2's guard against small DATA
        // frames; see STREAM_WINDOW.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .layer(tower::util::MapResponseLayer::new(size_limit_status))
        .add_service(InterceptedService::new(recorder, auth))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    Ok(())
}

/// How often health asks the database whether it answers.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Sets health to whether the store's database answers, probing every
/// [`HEALTH_PROBE_INTERVAL`], until `shutdown` (which turns it off for good).
async fn follow_database(
    store: Store,
    reporter: tonic_health::server::HealthReporter,
    service_name: &'static str,
    shutdown: CancellationToken,
) {
    let mut serving = true;
    let mut tick = tokio::time::interval(HEALTH_PROBE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let up = matches!(
            tokio::time::timeout(HEALTH_PROBE_INTERVAL * 2, store.ping()).await,
            Ok(Ok(()))
        );
        if up == serving || shutdown.is_cancelled() {
            continue;
        }
        serving = up;
        let status = if up {
            tracing::info!("the database answers again; health is SERVING");
            tonic_health::ServingStatus::Serving
        } else {
            tracing::warn!("the database does not answer; health is NOT_SERVING");
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status(service_name, status).await;
        reporter.set_service_status("", status).await;
    }
}

/// Rewrites tonic's OUT_OF_RANGE for an oversized unary request to
/// RESOURCE_EXHAUSTED, the code gRPC clients expect for size limits.
fn size_limit_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
