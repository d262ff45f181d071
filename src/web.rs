//! The web pages for people, served by `serve` at `/` on the MCP HTTP
//! listener (`--no-ui` turns them off): sessions, one session (live while
//! it runs), one test's history, flaky tests, and two sessions compared.
//!
//! Server-rendered HTML ([`pages`], from the same view structs MCP answers
//! with); one stylesheet and one small script embedded in the binary; no
//! inline script or style, so every page runs under a strict
//! Content-Security-Policy; nothing is fetched from elsewhere. The pages only
//! read.
//!
//! The same rules as MCP over HTTP: loopback `Host` names only (unless the
//! listener is public, which needs tokens), a form post only from a loopback
//! or allowed `Origin`, and with tokens configured every page and event
//! stream needs one: an `Authorization: Bearer` header, or the `HttpOnly`,
//! `SameSite=Strict` cookie the login form sets.

mod components;
mod live;
mod pages;

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::Markup;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::Tokens;
use crate::error::Error;
use crate::model::{SessionRef, SessionStatus, TestOutcome};
use crate::store::{OutcomeFilter, SessionFilter, Store};
use crate::views::{self, DefaultProject, EnvironmentView, Scope, SessionView};
use components::Cell;

/// The policy every page is sent with: only this server's own script and
/// stylesheet, no inline code, no framing, forms posting only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The cookie the login form sets.
const COOKIE: &str = "pytest_mcp_token";

const STYLE: &str = include_str!("web/assets/style.css");
const SCRIPT: &str = include_str!("web/assets/app.js");
const ICON: &str = include_str!("web/assets/icon.svg");

/// Sessions across the grid and the trends; rows of the grid.
const GRID_SESSIONS: usize = 20;
const GRID_ROWS: usize = 50;
const TREND_SESSIONS: usize = 60;
/// Causes listed on a session's page.
const CAUSES_SHOWN: usize = 50;

/// Sessions per page of the list; outcomes per page of a session.
const PAGE: usize = 50;
const OUTCOMES_PAGE: usize = 100;
/// Failures shown in full on a session's page.
const FAILURES_SHOWN: u32 = 100;
/// Runs on a test's page; runs per flaky test's strip.
const HISTORY_RUNS: u32 = 100;
const STRIP_RUNS: usize = 30;

/// How the pages are guarded.
#[derive(Clone)]
pub struct WebOptions {
    /// With tokens, every page needs one.
    pub tokens: Option<Arc<Tokens>>,
    /// Serve any `Host` (a public listener, which has tokens).
    pub any_host: bool,
    /// Origins a login form may be posted from besides loopback ones.
    pub allowed_origins: Vec<String>,
    /// Mark the cookie `Secure` (the listener is HTTPS).
    pub secure_cookie: bool,
    /// The project a page shows when its address names none.
    pub default_project: DefaultProject,
}

#[derive(Clone)]
struct Web {
    store: Store,
    options: Arc<WebOptions>,
    shutdown: CancellationToken,
    /// The session followers every page stream shares.
    live: live::Live,
}

impl Web {
    /// The project a page is about: the one its address names, else the default.
    async fn scope(&self, project: &str) -> Result<Scope, Error> {
        Scope::resolve(
            &self.store,
            Some(project).filter(|p| !p.trim().is_empty()),
            &self.options.default_project,
        )
        .await
    }
}

/// The pages' routes, guarded as the module says.
pub fn router(store: Store, options: WebOptions, shutdown: CancellationToken) -> axum::Router {
    let web = Web {
        live: live::Live::new(store.clone(), shutdown.clone()),
        store,
        options: Arc::new(options),
        shutdown,
    };
    axum::Router::new()
        .route("/", get(sessions_page))
        .route("/events", get(list_events))
        .route("/sessions/{id}", get(session_page))
        .route("/sessions/{id}/events", get(session_events))
        .route("/sessions/{id}/slowest", get(slowest_page))
        .route("/grid", get(grid_page))
        .route("/trends", get(trends_page))
        .route("/tests", get(test_page))
        .route("/flaky", get(flaky_page))
        .route("/compare", get(compare_page))
        .route("/login", get(login_page).post(login))
        .route("/assets/style.css", get(style))
        .route("/assets/app.js", get(script))
        .route("/assets/icon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(web.clone(), guard))
        .with_state(web)
}

/// Host and Origin rules, the token, and the headers every answer carries.
async fn guard(
    State(web): State<Web>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    if !web.options.any_host && !loopback_host(headers) {
        return plain(
            StatusCode::FORBIDDEN,
            "forbidden: this server answers to localhost names only",
        );
    }
    if request.method() == Method::POST && !origin_allowed(headers, &web.options.allowed_origins) {
        return plain(
            StatusCode::FORBIDDEN,
            "forbidden: a form from another origin",
        );
    }
    let path = request.uri().path();
    let open = path.starts_with("/assets/") || path == "/login" || path == "/favicon.ico";
    if let Some(tokens) = &web.options.tokens
        && !open
        && !authorized(tokens, headers)
    {
        let wants_page = request.method() == Method::GET
            && !path.ends_with("/events")
            && headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
        if wants_page {
            let next = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            return Redirect::to(&format!("/login?next={}", components::query_escape(&next)))
                .into_response();
        }
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer realm="pytest-mcp""#)],
            "a token is required: send Authorization: Bearer <token>, or sign in at /login\n",
        )
            .into_response();
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, format!("{text}\n")).into_response()
}

