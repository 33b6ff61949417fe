//! The run's store: every completed call (model generation, simulator reply, judge verdict, ...) kept
//! in SQLite under a content hash of its inputs, written the moment it completes.
//!
//! A rerun into the same directory finds each completed call by its key and repeats none of them;
//! killing the process loses at most the calls in flight. The store holds no secret: keys and
//! requests are built from model names, messages and parameters only, never from the API key.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::EvalError;

/// The file name of the store inside a run directory.
pub const STORE_FILE: &str = "store.sqlite";

/// The content hash of a call: SHA-256 over the canonical JSON of its kind, actor and request.
pub fn call_key(kind: &str, actor: &str, request: &Value) -> String {
    let canonical = serde_json::json!({ "kind": kind, "actor": actor, "request": request });
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&canonical).expect("JSON values serialize"));
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A short stable hash of any serializable value (run ids, default run directories).
pub fn short_hash(v: &impl Serialize) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(v).expect("serializable"));
    hex(&h.finalize())[..12].to_string()
}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> EvalError + '_ {
    move |e| EvalError::Store(format!("{}: {e}", path.display()))
}

impl Store {
    /// Opens (creating if needed) the store of a run directory.
    pub fn open(dir: &Path) -> Result<Self, EvalError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            EvalError::Store(format!(
                "cannot create run directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(STORE_FILE);
        let conn = Connection::open(&path).map_err(db_err(&path))?;
        // WAL: each commit is one append; a killed process leaves every committed call readable.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS calls (
                 key TEXT PRIMARY KEY,
                 kind TEXT NOT NULL,
                 actor TEXT NOT NULL,
                 request TEXT NOT NULL,
                 response TEXT NOT NULL,
                 created_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(db_err(&path))?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: SQLite rolls back.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored response of a call, if it completed before.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, EvalError> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT response FROM calls WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err(&self.path))?;
        match text {
            None => Ok(None),
            Some(t) => serde_json::from_str(&t).map(Some).map_err(|e| {
                EvalError::Store(format!(
                    "stored call {key} does not parse ({e}); delete the run directory"
                ))
            }),
        }
    }

    /// Stores a completed call (the first result wins if two race).
    pub fn put(
        &self,
        key: &str,
        kind: &str,
        actor: &str,
        request: &Value,
        response: &impl Serialize,
    ) -> Result<(), EvalError> {
        let response = serde_json::to_string(response).expect("responses serialize");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO calls (key, kind, actor, request, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key, kind, actor, request.to_string(), response, now as i64],
            )
            .map_err(db_err(&self.path))?;
        tracing::debug!(kind, actor, key = &key[..12], "stored call");
        Ok(())
    }

    /// Number of stored calls of one kind (all kinds when `None`).
    pub fn count(&self, kind: Option<&str>) -> Result<u64, EvalError> {
        let conn = self.conn();
        let n: i64 = match kind {
            Some(k) => conn.query_row(
                "SELECT COUNT(*) FROM calls WHERE kind = ?1",
                params![k],
                |r| r.get(0),
            ),
            None => conn.query_row("SELECT COUNT(*) FROM calls", [], |r| r.get(0)),
        }
        .map_err(db_err(&self.path))?;
        Ok(n as u64)
    }

    pub fn set_meta(&self, name: &str, value: &impl Serialize) -> Result<(), EvalError> {
        let v = serde_json::to_string(value).expect("meta values serialize");
        self.conn()
            .execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                params![name, v],
            )
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    pub fn get_meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, EvalError> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT value FROM meta WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err(&self.path))?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| EvalError::Store(format!("meta '{name}' does not parse: {e}")))
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_depend_on_every_input_and_not_on_map_order() {
        let a = call_key("chat", "m", &json!({"x": 1, "y": [1, 2]}));
        assert_eq!(
            a,
            call_key(
                "chat",
                "m",
                &serde_json::from_str(r#"{"y": [1, 2], "x": 1}"#).unwrap()
            )
        );
        assert_ne!(a, call_key("chat", "m2", &json!({"x": 1, "y": [1, 2]})));
        assert_ne!(a, call_key("judge", "m", &json!({"x": 1, "y": [1, 2]})));
        assert_ne!(a, call_key("chat", "m", &json!({"x": 2, "y": [1, 2]})));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn calls_and_meta_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let key = call_key("chat", "m", &json!({"q": "hi"}));
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.get::<String>(&key).unwrap(), None);
            s.put(&key, "chat", "m", &json!({"q": "hi"}), &"hello")
                .unwrap();
            s.put(&key, "chat", "m", &json!({"q": "hi"}), &"second")
                .unwrap();
            s.set_meta("run", &json!({"a": 1})).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get::<String>(&key).unwrap().as_deref(), Some("hello"));
        assert_eq!(s.count(Some("chat")).unwrap(), 1);
        assert_eq!(s.count(Some("judge")).unwrap(), 0);
        assert_eq!(s.get_meta::<Value>("run").unwrap(), Some(json!({"a": 1})));
    }
}
