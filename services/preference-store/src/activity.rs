//! What the dashboard shows beside the agreement figures: per annotator, tasks ranked, skipped
//! and flagged and the median time from opening a task to ranking it; and the flagged tasks with
//! their reasons.

use rusqlite::params;
use serde::Serialize;

use crate::tasks::TaskBoard;
use crate::{Error, Result};

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// One annotator's work so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Activity {
    pub annotator: String,
    pub admin: bool,
    pub paused: bool,
    pub ranked: u64,
    pub skipped: u64,
    pub flagged: u64,
    /// From first opening a task to ranking it; `None` before the first ranking.
    pub median_ms_per_task: Option<i64>,
}

/// A task someone flagged as unsafe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flag {
    pub task_id: String,
    pub annotator: String,
    pub reason: String,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [i64]) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2 })
}

impl TaskBoard {
    /// Every annotator, in name order, with their work so far.
    pub fn activity(&self) -> Result<Vec<Activity>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT n.id, n.admin, n.paused,
                        COALESCE(SUM(a.state = 'ranked'), 0), COALESCE(SUM(a.state = 'skipped'), 0),
                        COALESCE(SUM(a.state = 'flagged'), 0)
                 FROM annotators n LEFT JOIN assignments a ON a.annotator_id = n.id
                 GROUP BY n.id ORDER BY n.id",
            )
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Activity {
                    annotator: r.get(0)?,
                    admin: r.get(1)?,
                    paused: r.get(2)?,
                    ranked: r.get::<_, i64>(3)? as u64,
                    skipped: r.get::<_, i64>(4)? as u64,
                    flagged: r.get::<_, i64>(5)? as u64,
                    median_ms_per_task: None,
                })
            })
            .map_err(storage)?;
        let mut out: Vec<Activity> = rows.collect::<rusqlite::Result<_>>().map_err(storage)?;
        let mut times = self
            .conn
            .prepare(
                "SELECT closed_ms - opened_ms FROM assignments
                 WHERE annotator_id = ?1 AND state = 'ranked' AND closed_ms IS NOT NULL",
            )
            .map_err(storage)?;
        for a in &mut out {
            let mut ms: Vec<i64> = times
                .query_map(params![a.annotator], |r| r.get(0))
                .map_err(storage)?
                .collect::<rusqlite::Result<_>>()
                .map_err(storage)?;
            a.median_ms_per_task = median(&mut ms);
        }
        Ok(out)
    }

    /// Every task flagged as unsafe, oldest task first.
    pub fn flags(&self) -> Result<Vec<Flag>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT a.task_id, a.annotator_id, COALESCE(a.reason, '') FROM assignments a
                 JOIN tasks t ON t.id = a.task_id WHERE a.state = 'flagged' ORDER BY t.seq, a.annotator_id",
            )
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| Ok(Flag { task_id: r.get(0)?, annotator: r.get(1)?, reason: r.get(2)? }))
            .map_err(storage)?;
        rows.collect::<rusqlite::Result<_>>().map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians_by_hand() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [7]), Some(7));
        assert_eq!(median(&mut [9, 1, 5]), Some(5));
        assert_eq!(median(&mut [4, 1, 10, 2]), Some(3));
    }
}
