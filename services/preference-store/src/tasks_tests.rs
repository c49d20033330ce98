//! The task board: leases that expire, never more than N rankings a task, annotators racing for
//! the same tasks from their own connections, tokens stored only hashed.

use std::path::Path;

use rlhf_types::RankedResponse;

use crate::tasks::{NewTask, Progress, TaskBoard};
use crate::{PreferenceStore, SqliteStore};

const LEASE: i64 = 60_000;

fn task(id: &str, needed: usize) -> NewTask {
    NewTask {
        id: id.into(),
        prompt_id: "p".into(),
        responses: ["a", "b", "c"]
            .iter()
            .map(|r| RankedResponse { response_id: format!("{id}-{r}"), text: format!("answer {r}"), tokens: vec![] })
            .collect(),
        needed,
        gold_order: None,
    }
}

/// A board over a fresh database file with prompt `p` registered and `annotators` added.
fn board(dir: &Path, annotators: &[&str]) -> TaskBoard {
    let db = dir.join("prefs.sqlite");
    SqliteStore::open(&db).unwrap().register_prompts(&[("p".into(), "Which is best?".into())]).unwrap();
    let mut board = TaskBoard::open(&db, LEASE).unwrap();
    for a in annotators {
        board.add_annotator(a, false, 0).unwrap();
    }
    board
}

#[test]
fn a_lease_expires_and_a_late_ranking_never_takes_a_slot_that_was_handed_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut board = board(dir.path(), &["ann", "bob"]);
    board.enqueue(&[task("t1", 1)]).unwrap();
    let t = board.next_task("ann", 0).unwrap().expect("a task for ann");
    assert_eq!((t.id.as_str(), t.prompt_text.as_str(), t.leased_until_ms), ("t1", "Which is best?", LEASE));
    // Held by ann: nothing for bob, and ann asking again gets the same task.
    assert!(board.next_task("bob", 1_000).unwrap().is_none());
    assert_eq!(board.next_task("ann", 2_000).unwrap().unwrap().id, "t1");
    // Ann walks away; her lease (renewed at 2 s) ends, and the task goes to bob.
    let later = 2_000 + LEASE + 1;
    assert_eq!(board.next_task("bob", later).unwrap().unwrap().id, "t1");
    // Ann's late ranking is refused: bob holds the only slot. Bob's counts.
    let refused = board.submit("ann", "t1", &[0, 1, 2], later + 1).unwrap_err().to_string();
    assert!(refused.contains("expired"), "{refused}");
    let ranking = board.submit("bob", "t1", &[2, 0, 1], later + 2).unwrap();
    assert_eq!((ranking.annotator_id.as_str(), ranking.order.as_slice()), ("bob", &[2, 0, 1][..]));
    // Closed: a second ranking by bob, or ties, are refused; the store has exactly one.
    assert!(board.submit("bob", "t1", &[0, 1, 2], later + 3).is_err());
    assert_eq!(board.progress().unwrap(), Progress { tasks: 1, complete: 1, missing: 0, flagged: 0 });
    let store = SqliteStore::open(&dir.path().join("prefs.sqlite")).unwrap();
    assert_eq!(store.rankings(None).unwrap(), vec![ranking]);
}

