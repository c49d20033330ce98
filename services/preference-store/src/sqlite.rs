//! SQLite backend: one file, WAL journal, one transaction per ranking.

use std::path::Path;

use rlhf_types::{RankedResponse, Ranking};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{Error, PreferenceStore, Result, Stats};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS prompts (
    id   TEXT PRIMARY KEY,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rankings (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    prompt_id       TEXT NOT NULL REFERENCES prompts(id),
    annotator_id    TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    k               INTEGER NOT NULL,
    order_json      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS responses (
    ranking_id  TEXT NOT NULL REFERENCES rankings(id),
    position    INTEGER NOT NULL,
    response_id TEXT NOT NULL,
    text        TEXT NOT NULL,
    tokens_json TEXT NOT NULL,
    PRIMARY KEY (ranking_id, position)
);
CREATE INDEX IF NOT EXISTS rankings_by_prompt ON rankings(prompt_id);
";

/// The embedded preference store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(storage)?;
        // The preference service and a pipeline stage may share one file: wait for the other's lock.
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(storage)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        Ok(SqliteStore { conn })
    }

    /// A store that lives in memory only, for tests.
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(storage)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        Ok(SqliteStore { conn })
    }

    fn responses_of(&self, ranking_id: &str) -> Result<Vec<RankedResponse>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT response_id, text, tokens_json FROM responses WHERE ranking_id = ?1 ORDER BY position",
            )
            .map_err(storage)?;
        let rows = stmt
            .query_map(params![ranking_id], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?))
            })
            .map_err(storage)?;
        rows.map(|row| {
            let (response_id, text, tokens) = row.map_err(storage)?;
            let tokens = serde_json::from_str(&tokens).map_err(storage)?;
            Ok(RankedResponse { response_id, text, tokens })
        })
        .collect()
    }
}

/// Writes `ranking` (already validated, of a known prompt) and its responses inside `tx`; a
/// ranking id already stored is refused. The task board calls it in the transaction that also
/// closes the annotator's assignment.
pub(crate) fn insert_ranking(tx: &rusqlite::Transaction<'_>, ranking: &Ranking) -> Result<()> {
    let exists: Option<i64> = tx
        .query_row("SELECT 1 FROM rankings WHERE id = ?1", params![ranking.ranking_id], |r| r.get(0))
        .optional()
        .map_err(storage)?;
    if exists.is_some() {
        return Err(Error::DuplicateRanking(ranking.ranking_id.clone()));
    }
    tx.execute(
        "INSERT INTO rankings (id, prompt_id, annotator_id, created_unix_ms, k, order_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            ranking.ranking_id,
            ranking.prompt_id,
            ranking.annotator_id,
            ranking.created_unix_ms,
            ranking.responses.len() as i64,
            serde_json::to_string(&ranking.order).map_err(storage)?
        ],
    )
    .map_err(storage)?;
    for (position, response) in ranking.responses.iter().enumerate() {
        tx.execute(
            "INSERT INTO responses (ranking_id, position, response_id, text, tokens_json) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                ranking.ranking_id,
                position as i64,
                response.response_id,
                response.text,
                serde_json::to_string(&response.tokens).map_err(storage)?
            ],
        )
        .map_err(storage)?;
    }
    Ok(())
}

impl PreferenceStore for SqliteStore {
    fn register_prompts(&mut self, prompts: &[(String, String)]) -> Result<()> {
        let tx = self.conn.transaction().map_err(storage)?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT OR IGNORE INTO prompts (id, text) VALUES (?1, ?2)").map_err(storage)?;
            for (id, text) in prompts {
                stmt.execute(params![id, text]).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)
    }

    fn submit(&mut self, ranking: &Ranking) -> Result<()> {
        ranking.validate()?;
        let known: Option<i64> = self
            .conn
            .query_row("SELECT 1 FROM prompts WHERE id = ?1", params![ranking.prompt_id], |r| r.get(0))
            .optional()
            .map_err(storage)?;
        if known.is_none() {
            return Err(Error::UnknownPrompt(ranking.prompt_id.clone()));
        }
        let tx = self.conn.transaction().map_err(storage)?;
        insert_ranking(&tx, ranking)?;
        tx.commit().map_err(storage)
    }

    fn prompts(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached("SELECT id, text FROM prompts ORDER BY id").map_err(storage)?;
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(storage)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(storage)
    }

    fn rankings(&self, prompt_id: Option<&str>) -> Result<Vec<Ranking>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, prompt_id, annotator_id, created_unix_ms, order_json FROM rankings
                 WHERE ?1 IS NULL OR prompt_id = ?1 ORDER BY seq",
            )
            .map_err(storage)?;
        let heads = stmt
            .query_map(params![prompt_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, String>(4)?,
                ))
            })
            .map_err(storage)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(storage)?;
        heads
            .into_iter()
            .map(|(ranking_id, prompt_id, annotator_id, created_unix_ms, order)| {
                Ok(Ranking {
                    responses: self.responses_of(&ranking_id)?,
                    order: serde_json::from_str(&order).map_err(storage)?,
                    ranking_id,
                    prompt_id,
                    annotator_id,
                    created_unix_ms,
                })
            })
            .collect()
    }

    fn stats(&self) -> Result<Stats> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(k * (k - 1) / 2), 0), COUNT(DISTINCT prompt_id), COUNT(DISTINCT annotator_id)
                 FROM rankings",
                [],
                |r| {
                    Ok(Stats {
                        rankings: r.get::<_, i64>(0)? as u64,
                        pairs: r.get::<_, i64>(1)? as u64,
                        prompts: r.get::<_, i64>(2)? as u64,
                        annotators: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .map_err(storage)
    }
}
