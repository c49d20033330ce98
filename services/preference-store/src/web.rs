//! The labeling app, beside the gRPC port: an annotator logs in with their token, then takes
//! tasks from the [`TaskBoard`] and ranks, skips or flags them on the ranking page; admins watch
//! quality on the dashboard and pause annotators. The pages are static files from `web/`,
//! compiled into the binary, that call the JSON API below.
//!
//! Sessions are a random id in an `HttpOnly; SameSite=Strict` cookie; every state-changing
//! request must also carry the session's CSRF token in `x-csrf-token` (a cross-site form cannot
//! set a header). Every response forbids inline script and framing (Content-Security-Policy) and
//! content sniffing, so a model response containing markup can only ever be shown as text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::tasks::{Task, TaskBoard};

/// Sent with every response: scripts only from this origin (no inline script, no eval), no
/// plugins, no framing by other sites.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

const COOKIE: &str = "rlhf_session";

/// The guidelines shown when the project configures none.
pub const DEFAULT_GUIDELINES: &str = include_str!("../web/guidelines.md");

/// The pages and their scripts: (path, content type, body).
const FILES: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../web/index.html")),
    ("/dashboard", "text/html; charset=utf-8", include_str!("../web/dashboard.html")),
    ("/common.js", "text/javascript; charset=utf-8", include_str!("../web/common.js")),
    ("/rank.js", "text/javascript; charset=utf-8", include_str!("../web/rank.js")),
    ("/dashboard.js", "text/javascript; charset=utf-8", include_str!("../web/dashboard.js")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../web/style.css")),
];

struct Session {
    annotator: String,
    admin: bool,
    csrf: String,
}

/// What the handlers share: the board (one SQLite connection, behind a lock) and the sessions.
#[derive(Clone)]
pub struct App {
    board: Arc<Mutex<TaskBoard>>,
    guidelines: Arc<str>,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sessions = self.sessions.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("App").field("sessions", &sessions).finish_non_exhaustive()
    }
}

impl App {
    pub fn new(board: TaskBoard) -> Self {
        let now =
            || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        App::with_clock(board, Arc::new(now))
    }

    /// An app whose clock is `now_ms` (tests move time to expire leases).
    pub fn with_clock(board: TaskBoard, now_ms: Arc<dyn Fn() -> i64 + Send + Sync>) -> Self {
        App {
            board: Arc::new(Mutex::new(board)),
            guidelines: DEFAULT_GUIDELINES.into(),
            now_ms,
            sessions: Arc::default(),
        }
    }

    /// The guidelines annotators read (Markdown, shown as text) instead of the bundled ones.
    pub fn with_guidelines(mut self, markdown: String) -> Self {
        self.guidelines = markdown.into();
        self
    }
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// A refusal with a reason, as JSON.
fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    let why: String = why.into();
    #[derive(Serialize)]
    struct Refusal {
        error: String,
    }
    (status, Json(Refusal { error: why })).into_response()
}

/// Serves the app on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, app: App) -> std::io::Result<()> {
    axum::serve(listener, router(app)).await
}

