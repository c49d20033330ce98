//! The labeling API as a browser would call it: log in, take a task, rank it; and what it refuses:
//! unknown tokens, requests without a session, state changes without the CSRF token.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use rlhf_types::RankedResponse;
use tower::ServiceExt;

use crate::tasks::{NewTask, TaskBoard};
use crate::web::{App, CONTENT_SECURITY_POLICY, router};
use crate::{PreferenceStore, SqliteStore};

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: serde_json::Value,
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: serde_json::Value,
) -> Reply {
    let mut request = Request::builder().method(method).uri(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(c) = cookie {
        request = request.header(header::COOKIE, c);
    }
    if let Some(t) = csrf {
        request = request.header("x-csrf-token", t);
    }
    let response = app.clone().oneshot(request.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Reply { status, headers, json }
}

/// Logs in with `token`: the session cookie (`name=value`) and its CSRF token.
async fn login(app: &axum::Router, token: String) -> (String, String) {
    let r = call(app, "POST", "/api/login", None, None, serde_json::json!({"token": token})).await;
    let cookie = r.headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
    (cookie, r.json["csrf"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn an_annotator_logs_in_takes_a_task_and_ranks_it_and_forgeries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("prefs.sqlite");
    SqliteStore::open(&db).unwrap().register_prompts(&[("p".into(), "Which is kinder?".into())]).unwrap();
    let mut board = TaskBoard::open(&db, 60_000).unwrap();
    let token = board.add_annotator("ann", false, 0).unwrap();
    let xss = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let responses = ["Thank you!", xss]
        .iter()
        .enumerate()
        .map(|(i, t)| RankedResponse { response_id: format!("r{i}"), text: t.to_string(), tokens: vec![] })
        .collect();
    board
        .enqueue(&[NewTask { id: "t1".into(), prompt_id: "p".into(), responses, needed: 1, gold_order: None }])
        .unwrap();
    let clock = Arc::new(AtomicI64::new(1_000));
    let now = clock.clone();
    let app = router(App::with_clock(board, Arc::new(move || now.load(Ordering::SeqCst))));

    // Unknown token; no session.
    let r = call(&app, "POST", "/api/login", None, None, serde_json::json!({"token": "nope"})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY, "every response carries the CSP");
    assert_eq!(
        call(&app, "GET", "/api/task", None, None, serde_json::json!({})).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Log in: an HttpOnly, SameSite=Strict session cookie and a CSRF token.
    let r = call(&app, "POST", "/api/login", None, None, serde_json::json!({"token": token})).await;
    assert_eq!(r.status, StatusCode::OK);
    let set_cookie = r.headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = r.json["csrf"].as_str().unwrap().to_string();
    assert_eq!(r.json["annotator"], "ann");

    // The task, with the responses as plain text (the page shows them as text).
    let task = call(&app, "GET", "/api/task", Some(&cookie), None, serde_json::json!({})).await;
    assert_eq!(task.status, StatusCode::OK);
    assert_eq!((task.json["task_id"].as_str(), task.json["prompt"].as_str()), (Some("t1"), Some("Which is kinder?")));
    assert_eq!(task.json["responses"][1], xss);
    assert_eq!(task.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

    // A state change without the CSRF token, or with a wrong one, is refused and stores nothing.
    let ranking = serde_json::json!({"task_id": "t1", "order": [0, 1]});
    for forged in [None, Some("0000")] {
        let r = call(&app, "POST", "/api/rank", Some(&cookie), forged, ranking.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{forged:?}");
    }
    assert!(SqliteStore::open(&db).unwrap().rankings(None).unwrap().is_empty());
    // A tie is refused; the real ranking is stored.
    let tie = serde_json::json!({"task_id": "t1", "order": [0, 0]});
    assert_eq!(call(&app, "POST", "/api/rank", Some(&cookie), Some(&csrf), tie).await.status, StatusCode::BAD_REQUEST);
    clock.store(2_000, Ordering::SeqCst);
    assert_eq!(
        call(&app, "POST", "/api/rank", Some(&cookie), Some(&csrf), ranking).await.status,
        StatusCode::NO_CONTENT
    );
    let stored = SqliteStore::open(&db).unwrap().rankings(None).unwrap();
    assert_eq!((stored.len(), stored[0].annotator_id.as_str(), stored[0].order.as_slice()), (1, "ann", &[0, 1][..]));
    // Nothing left for ann.
    assert_eq!(
        call(&app, "GET", "/api/task", Some(&cookie), None, serde_json::json!({})).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn admins_see_the_quality_report_and_annotators_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("prefs.sqlite");
    SqliteStore::open(&db).unwrap().register_prompts(&[("p".into(), "Which is right?".into())]).unwrap();
    let mut board = TaskBoard::open(&db, 60_000).unwrap();
    let (ann, boss) = (board.add_annotator("ann", false, 0).unwrap(), board.add_annotator("boss", true, 0).unwrap());
    let responses: Vec<RankedResponse> = ["right", "wrong", "off"]
        .iter()
        .map(|t| RankedResponse { response_id: t.to_string(), text: t.to_string(), tokens: vec![] })
        .collect();
    // A gold task whose known order is right > wrong > off.
    board
        .enqueue(&[NewTask {
            id: "g1".into(),
            prompt_id: "p".into(),
            responses,
            needed: 1,
            gold_order: Some(vec![0, 1, 2]),
        }])
        .unwrap();
    let app = router(App::with_clock(board, Arc::new(|| 1_000)));
    let (ann_cookie, ann_csrf) = login(&app, ann).await;
    call(&app, "GET", "/api/task", Some(&ann_cookie), None, serde_json::json!({})).await;
    // Ann swaps the last two: 2 of the 3 gold pairs agree.
    let order = serde_json::json!({"task_id": "g1", "order": [0, 2, 1]});
    assert_eq!(
        call(&app, "POST", "/api/rank", Some(&ann_cookie), Some(&ann_csrf), order).await.status,
        StatusCode::NO_CONTENT
    );
    let denied = call(&app, "GET", "/api/quality", Some(&ann_cookie), None, serde_json::json!({})).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let (boss_cookie, _) = login(&app, boss).await;
    let report = call(&app, "GET", "/api/quality", Some(&boss_cookie), None, serde_json::json!({})).await;
    assert_eq!(report.status, StatusCode::OK);
    let row = &report.json["annotators"][0];
    assert_eq!((row["annotator"].as_str(), row["rankings"].as_u64()), (Some("ann"), Some(1)));
    assert_eq!((row["gold"]["agree"].as_u64(), row["gold"]["pairs"].as_u64()), (Some(2), Some(3)));
    // The first card shown (right) won: the position-bias check counts it.
    assert_eq!(row["first_card_wins"].as_u64(), Some(1));
}

#[tokio::test]
async fn the_dashboard_shows_time_per_task_and_flags_and_only_admins_pause_annotators() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("prefs.sqlite");
    SqliteStore::open(&db).unwrap().register_prompts(&[("p".into(), "Which is right?".into())]).unwrap();
    let mut board = TaskBoard::open(&db, 60_000).unwrap();
    let (ann, boss) = (board.add_annotator("ann", false, 0).unwrap(), board.add_annotator("boss", true, 0).unwrap());
    let task = |id: &str| NewTask {
        id: id.into(),
        prompt_id: "p".into(),
        responses: ["a", "b"]
            .iter()
            .map(|t| RankedResponse { response_id: format!("{id}-{t}"), text: t.to_string(), tokens: vec![] })
            .collect(),
        needed: 1,
        gold_order: None,
    };
    board.enqueue(&[task("t1"), task("t2")]).unwrap();
    let clock = Arc::new(AtomicI64::new(1_000));
    let now = clock.clone();
    let app = router(App::with_clock(board, Arc::new(move || now.load(Ordering::SeqCst))));
    let (ann_cookie, ann_csrf) = login(&app, ann).await;
    // A reloaded page gets its session's CSRF token back from the cookie.
    let again = call(&app, "GET", "/api/session", Some(&ann_cookie), None, serde_json::json!({})).await;
    assert_eq!((again.json["annotator"].as_str(), again.json["csrf"].as_str()), (Some("ann"), Some(ann_csrf.as_str())));

    // t1 opened at 1 s and ranked at 4 s; t2 opened at 4 s and flagged.
    call(&app, "GET", "/api/task", Some(&ann_cookie), None, serde_json::json!({})).await;
    clock.store(4_000, Ordering::SeqCst);
    let rank = serde_json::json!({"task_id": "t1", "order": [1, 0]});
    assert_eq!(
        call(&app, "POST", "/api/rank", Some(&ann_cookie), Some(&ann_csrf), rank).await.status,
        StatusCode::NO_CONTENT
    );
    call(&app, "GET", "/api/task", Some(&ann_cookie), None, serde_json::json!({})).await;
    let flag = serde_json::json!({"task_id": "t2", "flag": "asks for <b>harm</b>"});
    assert_eq!(
        call(&app, "POST", "/api/decline", Some(&ann_cookie), Some(&ann_csrf), flag).await.status,
        StatusCode::NO_CONTENT
    );

    let pause = serde_json::json!({"annotator": "ann", "paused": true});
    let r = call(&app, "GET", "/api/dashboard", Some(&ann_cookie), None, serde_json::json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "annotators do not see the dashboard");
    let r = call(&app, "POST", "/api/annotators/pause", Some(&ann_cookie), Some(&ann_csrf), pause.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "nor pause anyone");

    let (boss_cookie, boss_csrf) = login(&app, boss).await;
    let r = call(&app, "POST", "/api/annotators/pause", Some(&boss_cookie), None, pause.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a pause without the CSRF token is refused");
    let r = call(&app, "POST", "/api/annotators/pause", Some(&boss_cookie), Some(&boss_csrf), pause).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let d = call(&app, "GET", "/api/dashboard", Some(&boss_cookie), None, serde_json::json!({})).await.json;
    assert_eq!((d["progress"]["tasks"].as_u64(), d["progress"]["complete"].as_u64()), (Some(2), Some(1)));
    let row = &d["annotators"][0];
    assert_eq!(row["annotator"], "ann");
    assert_eq!(
        (row["ranked"].as_u64(), row["flagged"].as_u64(), row["paused"].as_bool()),
        (Some(1), Some(1), Some(true))
    );
    assert_eq!(row["median_ms_per_task"].as_i64(), Some(3_000));
    assert_eq!(d["flags"][0]["reason"], "asks for <b>harm</b>");
    assert_eq!(d["quality"]["annotators"][0]["rankings"].as_u64(), Some(1));

    // The pages themselves: HTML and scripts from this origin only, under the same CSP.
    for (path, kind) in [("/", "text/html"), ("/dashboard", "text/html"), ("/rank.js", "text/javascript")] {
        let r = app.clone().oneshot(Request::builder().uri(path).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind), "{path}");
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
    }
}

#[test]
fn no_page_script_turns_server_text_into_markup() {
    // The pages render everything from the server with textContent; these are the ways a script
    // could turn a string into markup instead.
    for (name, script) in [
        ("common.js", include_str!("../web/common.js")),
        ("rank.js", include_str!("../web/rank.js")),
        ("dashboard.js", include_str!("../web/dashboard.js")),
    ] {
        for sink in [".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
            assert!(!script.contains(sink), "{name} uses {sink}");
        }
    }
    for (name, page) in
        [("index.html", include_str!("../web/index.html")), ("dashboard.html", include_str!("../web/dashboard.html"))]
    {
        assert!(!page.contains("<script>"), "{name} has an inline script");
        // An inline handler: ` on` + letters + `=`.
        let handler = page.match_indices(" on").any(|(at, _)| {
            let rest = &page[at + 3..];
            let letters = rest.chars().take_while(char::is_ascii_alphabetic).count();
            letters > 0 && rest[letters..].starts_with('=')
        });
        assert!(!handler, "{name} has an inline event handler");
    }
}