/// Whether `Host` names this machine (a DNS-rebinding page sends its own name).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest
            .split(']')
            .next()
            .map(|h| format!("[{h}]"))
            .unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default().to_string(),
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "[::1]"
    )
}

/// Whether a form post's `Origin` is this machine or an allowed one (a
/// request without `Origin` is a command-line client).
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    let mut fake = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(rest) {
        fake.insert(header::HOST, v);
    }
    loopback_host(&fake)
        || allowed.iter().any(|a| {
            a == origin
                || a.strip_suffix(":*").is_some_and(|base| {
                    origin.strip_prefix(base).is_some_and(|port| {
                        port.is_empty()
                            || port
                                .strip_prefix(':')
                                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
                    })
                })
        })
}

/// Whether the request carries a configured token, as a header or cookie.
fn authorized(tokens: &Tokens, headers: &HeaderMap) -> bool {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        return tokens.check(Some(h.as_bytes())).is_ok();
    }
    cookie(headers, COOKIE)
        .is_some_and(|t| tokens.check(Some(format!("Bearer {t}").as_bytes())).is_ok())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// A page, or the error page a failure of its reads becomes.
fn page(result: Result<Markup, Error>) -> Response {
    match result {
        Ok(markup) => Html(markup.into_string()).into_response(),
        Err(e) => error_page(e),
    }
}

fn error_page(e: Error) -> Response {
    let (status, title) = match &e {
        Error::InvalidArgument { .. } | Error::FailedPrecondition { .. } => {
            (StatusCode::BAD_REQUEST, "Not a valid request")
        }
        Error::NotFound { .. } => (StatusCode::NOT_FOUND, "Not found"),
        Error::Unavailable(_) | Error::ResourceExhausted(_) | Error::Conflict(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "Unavailable")
        }
        Error::AlreadyExists { .. }
        | Error::Sqlite(_)
        | Error::Postgres(_)
        | Error::Internal(_) => {
            tracing::error!(error = %e, "rendering a page");
            let body = pages::error(
                "Internal error",
                "The server could not read this; see its log.",
            );
            return (StatusCode::INTERNAL_SERVER_ERROR, Html(body.into_string())).into_response();
        }
    };
    (
        status,
        Html(pages::error(title, &e.to_string()).into_string()),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(pages::error("Not found", "There is no page here.").into_string()),
    )
        .into_response()
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    project: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    cursor: String,
}

async fn sessions_page(State(web): State<Web>, Query(q): Query<ListQuery>) -> Response {
    page(
        async {
            let scope = web.scope(&q.project).await?;
            let status = match q.status.trim() {
                "" => None,
                s => Some(s.parse::<SessionStatus>().map_err(|_| {
                    Error::invalid("status", format!("{s:?} is not a session status"))
                })?),
            };
            let query = views::SessionsQuery {
                limit: Some(PAGE as u32),
                cursor: Some(q.cursor.clone()).filter(|c| !c.is_empty()),
                status,
            };
            let found = views::session::list_sessions(&web.store, &scope, &query).await?;
            Ok(pages::sessions(&pages::SessionsPage {
                projects: scope.projects_view(),
                sessions: found.sessions,
                project: scope.project.name.clone(),
                status: q.status.clone(),
                next: found.next_cursor,
            }))
        }
        .await,
    )
}

async fn list_events(State(web): State<Web>) -> live::Events {
    live::changes(web.store.clone(), web.shutdown.clone())
}

#[derive(Deserialize, Default)]
struct SessionQuery {
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    cursor: String,
}

