//! Durable auth state in an embedded redb database: accounts, rules and refresh tokens as JSON under string keys.
//!
//! Writes are small and rare (logins rotate a refresh token), each in its own durable transaction; callers run
//! them off the async workers.

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use std::path::Path;

/// The one table: `<kind>/<namespace>/<id>` → JSON.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("auth");

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("auth store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// The auth database.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(TABLE).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// Every value under `prefix`, decoded; undecodable entries are skipped with a warning.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(TABLE).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            let key = k.value().to_string();
            if !key.starts_with(prefix) {
                break;
            }
            match serde_json::from_slice(v.value()) {
                Ok(value) => out.push((key, value)),
                Err(e) => tracing::warn!(%key, error = %e, "skipping an unreadable auth record"),
            }
        }
        Ok(out)
    }

    /// Writes and deletes in one durable transaction.
    pub fn apply<T: Serialize>(&self, puts: &[(String, T)], deletes: &[String]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(TABLE).map_err(err)?;
            for (k, v) in puts {
                let bytes = serde_json::to_vec(v).map_err(err)?;
                table.insert(k.as_str(), bytes.as_slice()).map_err(err)?;
            }
            for k in deletes {
                table.remove(k.as_str()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}
