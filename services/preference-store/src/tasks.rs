//! Ranking tasks for people: each task (a prompt and its K responses) is assigned to `needed`
//! distinct annotators; an assignment is a lease that expires, so an abandoned task goes back to
//! the queue. A ranking is stored, and its assignment closed, in one transaction.
//!
//! Every operation that hands out or closes a slot runs in an IMMEDIATE transaction (SQLite's
//! write lock, taken before reading), so two annotators asking at once never both get a task's
//! last slot, and a task never gets more than `needed` rankings: a ranking submitted after its
//! lease expired is taken only while the task still has a free slot.
//!
//! Annotators log in with a token shown once, when they are added; only its SHA-256 is stored.
//! Times are passed in (`now_ms`), so the lease logic is tested without waiting.

use std::path::Path;

use rlhf_types::{RankedResponse, Ranking};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::sqlite::{SCHEMA, insert_ranking};
use crate::{Error, Result};

const TASK_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS annotators (
    id              TEXT PRIMARY KEY,
    token_sha256    TEXT NOT NULL UNIQUE,
    admin           INTEGER NOT NULL,
    paused          INTEGER NOT NULL DEFAULT 0,
    created_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    prompt_id       TEXT NOT NULL REFERENCES prompts(id),
    responses_json  TEXT NOT NULL,
    needed          INTEGER NOT NULL,
    gold_order_json TEXT
);
CREATE TABLE IF NOT EXISTS assignments (
    task_id         TEXT NOT NULL REFERENCES tasks(id),
    annotator_id    TEXT NOT NULL REFERENCES annotators(id),
    state           TEXT NOT NULL CHECK (state IN ('leased', 'ranked', 'skipped', 'flagged')),
    leased_until_ms INTEGER NOT NULL,
    opened_ms       INTEGER NOT NULL,
    closed_ms       INTEGER,
    reason          TEXT,
    PRIMARY KEY (task_id, annotator_id)
);
";

/// How long a task stays with an annotator who opened it: ample for reading K responses.
pub const DEFAULT_LEASE_MS: i64 = 10 * 60 * 1000;

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// A task to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub id: String,
    pub prompt_id: String,
    /// The K responses, in the order cards are shown.
    pub responses: Vec<RankedResponse>,
    /// Distinct annotators who are to rank it.
    pub needed: usize,
    /// For gold tasks, the known order (indices into `responses`, best first).
    pub gold_order: Option<Vec<usize>>,
}

/// A task handed to an annotator.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub prompt_id: String,
    pub prompt_text: String,
    pub responses: Vec<RankedResponse>,
    pub leased_until_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotator {
    pub id: String,
    pub admin: bool,
    pub paused: bool,
}

/// How far collection has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Progress {
    pub tasks: u64,
    /// Tasks with all their rankings.
    pub complete: u64,
    /// Rankings still to come, over the tasks not flagged.
    pub missing: u64,
    /// Tasks flagged as unsafe: withdrawn, handed to nobody and waited for by nobody (the
    /// dashboard lists them with their reasons).
    pub flagged: u64,
}

/// The tasks, assignments and annotators in a preference database.
#[derive(Debug)]
pub struct TaskBoard {
    pub(crate) conn: Connection,
    lease_ms: i64,
    path: std::path::PathBuf,
}