#[test]
fn invalid_rankings_skips_and_flags_store_nothing_and_count_for_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut board = board(dir.path(), &["ann", "bob"]);
    board.enqueue(&[task("t1", 2)]).unwrap();
    board.next_task("ann", 0).unwrap().unwrap();
    for bad in [&[0, 0, 1][..], &[0, 1][..], &[0, 1, 7][..]] {
        assert!(board.submit("ann", "t1", bad, 1).is_err(), "{bad:?} was taken");
    }
    board.decline("ann", "t1", None, 2).unwrap();
    // Ann skipped it: she is not given it again; bob is, and may flag it.
    assert!(board.next_task("ann", 3).unwrap().is_none());
    assert_eq!(board.progress().unwrap(), Progress { tasks: 1, complete: 0, missing: 2, flagged: 0 });
    board.next_task("bob", 3).unwrap().unwrap();
    board.decline("bob", "t1", Some("asks for something harmful"), 4).unwrap();
    // A flagged task is withdrawn: nobody gets it, and collection no longer waits for it.
    board.add_annotator("cy", false, 5).unwrap();
    assert!(board.next_task("cy", 5).unwrap().is_none());
    assert_eq!(board.progress().unwrap(), Progress { tasks: 1, complete: 0, missing: 0, flagged: 1 });
    assert!(SqliteStore::open(&dir.path().join("prefs.sqlite")).unwrap().rankings(None).unwrap().is_empty());
}

#[test]
fn tokens_are_shown_once_and_stored_only_hashed_and_paused_annotators_get_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut board = board(dir.path(), &[]);
    let token = board.add_annotator("carol", true, 0).unwrap();
    let who = board.authenticate(&token).unwrap().expect("the token logs carol in");
    assert_eq!((who.id.as_str(), who.admin, who.paused), ("carol", true, false));
    assert!(board.authenticate("not-a-token").unwrap().is_none());
    assert!(board.add_annotator("carol", false, 0).is_err(), "a name twice");
    assert!(board.add_annotator("<script>", false, 0).is_err(), "a name that is not plain");
    let bytes = std::fs::read(dir.path().join("prefs.sqlite")).unwrap();
    let wal = std::fs::read(dir.path().join("prefs.sqlite-wal")).unwrap_or_default();
    let stored = |needle: &str| [&bytes, &wal].iter().any(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()));
    assert!(!stored(&token), "the token itself was stored");
    board.enqueue(&[task("t1", 1)]).unwrap();
    board.set_paused("carol", true).unwrap();
    assert!(board.next_task("carol", 0).unwrap().is_none());
    board.set_paused("carol", false).unwrap();
    assert!(board.next_task("carol", 0).unwrap().is_some());
}

#[test]
fn annotators_racing_from_their_own_connections_lose_nothing_and_never_exceed_n() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["ann", "bob", "cat"];
    let mut setup = board(dir.path(), &names);
    let tasks: Vec<NewTask> = (0..20).map(|i| task(&format!("t{i:02}"), 2)).collect();
    setup.enqueue(&tasks).unwrap();
    let db = dir.path().join("prefs.sqlite");
    let workers: Vec<_> = names
        .iter()
        .map(|&name| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut own = TaskBoard::open(&db, LEASE).unwrap();
                let mut ranked = vec![];
                while let Some(t) = own.next_task(name, 0).unwrap() {
                    own.submit(name, &t.id, &[1, 2, 0], 1).unwrap();
                    ranked.push(t.id);
                }
                ranked
            })
        })
        .collect();
    let mut all: Vec<(String, &str)> = vec![];
    for (worker, name) in workers.into_iter().zip(names) {
        let ranked = worker.join().unwrap();
        let mut unique = ranked.clone();
        unique.dedup();
        assert_eq!(unique.len(), ranked.len(), "{name} got a task twice");
        all.extend(ranked.into_iter().map(|t| (t, name)));
    }
    // Every task ranked by exactly 2 distinct annotators, and every ranking stored.
    assert_eq!(all.len(), 40);
    for t in &tasks {
        let by: Vec<&str> = all.iter().filter(|(id, _)| *id == t.id).map(|(_, n)| *n).collect();
        assert_eq!(by.len(), 2, "{}: ranked by {by:?}", t.id);
        assert_ne!(by[0], by[1]);
    }
    assert_eq!(setup.progress().unwrap(), Progress { tasks: 20, complete: 20, missing: 0, flagged: 0 });
    assert_eq!(SqliteStore::open(&db).unwrap().stats().unwrap().rankings, 40);
}
