//! Storage: the embedded metadata store (redb) and the content store.
//!
//! One redb database per process holds every table: the namespace's nodes,
//! directory entries and tombstones, the sync queue, the content store's
//! manifests, and a small key-value table. Sharing one database is what lets a
//! namespace change and its queued event commit in one transaction.

pub mod content;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};

use crate::{Error, Result};

/// How much memory redb may use for its page cache by default.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Small values the engine keeps: the local region's identity, the applied sequence, ...
pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Opens (creating if needed) the metadata database at `path`, with the
/// default page cache.
pub fn open_database(path: &Path) -> Result<Arc<Database>> {
    open_database_with_cache(path, DEFAULT_CACHE_BYTES)
}

/// Opens the metadata database with a page cache of at most `cache_bytes`: the
/// only memory the metadata store holds that grows with the namespace.
pub fn open_database_with_cache(path: &Path, cache_bytes: usize) -> Result<Arc<Database>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    }
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)?;
    Ok(Arc::new(db))
}

/// A database that lives in memory only: for tests and benchmarks.
pub fn memory_database() -> Result<Arc<Database>> {
    let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
    Ok(Arc::new(db))
}

/// Reads a key-value entry.
pub fn kv_get(db: &Database, key: &str) -> Result<Option<Vec<u8>>> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(KV) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get(key)?.map(|v| v.value().to_vec()))
}

/// Writes a key-value entry durably.
pub fn kv_put(db: &Database, key: &str, value: &[u8]) -> Result<()> {
    let txn = db.begin_write()?;
    txn.open_table(KV)?.insert(key, value)?;
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_round_trip_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let db = open_database(&path).unwrap();
            assert_eq!(kv_get(&db, "epoch").unwrap(), None);
            kv_put(&db, "epoch", b"e1").unwrap();
        }
        let db = open_database(&path).unwrap();
        assert_eq!(kv_get(&db, "epoch").unwrap().as_deref(), Some(&b"e1"[..]));
    }
}