fn sha256_hex(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl TaskBoard {
    /// Opens the board in the preference database at `path` (created if missing); a lease lasts
    /// `lease_ms`.
    pub fn open(path: &Path, lease_ms: i64) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(storage)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(storage)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        conn.execute_batch(TASK_SCHEMA).map_err(storage)?;
        Ok(TaskBoard { conn, lease_ms, path: path.to_path_buf() })
    }

    /// The preference database the board lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds an annotator and returns their login token: shown this once, stored only hashed.
    pub fn add_annotator(&mut self, id: &str, admin: bool, now_ms: i64) -> Result<String> {
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::Storage(format!("annotator name {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'")));
        }
        let token: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        self.conn
            .execute(
                "INSERT INTO annotators (id, token_sha256, admin, created_unix_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id, sha256_hex(&token), admin, now_ms],
            )
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    Error::Storage(format!("an annotator named {id} already exists"))
                }
                _ => Error::Storage(format!("annotator {id}: {e}")),
            })?;
        Ok(token)
    }

    /// The annotator whose token this is.
    pub fn authenticate(&self, token: &str) -> Result<Option<Annotator>> {
        self.conn
            .query_row(
                "SELECT id, admin, paused FROM annotators WHERE token_sha256 = ?1",
                params![sha256_hex(token)],
                |r| Ok(Annotator { id: r.get(0)?, admin: r.get(1)?, paused: r.get(2)? }),
            )
            .optional()
            .map_err(storage)
    }

    /// Pauses (or resumes) an annotator: a paused one is handed no tasks.
    pub fn set_paused(&mut self, id: &str, paused: bool) -> Result<()> {
        let changed = self
            .conn
            .execute("UPDATE annotators SET paused = ?2 WHERE id = ?1", params![id, paused])
            .map_err(storage)?;
        if changed == 0 {
            return Err(Error::Storage(format!("no annotator {id:?}")));
        }
        Ok(())
    }

    /// Enqueues tasks (of registered prompts); a task id already there is left as it is.
    pub fn enqueue(&mut self, tasks: &[NewTask]) -> Result<()> {
        let tx = self.conn.transaction().map_err(storage)?;
        for t in tasks {
            if t.needed == 0 || t.responses.len() < 2 {
                return Err(Error::Storage(format!("task {}: needs 2+ responses and 1+ annotators", t.id)));
            }
            let responses: Vec<(&str, &str, &[u32])> =
                t.responses.iter().map(|r| (r.response_id.as_str(), r.text.as_str(), r.tokens.as_slice())).collect();
            tx.execute(
                "INSERT OR IGNORE INTO tasks (id, prompt_id, responses_json, needed, gold_order_json)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    t.id,
                    t.prompt_id,
                    serde_json::to_string(&responses).map_err(storage)?,
                    t.needed as i64,
                    t.gold_order.as_ref().map(serde_json::to_string).transpose().map_err(storage)?
                ],
            )
            .map_err(|e| Error::Storage(format!("task {}: {e}", t.id)))?;
        }
        tx.commit().map_err(storage)
    }

    /// The task `annotator` should rank next, leased to them until now + the lease: the one they
    /// already hold, else the oldest task they have not closed that still has a free slot.
    pub fn next_task(&mut self, annotator: &str, now_ms: i64) -> Result<Option<Task>> {
        let until = now_ms + self.lease_ms;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(storage)?;
        let paused: Option<bool> = tx
            .query_row("SELECT paused FROM annotators WHERE id = ?1", params![annotator], |r| r.get(0))
            .optional()
            .map_err(storage)?;
        match paused {
            None => return Err(Error::Storage(format!("no annotator {annotator:?}"))),
            Some(true) => return Ok(None),
            Some(false) => {}
        }
        let held: Option<String> = tx
            .query_row(
                "SELECT task_id FROM assignments WHERE annotator_id = ?1 AND state = 'leased' AND leased_until_ms > ?2",
                params![annotator, now_ms],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?;
        let task_id = match held {
            Some(id) => Some(id),
            None => tx
                .query_row(
                    "SELECT t.id FROM tasks t
                     WHERE NOT EXISTS (SELECT 1 FROM assignments a
                                       WHERE a.task_id = t.id AND a.annotator_id = ?1 AND a.state != 'leased')
                       AND NOT EXISTS (SELECT 1 FROM assignments f WHERE f.task_id = t.id AND f.state = 'flagged')
                       AND (SELECT COUNT(*) FROM assignments a
                            WHERE a.task_id = t.id AND a.annotator_id != ?1
                              AND (a.state = 'ranked' OR (a.state = 'leased' AND a.leased_until_ms > ?2))) < t.needed
                     ORDER BY t.seq LIMIT 1",
                    params![annotator, now_ms],
                    |r| r.get(0),
                )
                .optional()
                .map_err(storage)?,
        };
        let Some(task_id) = task_id else { return Ok(None) };
        // A task opened again after its lease ran out keeps its first opening time: the time
        // per task on the dashboard is from first sight to the ranking.
        tx.execute(
            "INSERT INTO assignments (task_id, annotator_id, state, leased_until_ms, opened_ms)
             VALUES (?1, ?2, 'leased', ?3, ?4)
             ON CONFLICT (task_id, annotator_id) DO UPDATE SET state = 'leased', leased_until_ms = ?3",
            params![task_id, annotator, until, now_ms],
        )
        .map_err(storage)?;
        let task = task_of(&tx, &task_id, until)?;
        tx.commit().map_err(storage)?;
        Ok(Some(task))
    }

    /// Stores `annotator`'s ranking of `task_id` (`order`: indices into the task's responses,
    /// best first) and closes the assignment, in one transaction. Refused when they hold no
    /// assignment of it, or their lease expired and the task's slots are taken meanwhile.
    pub fn submit(&mut self, annotator: &str, task_id: &str, order: &[usize], now_ms: i64) -> Result<Ranking> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(storage)?;
        let (prompt_id, responses, ranking_id) = open_assignment(&tx, annotator, task_id, now_ms)?;
        let ranking = Ranking {
            ranking_id,
            prompt_id,
            responses,
            order: order.to_vec(),
            annotator_id: annotator.to_string(),
            created_unix_ms: now_ms,
        };
        ranking.validate()?;
        insert_ranking(&tx, &ranking)?;
        close(&tx, annotator, task_id, "ranked", None, now_ms)?;
        tx.commit().map_err(storage)?;
        Ok(ranking)
    }

    /// Closes `annotator`'s assignment of `task_id` without a ranking: skipped, or flagged (as
    /// unsafe, with a reason). Neither counts towards the task's rankings; a flag withdraws the
    /// task from everyone.
    pub fn decline(&mut self, annotator: &str, task_id: &str, flag_reason: Option<&str>, now_ms: i64) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(storage)?;
        open_assignment(&tx, annotator, task_id, now_ms)?;
        let state = if flag_reason.is_some() { "flagged" } else { "skipped" };
        close(&tx, annotator, task_id, state, flag_reason, now_ms)?;
        tx.commit().map_err(storage)
    }

    /// The known order of every gold task, as response ids best first, by prompt id (what
    /// [`crate::quality::report`] compares annotators with; one gold task per prompt).
    pub fn gold_orders(&self) -> Result<std::collections::HashMap<String, Vec<String>>> {
        let mut stmt = self
            .conn
            .prepare("SELECT prompt_id, responses_json, gold_order_json FROM tasks WHERE gold_order_json IS NOT NULL")
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(storage)?;
        let mut gold = std::collections::HashMap::new();
        for row in rows {
            let (prompt_id, responses, order) = row.map_err(storage)?;
            let responses = responses_of(&responses)?;
            let order: Vec<usize> = serde_json::from_str(&order).map_err(storage)?;
            let ids = order.iter().filter_map(|&i| responses.get(i)).map(|r| r.response_id.clone()).collect();
            gold.insert(prompt_id, ids);
        }
        Ok(gold)
    }

    /// The ids of every enqueued task (a resumed collection enqueues only the others).
    pub fn task_ids(&self) -> Result<std::collections::HashSet<String>> {
        let mut stmt = self.conn.prepare("SELECT id FROM tasks").map_err(storage)?;
        let ids = stmt.query_map([], |r| r.get(0)).map_err(storage)?;
        ids.collect::<rusqlite::Result<_>>().map_err(storage)
    }

    pub fn progress(&self) -> Result<Progress> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(ranked >= needed AND NOT flagged), 0),
                        COALESCE(SUM(CASE WHEN flagged THEN 0 ELSE MAX(needed - ranked, 0) END), 0),
                        COALESCE(SUM(flagged), 0) FROM
                   (SELECT t.needed AS needed,
                           (SELECT COUNT(*) FROM assignments a WHERE a.task_id = t.id AND a.state = 'ranked') AS ranked,
                           EXISTS (SELECT 1 FROM assignments a WHERE a.task_id = t.id AND a.state = 'flagged') AS flagged
                    FROM tasks t)",
                [],
                |r| {
                    Ok(Progress {
                        tasks: r.get::<_, i64>(0)? as u64,
                        complete: r.get::<_, i64>(1)? as u64,
                        missing: r.get::<_, i64>(2)? as u64,
                        flagged: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .map_err(storage)
    }
}

/// The task `task_id` as leased until `until`.
fn task_of(tx: &rusqlite::Transaction<'_>, task_id: &str, until: i64) -> Result<Task> {
    let (prompt_id, prompt_text, responses): (String, String, String) = tx
        .query_row(
            "SELECT t.prompt_id, p.text, t.responses_json FROM tasks t JOIN prompts p ON p.id = t.prompt_id WHERE t.id = ?1",
            params![task_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(storage)?;
    Ok(Task {
        id: task_id.to_string(),
        prompt_id,
        prompt_text,
        responses: responses_of(&responses)?,
        leased_until_ms: until,
    })
}

fn responses_of(json: &str) -> Result<Vec<RankedResponse>> {
    let raw: Vec<(String, String, Vec<u32>)> = serde_json::from_str(json).map_err(storage)?;
    Ok(raw.into_iter().map(|(response_id, text, tokens)| RankedResponse { response_id, text, tokens }).collect())
}

/// Checks that `annotator` may close `task_id` now; returns the task's prompt, responses and the
/// id its ranking gets.
fn open_assignment(
    tx: &rusqlite::Transaction<'_>,
    annotator: &str,
    task_id: &str,
    now_ms: i64,
) -> Result<(String, Vec<RankedResponse>, String)> {
    let row: Option<(String, i64, i64, String, String)> = tx
        .query_row(
            "SELECT a.state, a.leased_until_ms, t.needed, t.prompt_id, t.responses_json
             FROM assignments a JOIN tasks t ON t.id = a.task_id WHERE a.task_id = ?1 AND a.annotator_id = ?2",
            params![task_id, annotator],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()
        .map_err(storage)?;
    let Some((state, until, needed, prompt_id, responses)) = row else {
        return Err(Error::Storage(format!("{annotator} holds no assignment of task {task_id}")));
    };
    if state != "leased" {
        return Err(Error::Storage(format!("{annotator} already closed task {task_id} ({state})")));
    }
    if until <= now_ms {
        // Expired: taken only if the slot was not handed to someone else meanwhile.
        let taken: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM assignments WHERE task_id = ?1 AND annotator_id != ?2
                 AND (state = 'ranked' OR (state = 'leased' AND leased_until_ms > ?3))",
                params![task_id, annotator, now_ms],
                |r| r.get(0),
            )
            .map_err(storage)?;
        if taken >= needed {
            return Err(Error::Storage(format!(
                "the lease on task {task_id} expired and its {needed} slots went to other annotators"
            )));
        }
    }
    Ok((prompt_id, responses_of(&responses)?, format!("{task_id}--{annotator}")))
}

fn close(
    tx: &rusqlite::Transaction<'_>,
    annotator: &str,
    task_id: &str,
    state: &str,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE assignments SET state = ?3, reason = ?4, closed_ms = ?5 WHERE task_id = ?1 AND annotator_id = ?2",
        params![task_id, annotator, state, reason, now_ms],
    )
    .map_err(storage)?;
    Ok(())
}
