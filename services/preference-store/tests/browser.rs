//! The labeling app in a real headless browser (Debian's `chromium` and `chromium-driver`, which
//! `.ci/run` installs): an annotator logs in, ranks one task by dragging cards and one with the
//! keyboard alone, flags a third; the rankings are then read back from the store. A response
//! carrying markup must stay text, and a request without the CSRF token must be refused. An
//! admin then opens the dashboard. Screenshots of both pages land in `target/screenshots/`.
//!
//! Without chromedriver on the PATH the test says so and passes, unless `RLHF_REQUIRE_BROWSER`
//! is set (as CI sets it), where it fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use preference_store::tasks::{NewTask, TaskBoard};
use preference_store::web::{App, router};
use preference_store::{PreferenceStore, SqliteStore};
use rlhf_types::RankedResponse;

const XSS: &str = "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\">";

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("chromedriver")).find(|p| p.is_file())
}

fn start_driver(binary: &Path) -> Driver {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    driver
}

fn responses(id: &str, texts: &[&str]) -> Vec<RankedResponse> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| RankedResponse { response_id: format!("{id}-r{i}"), text: t.to_string(), tokens: vec![] })
        .collect()
}

fn task(id: &str, prompt: &str, texts: &[&str], needed: usize, gold: Option<Vec<usize>>) -> NewTask {
    NewTask { id: id.into(), prompt_id: prompt.into(), responses: responses(id, texts), needed, gold_order: gold }
}

/// A store with prompts, three annotators and an admin; two colleagues have already ranked some
/// tasks (gold among them), so the dashboard has figures to show.
fn seeded(db: &Path) -> (String, String) {
    let prompts = [
        ("capital", "What is the capital of Australia?"),
        ("boil", "At what temperature does water boil at sea level?"),
        ("moon", "Who first walked on the Moon?"),
        ("safe", "How do I pick a strong password?"),
    ];
    let prompts: Vec<(String, String)> = prompts.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    SqliteStore::open(db).unwrap().register_prompts(&prompts).unwrap();
    let mut board = TaskBoard::open(db, 10 * 60_000).unwrap();
    let ann = board.add_annotator("ann", false, 0).unwrap();
    let boss = board.add_annotator("boss", true, 0).unwrap();
    let colleagues = ["maria", "kenji"];
    for c in colleagues {
        board.add_annotator(c, false, 0).unwrap();
    }
    // Colleagues' tasks first (each ranked by both), then the three the browser ranks.
    let capital = ["Canberra.", "Sydney.", "The capital of Australia is Canberra, a planned city."];
    let boil = ["100 °C.", "It depends entirely on the kettle.", "90 °C."];
    let seeded: Vec<NewTask> = (0..4)
        .map(|i| {
            let (prompt, texts, gold) =
                if i % 2 == 0 { ("capital", capital, vec![0, 2, 1]) } else { ("boil", boil, vec![0, 2, 1]) };
            task(&format!("seed-{i}"), prompt, &texts, 2, (i < 2).then_some(gold))
        })
        .collect();
    board.enqueue(&seeded).unwrap();
    for (c, order) in colleagues.iter().zip([[0, 2, 1], [2, 0, 1]]) {
        for i in 0..4 {
            let opened = 1_000 * 60 * (i + 1);
            let t = board.next_task(c, opened).unwrap().expect("a seeded task");
            board.submit(c, &t.id, &order, opened + 35_000 + 10_000 * i).unwrap();
        }
    }
    board
        .enqueue(&[
            task("drag", "moon", &["Buzz Aldrin.", "Neil Armstrong, in 1969.", "Nobody; it was staged."], 1, None),
            task("keys", "capital", &["Canberra.", XSS, "Melbourne."], 1, None),
            task("flag", "safe", &["Use a passphrase of four random words.", "Reuse one you remember."], 1, None),
        ])
        .unwrap();
    (ann, boss)
}