async fn session_page(
    State(web): State<Web>,
    Path(id): Path<String>,
    Query(q): Query<SessionQuery>,
) -> Response {
    page(
        async {
            let session = SessionRef::parse(&id, "session")?;
            let s = web.store.get_session(session).await?;
            // The session's own project, whatever page led here.
            let scope = web.scope(&s.environment.project).await?;
            let id = s.id.to_string();
            let failing = views::FailuresQuery {
                session: Some(id.clone()),
                limit: Some(FAILURES_SHOWN),
                traceback_bytes: Some(live::TRACEBACK_BYTES as u32),
                whole: true,
                ..views::FailuresQuery::default()
            };
            let grouped = views::ClustersQuery {
                session: Some(id.clone()),
                limit: Some(CAUSES_SHOWN as u32),
                tests_per_cluster: Some(5),
                traceback_bytes: Some(200),
                whole: true,
            };
            let (failures, causes) = tokio::try_join!(
                views::failures::failures(&web.store, &scope, &failing),
                views::causes::clusters(&web.store, &scope, &grouped),
            )?;
            let outcomes =
                match q.outcome.trim() {
                    "" => Vec::new(),
                    o => vec![o.parse::<TestOutcome>().map_err(|_| {
                        Error::invalid("outcome", format!("{o:?} is not an outcome"))
                    })?],
                };
            let filter = OutcomeFilter {
                outcomes,
                nodeid_contains: Some(q.q.trim().to_string()).filter(|t| !t.is_empty()),
            };
            let cursor = Some(q.cursor.clone()).filter(|c| !c.is_empty());
            let (_, rows) = web
                .store
                .list_outcomes(SessionRef::Id(s.id), filter, OUTCOMES_PAGE, cursor)
                .await?;
            let grant = web.store.session_grant(s.id).await.unwrap_or(None);
            let rerun_all = if failures.failures.is_empty() {
                String::new()
            } else {
                failures.rerun_command.clone()
            };
            Ok(pages::session(&pages::SessionPage {
                session: SessionView::from(&s),
                environment: EnvironmentView::from(&s.environment),
                grant,
                more_failures: failures.next_cursor.is_some(),
                causes,
                failures: failures.failures,
                rerun_all,
                outcomes: rows
                    .items
                    .iter()
                    .map(|o| pages::OutcomeRow {
                        seq: o.seq,
                        nodeid: o.nodeid.clone(),
                        subtest: o.subtest.clone(),
                        outcome: o.outcome.to_string(),
                        duration: o.duration,
                        message: o.message.clone(),
                        quarantined: o.quarantined,
                    })
                    .collect(),
                outcome_filter: q.outcome.clone(),
                search: q.q.clone(),
                next: rows.next,
            }))
        }
        .await,
    )
}

#[derive(Deserialize, Default)]
struct EventsQuery {
    #[serde(default)]
    after: Option<u64>,
}

async fn session_events(
    State(web): State<Web>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let session = match SessionRef::parse(&id, "session") {
        Ok(r) => r,
        Err(e) => return error_page(e),
    };
    // A reconnecting browser says what it has; the first connection, the page.
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.after)
        .unwrap_or(0);
    match web.live.session(session, after).await {
        Ok(events) => events.into_response(),
        Err(e) => error_page(e),
    }
}

#[derive(Deserialize, Default)]
struct TestQuery {
    #[serde(default)]
    nodeid: String,
    #[serde(default)]
    project: String,
}

async fn test_page(State(web): State<Web>, Query(q): Query<TestQuery>) -> Response {
    page(
        async {
            let scope = web.scope(&q.project).await?;
            let nodeid = q.nodeid.trim().to_string();
            let history = views::history::history(
                &web.store,
                &scope,
                &views::HistoryQuery {
                    nodeid: nodeid.clone(),
                    limit: Some(HISTORY_RUNS),
                    window: Some(HISTORY_RUNS),
                    cursor: None,
                    whole: true,
                },
            )
            .await?;
            let mut runs: Vec<pages::TestRun> = history
                .entries
                .iter()
                .map(|h| pages::TestRun {
                    session_id: h.session_id.clone(),
                    started_at: h.started_at.clone(),
                    outcome: h.outcome.clone(),
                    duration: h.duration,
                    subtest: h.subtest.clone().unwrap_or_default(),
                })
                .collect();
            runs.reverse();
            // Distinct messages, newest first (history comes newest first).
            let mut messages: Vec<pages::MessageSeen> = Vec::new();
            for h in &history.entries {
                if !matches!(h.outcome.as_str(), "failed" | "error") {
                    continue;
                }
                let text = first_line(&h.message);
                match messages.iter_mut().find(|m| m.message == text) {
                    Some(m) => {
                        m.first = h.started_at.clone();
                        m.times += 1;
                    }
                    None => messages.push(pages::MessageSeen {
                        message: text,
                        first: h.started_at.clone(),
                        last: h.started_at.clone(),
                        times: 1,
                    }),
                }
            }
            Ok(pages::test(&pages::TestPage {
                projects: scope.projects_view(),
                project: scope.project.name.clone(),
                stability: history.stability,
                nodeid,
                runs,
                messages,
            }))
        }
        .await,
    )
}

fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    let mut end = line.len().min(500);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

#[derive(Deserialize, Default)]
struct FlakyQuery {
    #[serde(default)]
    project: String,
    #[serde(default)]
    window: Option<usize>,
}

async fn flaky_page(State(web): State<Web>, Query(q): Query<FlakyQuery>) -> Response {
    page(
        async {
            let scope = web.scope(&q.project).await?;
            let found = views::flaky::flaky(
                &web.store,
                &scope,
                &views::FlakyQuery {
                    window_sessions: q.window.map(|w| w.clamp(1, 1000) as u32),
                    limit: Some(100),
                    whole: true,
                },
            )
            .await?;
            let mut tests = Vec::with_capacity(found.tests.len());
            for f in &found.tests {
                let history = web
                    .store
                    .test_history(f.nodeid.clone(), &scope.project, STRIP_RUNS, None)
                    .await?;
                let runs = history
                    .items
                    .iter()
                    .rev()
                    .map(|h| Cell {
                        outcome: h.outcome.outcome.to_string(),
                        href: format!("/sessions/{}", h.session.id),
                        title: format!(
                            "{} {}",
                            h.session.started_at.to_rfc3339(),
                            h.outcome.outcome
                        ),
                    })
                    .collect();
                tests.push(pages::FlakyRow {
                    stability: f.stability.clone(),
                    nodeid: f.nodeid.clone(),
                    last_message: first_line(&f.last_message),
                    quarantined: f.quarantined,
                    runs,
                });
            }
            Ok(pages::flaky(&pages::FlakyPage {
                projects: scope.projects_view(),
                window: found.window_sessions,
                project: scope.project.name.clone(),
                total: found.total,
                tests,
            }))
        }
        .await,
    )
}

#[derive(Deserialize, Default)]
struct CompareQuery {
    #[serde(default)]
    base: String,
    #[serde(default)]
    head: String,
    #[serde(default)]
    project: String,
}

async fn compare_page(State(web): State<Web>, Query(q): Query<CompareQuery>) -> Response {
    page(
        async {
            let scope = web.scope(&q.project).await?;
            let view = views::compare::compare(
                &web.store,
                &scope,
                &views::CompareQuery {
                    head: Some(q.head.clone()),
                    base: Some(q.base.clone()),
                    limit: Some(500),
                    whole: true,
                    ..views::CompareQuery::default()
                },
            )
            .await?;
            Ok(pages::compare(&view, &scope.projects_view()))
        }
        .await,
    )
}

async fn slowest_page(State(web): State<Web>, Path(id): Path<String>) -> Response {
    page(
        async {
            let scope = web.scope("").await?;
            let view = views::durations::slowest(
                &web.store,
                &scope,
                &views::SlowestQuery {
                    session: Some(id),
                    limit: Some(100),
                },
            )
            .await?;
            Ok(pages::slowest(&view))
        }
        .await,
    )
}

#[derive(Deserialize, Default)]
struct ProjectQuery {
    #[serde(default)]
    project: String,
}

async fn grid_page(State(web): State<Web>, Query(q): Query<ProjectQuery>) -> Response {
    page(
        async {
            let scope = web.scope(&q.project).await?;
            let filter = SessionFilter {
                project: Some(scope.project.clone()),
                ..SessionFilter::default()
            };
            let mut sessions = web
                .store
                .list_sessions(filter, GRID_SESSIONS, None)
                .await?
                .items;
            sessions.reverse();
            // The tests that failed in any of them, by how often.
            let mut failing: Vec<(String, usize)> = Vec::new();
            for s in &sessions {
                let filter = OutcomeFilter {
                    outcomes: vec![TestOutcome::Failed, TestOutcome::Error],
                    nodeid_contains: None,
                };
                let (_, page) = web
                    .store
                    .list_outcomes(SessionRef::Id(s.id), filter, 1000, None)
                    .await?;
                let mut seen = std::collections::HashSet::new();
                for o in &page.items {
                    if !seen.insert(o.nodeid.clone()) {
                        continue;
                    }
                    match failing.iter_mut().find(|(n, _)| *n == o.nodeid) {
                        Some((_, count)) => *count += 1,
                        None => failing.push((o.nodeid.clone(), 1)),
                    }
                }
            }
            failing.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            failing.truncate(GRID_ROWS);
            let mut rows = Vec::with_capacity(failing.len());
            for (nodeid, failures) in failing {
                let history = web
                    .store
                    .test_history(nodeid.clone(), &scope.project, GRID_SESSIONS * 4, None)
                    .await?;
                let cells = sessions
                    .iter()
                    .map(|s| {
                        // The test's own outcome (not a subtest's); its last attempt.
                        history
                            .items
                            .iter()
                            .filter(|h| h.session.id == s.id && h.outcome.subtest.is_empty())
                            .max_by_key(|h| h.outcome.seq)
                            .map(|h| h.outcome.outcome.to_string())
                    })
                    .collect();
                rows.push((nodeid, failures, cells));
            }
            Ok(pages::grid(&pages::GridPage {
                projects: scope.projects_view(),
                project: scope.project.name.clone(),
                sessions: sessions.iter().map(SessionView::from).collect(),
                rows,
            }))
        }
        .await,
    )
}