/// The routes of the app, every response carrying the security headers.
pub fn router(app: App) -> axum::Router {
    let mut routes = axum::Router::new();
    for &(path, content_type, body) in FILES {
        routes = routes.route(path, get(move || async move { ([(header::CONTENT_TYPE, content_type)], body) }));
    }
    routes
        .route("/api/login", post(login))
        .route("/api/session", get(current_session))
        .route("/api/guidelines", get(guidelines))
        .route("/api/dashboard", get(dashboard))
        .route("/api/annotators/pause", post(pause))
        .route("/api/task", get(next_task))
        .route("/api/rank", post(rank))
        .route("/api/decline", post(decline))
        .route("/api/quality", get(quality))
        .with_state(app)
        .layer(axum::middleware::map_response(|mut response: Response| async move {
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            response
        }))
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

#[derive(Serialize)]
struct LoggedIn {
    annotator: String,
    admin: bool,
    csrf: String,
}

async fn login(State(app): State<App>, Json(body): Json<Login>) -> Response {
    let who = match on_board(&app, StatusCode::INTERNAL_SERVER_ERROR, move |b| b.authenticate(&body.token)).await {
        Ok(Some(who)) => who,
        Ok(None) => return refuse(StatusCode::UNAUTHORIZED, "unknown token"),
        Err(refusal) => return refusal.into_response(),
    };
    let (id, csrf) = (random_hex(32), random_hex(32));
    if let Ok(mut sessions) = app.sessions.lock() {
        sessions.insert(id.clone(), Session { annotator: who.id.clone(), admin: who.admin, csrf: csrf.clone() });
    }
    let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/");
    let mut response = Json(LoggedIn { annotator: who.id, admin: who.admin, csrf }).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Why a request is refused: no usable session, or the board said no.
struct Refused(StatusCode, std::borrow::Cow<'static, str>);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refuse(self.0, self.1)
    }
}

/// Runs `f` on the board on a blocking thread: SQLite waits for its lock and the disk, which a
/// tokio worker must not. A refusal of the board's is `status`.
async fn on_board<R: Send + 'static>(
    app: &App,
    status: StatusCode,
    f: impl FnOnce(&mut TaskBoard) -> crate::Result<R> + Send + 'static,
) -> Result<R, Refused> {
    let board = app.board.clone();
    let unavailable = || Refused(StatusCode::INTERNAL_SERVER_ERROR, "the board is unavailable".into());
    tokio::task::spawn_blocking(move || {
        let mut board = board.lock().map_err(|_| unavailable())?;
        f(&mut board).map_err(|e| Refused(status, e.to_string().into()))
    })
    .await
    .map_err(|_| unavailable())?
}

/// The session id in the request's cookie.
fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
}

/// The session's annotator, with its CSRF token checked when `changes_state`.
fn session(app: &App, headers: &HeaderMap, changes_state: bool) -> Result<String, Refused> {
    session_of(app, headers, changes_state).map(|(annotator, _)| annotator)
}

/// The session's annotator and whether they are an admin.
fn admin_session(app: &App, headers: &HeaderMap, changes_state: bool) -> Result<String, Refused> {
    match session_of(app, headers, changes_state)? {
        (annotator, true) => Ok(annotator),
        (_, false) => Err(Refused(StatusCode::FORBIDDEN, "for admins only".into())),
    }
}

/// The session's annotator and whether they are an admin.
fn session_of(app: &App, headers: &HeaderMap, changes_state: bool) -> Result<(String, bool), Refused> {
    let id = session_id(headers).ok_or(Refused(StatusCode::UNAUTHORIZED, "log in first".into()))?;
    let sessions =
        app.sessions.lock().map_err(|_| Refused(StatusCode::INTERNAL_SERVER_ERROR, "sessions unavailable".into()))?;
    let session = sessions.get(id).ok_or(Refused(StatusCode::UNAUTHORIZED, "the session has ended".into()))?;
    if changes_state {
        let given = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
        let ok: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), session.csrf.as_bytes()).into();
        if !ok {
            return Err(Refused(StatusCode::FORBIDDEN, "missing or wrong CSRF token".into()));
        }
    }
    Ok((session.annotator.clone(), session.admin))
}

#[derive(Serialize)]
struct TaskView {
    task_id: String,
    prompt: String,
    /// Plain text, shown as text: the page never renders it as markup.
    responses: Vec<String>,
    leased_until_ms: i64,
}

impl From<Task> for TaskView {
    fn from(t: Task) -> Self {
        TaskView {
            task_id: t.id,
            prompt: t.prompt_text,
            responses: t.responses.into_iter().map(|r| r.text).collect(),
            leased_until_ms: t.leased_until_ms,
        }
    }
}