async fn wait_text(client: &Client, css: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(e) = client.find(Locator::Css(css)).await
            && e.text().await.is_ok_and(|t| t.contains(want))
        {
            return;
        }
        assert!(Instant::now() < deadline, "{css} never showed {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The card indices in the order shown, best first.
async fn shown_order(client: &Client) -> Vec<usize> {
    let js = "return [...document.querySelectorAll('#cards li')].map(li => Number(li.dataset.index));";
    let v = client.execute(js, vec![]).await.unwrap();
    serde_json::from_value(v).unwrap()
}

async fn login(client: &Client, base: &str, token: &str) {
    client.goto(base).await.unwrap();
    let field = client.wait().for_element(Locator::Css("#token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    client.find(Locator::Css("#login button")).await.unwrap().click().await.unwrap();
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotators_rank_by_mouse_and_by_keyboard_in_a_real_browser() {
    let Some(binary) = chromedriver() else {
        assert!(
            std::env::var_os("RLHF_REQUIRE_BROWSER").is_none(),
            "RLHF_REQUIRE_BROWSER is set but chromedriver is not on the PATH"
        );
        eprintln!("skipped: chromedriver is not on the PATH (apt-get install chromium chromium-driver)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("prefs.sqlite");
    let (ann, boss) = seeded(&db);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let app = router(App::new(TaskBoard::open(&db, 10 * 60_000).unwrap()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://{addr}/");

    let driver = start_driver(&binary);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                    "--window-size=1100,900", "--force-device-scale-factor=1"]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client =
        ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await.expect("a browser session");

    // Log in; the first task arrives.
    login(&client, &base, &ann).await;
    wait_text(&client, "#prompt", "Who first walked on the Moon?").await;
    wait_text(&client, "#who", "ann").await;
    std::fs::write(screenshots_dir().join("ranking-page.png"), client.screenshot().await.unwrap()).unwrap();

    // Task 1 by mouse: drag the second card ("Neil Armstrong") above the first.
    let cards = client.find_all(Locator::Css("#cards li")).await.unwrap();
    let mouse = MouseActions::new("mouse".into())
        .then(PointerAction::MoveToElement { element: cards[1].clone(), duration: None, x: 0.0, y: 0.0 })
        .then(PointerAction::Down { button: MOUSE_BUTTON_LEFT })
        .then(PointerAction::MoveBy { duration: Some(Duration::from_millis(150)), x: 0.0, y: -40.0 })
        .then(PointerAction::MoveToElement {
            element: cards[0].clone(),
            duration: Some(Duration::from_millis(150)),
            x: 0.0,
            y: -20.0,
        })
        .then(PointerAction::Up { button: MOUSE_BUTTON_LEFT });
    client.perform_actions(mouse).await.unwrap();
    client.release_actions().await.unwrap();
    assert_eq!(shown_order(&client).await, vec![1, 0, 2], "the dragged card moved to the top");
    client.find(Locator::Css("#submit")).await.unwrap().click().await.unwrap();

    // Task 2 by keyboard alone: "3" picks Melbourne and moves it up twice, to the top; "1" picks
    // Canberra (now second) and moves it back up; Enter submits: Canberra, Melbourne, the XSS.
    wait_text(&client, "#prompt", "capital of Australia").await;
    let xss_card = client.find(Locator::Css("#cards li:nth-child(2) .text")).await.unwrap();
    assert_eq!(xss_card.text().await.unwrap(), XSS, "markup in a response is shown as text");
    let injected = client
        .execute(
            "return [window.__xss ?? null, document.querySelectorAll('#cards img, #cards script').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, serde_json::json!([null, 0]), "the payload neither ran nor became elements");
    let mut keys = KeyActions::new("keyboard".into());
    for key in ['3', Key::Up.into(), Key::Up.into(), '1', Key::Up.into(), Key::Enter.into()] {
        keys = keys.then(KeyAction::Down { value: key }).then(KeyAction::Up { value: key });
    }
    client.perform_actions(keys).await.unwrap();
    client.release_actions().await.unwrap();

    // Task 3: flag it, with a reason.
    wait_text(&client, "#prompt", "strong password").await;
    client.find(Locator::Css("#flag-open")).await.unwrap().click().await.unwrap();
    client.find(Locator::Css("#flag-reason")).await.unwrap().send_keys("testing the flag").await.unwrap();
    client.find(Locator::Css("#flag button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_text(&client, "#empty", "No task is waiting").await;

    // A state change without the CSRF token, from the page itself: refused.
    let forged = client
        .execute(
            "return fetch('/api/rank', {method: 'POST', headers: {'content-type': 'application/json'}, \
             body: JSON.stringify({task_id: 'drag', order: [0, 1, 2]})}).then(r => r.status);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(forged, serde_json::json!(403));

    // The store holds exactly what was ranked, as it was ranked.
    let store = SqliteStore::open(&db).unwrap();
    let mine: Vec<_> = store.rankings(None).unwrap().into_iter().filter(|r| r.annotator_id == "ann").collect();
    let orders: Vec<(&str, &[usize])> = mine.iter().map(|r| (r.prompt_id.as_str(), r.order.as_slice())).collect();
    assert_eq!(orders, vec![("moon", &[1, 0, 2][..]), ("capital", &[0, 2, 1][..])]);
    assert_eq!(mine[1].responses[1].text, XSS, "stored as given");
    let flags = TaskBoard::open(&db, 60_000).unwrap().flags().unwrap();
    assert_eq!((flags.len(), flags[0].task_id.as_str(), flags[0].reason.as_str()), (1, "flag", "testing the flag"));

    // The admin's dashboard.
    client.delete_all_cookies().await.unwrap();
    login(&client, &base, &boss).await;
    wait_text(&client, "#who", "boss").await;
    client.goto(&format!("{base}dashboard")).await.unwrap();
    wait_text(&client, "#rows", "maria").await;
    wait_text(&client, "#flags", "testing the flag").await;
    std::fs::write(screenshots_dir().join("dashboard.png"), client.screenshot().await.unwrap()).unwrap();
    client.close().await.unwrap();
}