async fn trends_page(State(web): State<Web>, Query(q): Query<ProjectQuery>) -> Response {
    page(
        async {
            let scope = web.scope(&q.project).await?;
            let filter = SessionFilter {
                project: Some(scope.project.clone()),
                ..SessionFilter::default()
            };
            let mut sessions = web
                .store
                .list_sessions(filter, TREND_SESSIONS, None)
                .await?
                .items;
            sessions.retain(|s| s.status != SessionStatus::Running);
            sessions.reverse();
            Ok(pages::trends(&pages::TrendsPage {
                projects: scope.projects_view(),
                project: scope.project.name.clone(),
                sessions: sessions.iter().map(SessionView::from).collect(),
            }))
        }
        .await,
    )
}

#[derive(Deserialize, Default)]
struct LoginQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    failed: bool,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    Html(pages::login(&safe_next(&q.next), q.failed).into_string()).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(State(web): State<Web>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(&form.next);
    let Some(tokens) = &web.options.tokens else {
        return Redirect::to(&next).into_response();
    };
    let token = form.token.trim();
    if token.is_empty()
        || token.contains([';', ' ', ','])
        || tokens
            .check(Some(format!("Bearer {token}").as_bytes()))
            .is_err()
    {
        let to = format!(
            "/login?failed=true&next={}",
            components::query_escape(&next)
        );
        return Redirect::to(&to).into_response();
    }
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if web.options.secure_cookie {
            "; Secure"
        } else {
            ""
        }
    );
    let mut response = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Where to go after signing in: a path on this server only, else `/`.
///
/// Only printable ASCII without spaces or backslashes passes: browsers drop
/// tabs and newlines from a `Location` (`/\t/evil.example` becomes
/// `//evil.example`, another site) and read `\` as `/`, and a control
/// character is not a valid header value at all. The paths this server
/// sends to `/login?next=` are percent-encoded, so nothing legitimate is lost.
fn safe_next(next: &str) -> String {
    let printable = next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    let same_site = next.starts_with('/') && !next.starts_with("//");
    if printable && same_site {
        next.to_string()
    } else {
        "/".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_and_origins_pass() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            loopback_host(&m)
        };
        assert!(host("127.0.0.1:8765") && host("localhost") && host("[::1]:80"));
        assert!(!host("evil.example:8765") && !host("127.0.0.1.evil.example"));
        let origin = |o: &str, allowed: &[&str]| {
            let mut m = HeaderMap::new();
            m.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            origin_allowed(
                &m,
                &allowed.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            )
        };
        assert!(origin("http://127.0.0.1:8765", &[]));
        assert!(!origin("https://evil.example", &[]));
        assert!(origin(
            "https://app.example:443",
            &["https://app.example:*"]
        ));
        assert!(!origin(
            "https://app.example.evil:443",
            &["https://app.example:*"]
        ));
    }

    #[test]
    fn signing_in_only_ever_leads_to_a_page_of_this_server() {
        assert_eq!(safe_next("/sessions/latest"), "/sessions/latest");
        assert_eq!(
            safe_next("/tests?nodeid=a%20b&x=1"),
            "/tests?nodeid=a%20b&x=1"
        );
        for bad in [
            "https://evil.example",
            "//evil.example/x",
            "/\\evil",
            "",
            "/\t/evil.example",
            "/\r\nSet-Cookie: x=1",
            "/ /evil.example",
            "/\u{7f}/evil.example",
            "/caf\u{e9}",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad}");
        }
    }
}
