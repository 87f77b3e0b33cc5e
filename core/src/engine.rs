//! A region's local state in one place: the metadata database, the content
//! store, the sync queue and the namespace over them, opened from one data
//! directory (`<dir>/meta.redb`, `<dir>/content/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::Database;

use crate::Result;
use crate::clock::Hlc;
use crate::namespace::{Namespace, NamespaceConfig};
use crate::queue::{QueueConfig, SyncQueue};
use crate::store::content::{ContentConfig, ContentStore};
use crate::store::{memory_database, open_database_with_cache};

/// Everything an engine needs to open.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub namespace: NamespaceConfig,
    pub queue: QueueConfig,
    pub content: ContentConfig,
    /// The metadata store's page cache budget in bytes.
    pub meta_cache_bytes: usize,
}

impl EngineConfig {
    pub fn new(namespace: NamespaceConfig) -> Self {
        EngineConfig {
            namespace,
            queue: QueueConfig::default(),
            content: ContentConfig::default(),
            meta_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
        }
    }
}

/// A region's opened local state.
pub struct Engine {
    pub db: Arc<Database>,
    pub content: Arc<ContentStore>,
    pub queue: Arc<SyncQueue>,
    pub namespace: Arc<Namespace>,
    pub dir: PathBuf,
}

impl Engine {
    /// Opens (creating if needed) the state under `dir`.
    pub fn open(dir: &Path, config: EngineConfig) -> Result<Engine> {
        let db = open_database_with_cache(&dir.join("meta.redb"), config.meta_cache_bytes)?;
        Self::assemble(db, dir, config, None)
    }

    /// Metadata in memory, content under `dir`: for tests and benchmarks.
    pub fn in_memory(dir: &Path, config: EngineConfig, hlc: Option<Hlc>) -> Result<Engine> {
        Self::assemble(memory_database()?, dir, config, hlc)
    }

    fn assemble(
        db: Arc<Database>,
        dir: &Path,
        config: EngineConfig,
        hlc: Option<Hlc>,
    ) -> Result<Engine> {
        let content = Arc::new(ContentStore::open(
            db.clone(),
            &dir.join("content"),
            config.content,
        )?);
        let queue = Arc::new(SyncQueue::open(db.clone(), config.queue)?);
        let namespace = match hlc {
            Some(hlc) => Namespace::open_with_clock(
                db.clone(),
                config.namespace,
                queue.clone(),
                content.clone(),
                hlc,
            )?,
            None => Namespace::open(db.clone(), config.namespace, queue.clone(), content.clone())?,
        };
        Ok(Engine {
            db,
            content,
            queue,
            namespace: Arc::new(namespace),
            dir: dir.to_path_buf(),
        })
    }
}
