//! The history: every job with its parameters, seeds, status, timings and
//! the paths of its PNGs, in SQLite (WAL journal: a killed process loses
//! no committed row). The schema is versioned by `PRAGMA user_version`;
//! [`MIGRATIONS`] only ever grows.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::ServerError;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        parameters TEXT NOT NULL,
        seeds TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        error TEXT,
        queued_ms INTEGER NOT NULL,
        started_ms INTEGER,
        finished_ms INTEGER
    );
    CREATE TABLE images (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        idx INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        file TEXT NOT NULL,
        PRIMARY KEY (job_id, idx)
    );
    CREATE INDEX jobs_by_status ON jobs(status);
"];

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Done,
    Failed,
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// One job as `/api/v1/history` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryItem {
    pub id: i64,
    pub kind: String,
    pub model: String,
    pub status: String,
    pub error: Option<String>,
    pub parameters: serde_json::Value,
    pub seeds: Vec<u64>,
    /// Image file names under the data folder's `images/`.
    pub images: Vec<String>,
    pub queued_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

/// The database, shared by the handlers and the worker.
pub struct Db {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Db {
    /// Opens (or creates) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Db, ServerError> {
        let fail = |source| ServerError::Database {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(fail)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail)?;
        let version: usize = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(fail)?;
        if version > MIGRATIONS.len() {
            return Err(ServerError::Config {
                setting: "--data",
                message: format!(
                    "{}: schema version {version} is newer than this sd ({}); use a newer sd or another --data",
                    path.display(),
                    MIGRATIONS.len()
                ),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(fail)?;
            tx.execute_batch(sql).map_err(fail)?;
            tx.pragma_update(None, "user_version", i + 1)
                .map_err(fail)?;
            tx.commit().map_err(fail)?;
        }
        Ok(Db {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, source: rusqlite::Error) -> ServerError {
        ServerError::Database {
            path: self.path.clone(),
            source,
        }
    }

    /// Jobs left queued or running by a server that stopped (or was killed)
    /// are marked failed; returns how many.
    pub fn fail_interrupted(&self) -> Result<usize, ServerError> {
        self.conn()
            .execute(
                "UPDATE jobs SET status = 'failed', finished_ms = ?1,
                 error = 'interrupted: the server stopped before this job finished'
                 WHERE status IN ('queued', 'running')",
                params![now_ms()],
            )
            .map_err(|e| self.fail(e))
    }

    /// A new queued job; returns its id.
    pub fn insert(
        &self,
        kind: &str,
        model: &str,
        parameters: &crate::job::JobParameters,
        seeds: &[u64],
    ) -> Result<i64, ServerError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO jobs (kind, model, parameters, seeds, status, queued_ms)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5)",
            params![
                kind,
                model,
                serde_json::to_string(parameters).unwrap_or_default(),
                serde_json::to_string(seeds).unwrap_or_default(),
                now_ms()
            ],
        )
        .map_err(|e| self.fail(e))?;
        Ok(conn.last_insert_rowid())
    }

    pub fn mark_running(&self, id: i64) -> Result<(), ServerError> {
        self.conn()
            .execute(
                "UPDATE jobs SET status = 'running', started_ms = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )
            .map(drop)
            .map_err(|e| self.fail(e))
    }

    /// Ends a job; its images (index, seed, file name) in the same transaction.
    pub fn finish(
        &self,
        id: i64,
        status: Status,
        error: Option<&str>,
        images: &[(u64, String)],
    ) -> Result<(), ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.fail(e))?;
        for (idx, (seed, file)) in images.iter().enumerate() {
            tx.execute(
                "INSERT INTO images (job_id, idx, seed, file) VALUES (?1, ?2, ?3, ?4)",
                params![id, idx as i64, *seed as i64, file],
            )
            .map_err(|e| self.fail(e))?;
        }
        tx.execute(
            "UPDATE jobs SET status = ?2, error = ?3, finished_ms = ?4 WHERE id = ?1",
            params![id, status.as_str(), error, now_ms()],
        )
        .map_err(|e| self.fail(e))?;
        tx.commit().map_err(|e| self.fail(e))
    }

    /// Jobs newest first, `limit` from `offset`, and the total count.
    pub fn history(
        &self,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<HistoryItem>, usize), ServerError> {
        let conn = self.conn();
        let total: i64 = conn
            .query_row("SELECT COUNT(*) FROM jobs", [], |row| row.get(0))
            .map_err(|e| self.fail(e))?;
        let mut statement = conn
            .prepare(
                "SELECT id, kind, model, status, error, parameters, seeds, queued_ms, started_ms, finished_ms
                 FROM jobs ORDER BY id DESC LIMIT ?1 OFFSET ?2",
            )
            .map_err(|e| self.fail(e))?;
        let rows = statement
            .query_map(params![limit as i64, offset as i64], read_item)
            .map_err(|e| self.fail(e))?;
        let mut items = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fail(e))?;
        for item in &mut items {
            item.images = images_of(&conn, item.id).map_err(|e| self.fail(e))?;
        }
        Ok((items, total as usize))
    }

    /// One job.
    pub fn job(&self, id: i64) -> Result<Option<HistoryItem>, ServerError> {
        let conn = self.conn();
        let item = conn
            .query_row(
                "SELECT id, kind, model, status, error, parameters, seeds, queued_ms, started_ms, finished_ms
                 FROM jobs WHERE id = ?1",
                params![id],
                read_item,
            )
            .optional()
            .map_err(|e| self.fail(e))?;
        let Some(mut item) = item else {
            return Ok(None);
        };
        item.images = images_of(&conn, id).map_err(|e| self.fail(e))?;
        Ok(Some(item))
    }
}

fn read_item(row: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryItem> {
    let parameters: String = row.get(5)?;
    let seeds: String = row.get(6)?;
    Ok(HistoryItem {
        id: row.get(0)?,
        kind: row.get(1)?,
        model: row.get(2)?,
        status: row.get(3)?,
        error: row.get(4)?,
        parameters: serde_json::from_str(&parameters).unwrap_or(serde_json::Value::Null),
        seeds: serde_json::from_str(&seeds).unwrap_or_default(),
        images: Vec::new(),
        queued_ms: row.get(7)?,
        started_ms: row.get(8)?,
        finished_ms: row.get(9)?,
    })
}

fn images_of(conn: &Connection, id: i64) -> rusqlite::Result<Vec<String>> {
    let mut statement =
        conn.prepare_cached("SELECT file FROM images WHERE job_id = ?1 ORDER BY idx")?;
    let files = statement.query_map(params![id], |row| row.get(0))?;
    files.collect()
}