async fn next_task(State(app): State<App>, headers: HeaderMap) -> Response {
    let annotator = match session(&app, &headers, false) {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(),
    };
    let now = (app.now_ms)();
    match on_board(&app, StatusCode::BAD_REQUEST, move |b| b.next_task(&annotator, now)).await {
        Ok(Some(task)) => Json(TaskView::from(task)).into_response(),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
struct Rank {
    task_id: String,
    /// Indices of the responses as shown, best first.
    order: Vec<usize>,
}

async fn rank(State(app): State<App>, headers: HeaderMap, Json(body): Json<Rank>) -> Response {
    let annotator = match session(&app, &headers, true) {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(),
    };
    let now = (app.now_ms)();
    let submitted =
        on_board(&app, StatusCode::BAD_REQUEST, move |b| b.submit(&annotator, &body.task_id, &body.order, now));
    submitted.await.map_or_else(IntoResponse::into_response, |_| StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct Decline {
    task_id: String,
    /// Set to flag the task as unsafe, with the reason; absent to skip it.
    flag: Option<String>,
}

async fn decline(State(app): State<App>, headers: HeaderMap, Json(body): Json<Decline>) -> Response {
    let annotator = match session(&app, &headers, true) {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(),
    };
    if body.flag.as_deref().is_some_and(|r| r.trim().is_empty()) {
        return refuse(StatusCode::BAD_REQUEST, "a flag needs a reason");
    }
    let now = (app.now_ms)();
    let declined = on_board(&app, StatusCode::BAD_REQUEST, move |b| {
        b.decline(&annotator, &body.task_id, body.flag.as_deref(), now)
    });
    declined.await.map_or_else(IntoResponse::into_response, |()| StatusCode::NO_CONTENT.into_response())
}

/// The quality report over every stored ranking (admins only): what the dashboard shows.
async fn quality(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(refusal) = admin_session(&app, &headers, false) {
        return refusal.into_response();
    }
    match on_board(&app, StatusCode::INTERNAL_SERVER_ERROR, quality_report).await {
        Ok(report) => Json(report).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

fn quality_report(board: &mut TaskBoard) -> crate::Result<crate::quality::QualityReport> {
    use crate::PreferenceStore;
    let rankings = crate::SqliteStore::open(board.path())?.rankings(None)?;
    Ok(crate::quality::report(&rankings, &board.gold_orders()?))
}

/// The logged-in annotator and the session's CSRF token: a page reloaded in the same session
/// gets its token back (a GET another site cannot read, the browser's same-origin policy sees to
/// that).
async fn current_session(State(app): State<App>, headers: HeaderMap) -> Response {
    let id = session_id(&headers).unwrap_or_default();
    let sessions = match app.sessions.lock() {
        Ok(s) => s,
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "sessions unavailable"),
    };
    match sessions.get(id) {
        Some(s) => {
            Json(LoggedIn { annotator: s.annotator.clone(), admin: s.admin, csrf: s.csrf.clone() }).into_response()
        }
        None => refuse(StatusCode::UNAUTHORIZED, "log in first"),
    }
}

async fn guidelines(State(app): State<App>) -> Response {
    ([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], app.guidelines.to_string()).into_response()
}

/// Everything the dashboard shows, in one read.
#[derive(Serialize)]
struct Dashboard {
    progress: crate::tasks::Progress,
    quality: crate::quality::QualityReport,
    annotators: Vec<crate::activity::Activity>,
    flags: Vec<crate::activity::Flag>,
}

async fn dashboard(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(refusal) = admin_session(&app, &headers, false) {
        return refusal.into_response();
    }
    let read = on_board(&app, StatusCode::INTERNAL_SERVER_ERROR, |board| {
        Ok(Dashboard {
            progress: board.progress()?,
            quality: quality_report(board)?,
            annotators: board.activity()?,
            flags: board.flags()?,
        })
    });
    read.await.map_or_else(IntoResponse::into_response, |d| Json(d).into_response())
}

#[derive(Deserialize)]
struct Pause {
    annotator: String,
    paused: bool,
}

async fn pause(State(app): State<App>, headers: HeaderMap, Json(body): Json<Pause>) -> Response {
    if let Err(refusal) = admin_session(&app, &headers, true) {
        return refusal.into_response();
    }
    let paused = on_board(&app, StatusCode::BAD_REQUEST, move |b| b.set_paused(&body.annotator, body.paused));
    paused.await.map_or_else(IntoResponse::into_response, |()| StatusCode::NO_CONTENT.into_response())
}
