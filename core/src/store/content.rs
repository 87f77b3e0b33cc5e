//! The content-addressed store of file versions.
//!
//! # Identity
//! A content version is cut into chunks of `chunk_size` bytes (4 MiB by default, the last chunk
//! shorter) and each chunk is hashed with BLAKE3. The [`Manifest`] lists those hashes; the
//! [`ContentId`] is the BLAKE3 hash, in derive-key mode with the context
//! `"geosync content manifest v1"`, of the manifest's canonical encoding:
//! `chunk_size` (u32 LE) ++ `size` (u64 LE) ++ every chunk hash. Same bytes and same chunk size
//! give the same id, so content is stored once (dedup). The chunk size is part of the identity:
//! regions must agree on it for their ids to match. Empty content has zero chunks and a valid id.
//!
//! # Verification
//! Nothing received from a peer is trusted: a manifest is checked against the id it was sent
//! for ([`Manifest::verify_id`]), and every chunk against the manifest's hash before a single byte
//! of it is written ([`ContentStore::write_chunk`]). Chunks read for peers are not re-hashed: the
//! receiver verifies them.
//!
//! # Layout and sparse files
//! Each content version is one local file, `<dir>/objects/<2 hex>/<62 hex>`, so reads can be
//! handed to the kernel ([`ContentStore::object_path`]). `<dir>/tmp/` holds staging files on the
//! same file system, so ingesting one is a rename; its leftovers are deleted at open. Content
//! learned from another region but not downloaded ("cold") is registered with
//! [`ContentStore::register_remote`]: its file is created sparse at full size and chunks are
//! filled in one by one; a presence bitmap records which are held. Reads of absent chunks fail with
//! [`Error::ChunkMissing`], never return zeros.
//!
//! Metadata lives in the shared redb database, in tables `content_manifests` (id → manifest),
//! `content_presence` (id → size, chunk size and presence: "complete" or a bitmap) and
//! `content_flags` (id → pinned / replicated-elsewhere bits). An in-memory mirror of presence and
//! flags serves reads, accounting and eviction.
//!
//! # Eviction
//! [`ContentStore::evict_to_budget`] drops the data of content, least recently used first, until
//! the bytes of present chunks fit the cache budget. Only content that is replicated elsewhere
//! ([`ContentStore::set_replicated`]), not pinned and not open ([`ContentStore::open_handle`]) is
//! ever evicted, so eviction never loses the only copy. Evicting punches a hole over the file's
//! data and marks its chunks absent; the manifest stays, so the content becomes cold again and can
//! be fetched back chunk by chunk. Nothing is evicted on its own: the owner calls
//! `evict_to_budget` when it sees fit.
//!
//! # Durability
//! Data written by `put_*` and `write_chunk` is not fsynced when they return, and the records that
//! say it is present are held in memory only (reads see it at once). [`ContentStore::sync_pending`]
//! fsyncs every such data file and the object directories, then commits those records to the
//! database as a non-durable redb commit: the caller's next durable commit (which must follow
//! `sync_pending`, e.g. the one recording file metadata that references the content) makes them
//! durable, one fsync for many files. So a durable record never claims data that is not on disk.
//! Eviction commits durably before punching holes. At open, object files that no record knows
//! (content put but not synced before a crash) are re-hashed and adopted if they match their name,
//! deleted otherwise; records whose file is missing or of the wrong size are reset to cold.
//! Dropping the last handle on the store runs a best-effort `sync_pending`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default chunk size: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;
/// Largest accepted chunk size: 64 MiB.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Default cache budget: 10 GiB.
pub const DEFAULT_CACHE_BUDGET_BYTES: u64 = 10 << 30;

/// BLAKE3 derive-key context of content ids.
const MANIFEST_CONTEXT: &str = "geosync content manifest v1";
/// Number of per-content lock stripes.
const STRIPES: usize = 64;

const MANIFESTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("content_manifests");
const PRESENCE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("content_presence");
const FLAGS: TableDefinition<&[u8; 32], u8> = TableDefinition::new("content_flags");

const FLAG_PINNED: u8 = 1;
const FLAG_REPLICATED: u8 = 2;

// ---------------------------------------------------------------------------------------------
// Identity

/// The id of a content version: BLAKE3 (derive-key, "geosync content manifest v1") of its
/// manifest's canonical encoding. Displayed and parsed as 64 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The full id as 64 lower-case hex characters.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    /// The first 12 hex characters, for logs.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(12);
        s
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({})", self.to_hex())
    }
}

impl FromStr for ContentId {
    type Err = Error;

    /// Parses 64 lower-case hex characters.
    fn from_str(s: &str) -> Result<Self> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            }
        }
        let invalid = || Error::InvalidContentId {
            input: s.chars().take(80).collect(),
        };
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = nibble(pair[0]).ok_or_else(invalid)?;
            let lo = nibble(pair[1]).ok_or_else(invalid)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(ContentId(out))
    }
}

/// What file metadata stores to name a content version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContentRef {
    /// The content's id.
    pub id: ContentId,
    /// Its size in bytes.
    pub size: u64,
}

// ---------------------------------------------------------------------------------------------
// Manifest

/// The per-chunk BLAKE3 hashes of a content version. Its [`id`](Manifest::id) is the content id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bytes per chunk (the last chunk may be shorter); 1 ..= [`MAX_CHUNK_SIZE`].
    pub chunk_size: u32,
    /// Total size in bytes.
    pub size: u64,
    /// BLAKE3 hash of each chunk; exactly `ceil(size / chunk_size)` of them.
    pub chunks: Vec<[u8; 32]>,
}

impl Manifest {
    /// Builds a manifest and checks it is consistent.
    pub fn new(chunk_size: u32, size: u64, chunks: Vec<[u8; 32]>) -> Result<Self> {
        let manifest = Manifest {
            chunk_size,
            size,
            chunks,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest of `data` cut into chunks of `chunk_size` bytes.
    pub fn for_bytes(data: &[u8], chunk_size: u32) -> Result<Self> {
        check_chunk_size(chunk_size).map_err(|reason| Error::InvalidManifest { reason })?;
        let chunks = data
            .chunks(chunk_size as usize)
            .map(|c| *blake3::hash(c).as_bytes())
            .collect();
        Manifest::new(chunk_size, data.len() as u64, chunks)
    }

    /// Checks the chunk size is in 1 ..= 64 MiB and the chunk count is `ceil(size / chunk_size)`.
    pub fn validate(&self) -> Result<()> {
        check_chunk_size(self.chunk_size).map_err(|reason| Error::InvalidManifest { reason })?;
        let expected = self.size.div_ceil(u64::from(self.chunk_size));
        if expected > u64::from(u32::MAX) {
            return Err(Error::InvalidManifest {
                reason: format!(
                    "size {} needs {expected} chunks of {} bytes, more than {}",
                    self.size,
                    self.chunk_size,
                    u32::MAX
                ),
            });
        }
        if self.chunks.len() as u64 != expected {
            return Err(Error::InvalidManifest {
                reason: format!(
                    "{} chunk hashes for size {} at chunk size {}, expected {expected}",
                    self.chunks.len(),
                    self.size,
                    self.chunk_size
                ),
            });
        }
        Ok(())
    }

    /// The content id: BLAKE3 derive-key("geosync content manifest v1") over
    /// `chunk_size` u32 LE ++ `size` u64 LE ++ all chunk hashes.
    pub fn id(&self) -> ContentId {
        let mut hasher = blake3::Hasher::new_derive_key(MANIFEST_CONTEXT);
        hasher.update(&self.chunk_size.to_le_bytes());
        hasher.update(&self.size.to_le_bytes());
        for chunk in &self.chunks {
            hasher.update(chunk);
        }
        ContentId(*hasher.finalize().as_bytes())
    }

    /// The [`ContentRef`] naming this content.
    pub fn content_ref(&self) -> ContentRef {
        ContentRef {
            id: self.id(),
            size: self.size,
        }
    }

    /// Checks this manifest (received from a peer) is the one `expected` names.
    pub fn verify_id(&self, expected: &ContentId) -> Result<()> {
        let actual = self.id();
        if actual != *expected {
            return Err(Error::ManifestIdMismatch {
                expected: *expected,
                actual,
            });
        }
        Ok(())
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        u32::try_from(self.chunks.len()).unwrap_or(u32::MAX)
    }

    /// Byte range of chunk `index`; empty (at `size`) past the last chunk.
    pub fn chunk_range(&self, index: u32) -> Range<u64> {
        chunk_range(self.size, self.chunk_size, index)
    }

    /// Indexes of the chunks overlapping the byte range `range` (clipped to the size).
    pub fn chunks_for_range(&self, range: Range<u64>) -> Range<u32> {
        chunks_for_range(self.size, self.chunk_size, range)
    }

    /// Checks `data` is chunk `index`: right length and BLAKE3 hash.
    pub fn verify_chunk(&self, index: u32, data: &[u8]) -> Result<()> {
        let Some(expected) = self.chunks.get(index as usize) else {
            return Err(Error::ChunkOutOfRange {
                id: self.id(),
                index,
                count: self.chunk_count(),
            });
        };
        let range = self.chunk_range(index);
        if data.len() as u64 != range.end - range.start || blake3::hash(data).as_bytes() != expected
        {
            return Err(Error::ChunkHashMismatch {
                id: self.id(),
                index,
            });
        }
        Ok(())
    }

    /// The stored (postcard) encoding.
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self).map_err(|source| Error::Encode {
            what: "content manifest",
            source,
        })
    }

    /// Decodes and [validates](Manifest::validate) a manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let manifest: Manifest = postcard::from_bytes(bytes).map_err(|source| Error::Decode {
            what: "content manifest",
            source,
        })?;
        manifest.validate()?;
        Ok(manifest)
    }
}

fn check_chunk_size(chunk_size: u32) -> std::result::Result<(), String> {
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(format!(
            "chunk size {chunk_size} is outside 1..={MAX_CHUNK_SIZE} bytes"
        ));
    }
    Ok(())
}

fn chunk_count(size: u64, chunk_size: u32) -> u32 {
    u32::try_from(size.div_ceil(u64::from(chunk_size))).unwrap_or(u32::MAX)
}

fn chunk_range(size: u64, chunk_size: u32, index: u32) -> Range<u64> {
    let start = (u64::from(index) * u64::from(chunk_size)).min(size);
    let end = (start + u64::from(chunk_size)).min(size);
    start..end
}

fn chunks_for_range(size: u64, chunk_size: u32, range: Range<u64>) -> Range<u32> {
    let end = range.end.min(size);
    if range.start >= end {
        return 0..0;
    }
    let cs = u64::from(chunk_size);
    let first = u32::try_from(range.start / cs).unwrap_or(u32::MAX);
    let last = u32::try_from((end - 1) / cs).unwrap_or(u32::MAX);
    first..last.saturating_add(1)
}

// ---------------------------------------------------------------------------------------------
// Configuration and reports

/// Tunables of a [`ContentStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentConfig {
    /// Chunk size of content put locally (part of its id). Default 4 MiB, at most 64 MiB.
    pub chunk_size: u32,
    /// Bytes of present chunks [`ContentStore::evict_to_budget`] brings usage down to. Default 10 GiB.
    pub cache_budget_bytes: u64,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            cache_budget_bytes: DEFAULT_CACHE_BUDGET_BYTES,
        }
    }
}

/// What one [`ContentStore::evict_to_budget`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// Content whose data was dropped, least recently used first.
    pub evicted: Vec<ContentId>,
    /// Bytes of present chunks dropped.
    pub freed_bytes: u64,
    /// Bytes of present chunks held afterwards.
    pub usage_bytes: u64,
    /// The budget aimed at.
    pub budget_bytes: u64,
}

impl EvictReport {
    /// Whether usage now fits the budget (false when too little content was evictable).
    pub fn within_budget(&self) -> bool {
        self.usage_bytes <= self.budget_bytes
    }
}

// ---------------------------------------------------------------------------------------------
// Presence

/// Stored presence record (`content_presence` table).
#[derive(Serialize, Deserialize)]
struct PresenceRecord {
    size: u64,
    chunk_size: u32,
    chunks: StoredChunks,
}

#[derive(Serialize, Deserialize)]
enum StoredChunks {
    Complete,
    /// Bit `i % 8` of byte `i / 8` set when chunk `i` is present.
    Partial(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Chunks {
    Complete,
    Partial { bits: Vec<u8>, count: u32 },
}

/// The in-memory state of one content version.
#[derive(Debug)]
struct Entry {
    size: u64,
    chunk_size: u32,
    chunks: Chunks,
    pinned: bool,
    replicated: bool,
    /// Position in the LRU order.
    tick: u64,
    /// The manifest while it is not yet in the database (content put since the last sync).
    unsynced_manifest: Option<Arc<Manifest>>,
}

impl Entry {
    fn new(size: u64, chunk_size: u32, complete: bool) -> Self {
        let count = chunk_count(size, chunk_size);
        let chunks = if complete || count == 0 {
            Chunks::Complete
        } else {
            Chunks::Partial {
                bits: vec![0; (count as usize).div_ceil(8)],
                count: 0,
            }
        };
        Entry {
            size,
            chunk_size,
            chunks,
            pinned: false,
            replicated: false,
            tick: 0,
            unsynced_manifest: None,
        }
    }

    fn from_record(record: PresenceRecord) -> Self {
        let mut entry = Entry::new(record.size, record.chunk_size, false);
        match record.chunks {
            StoredChunks::Complete => entry.chunks = Chunks::Complete,
            StoredChunks::Partial(bits) => {
                for index in 0..entry.chunk_count() {
                    if bit(&bits, index) {
                        entry.set_present(index);
                    }
                }
            }
        }
        entry
    }

    fn record(&self) -> PresenceRecord {
        PresenceRecord {
            size: self.size,
            chunk_size: self.chunk_size,
            chunks: match &self.chunks {
                Chunks::Complete => StoredChunks::Complete,
                Chunks::Partial { bits, .. } => StoredChunks::Partial(bits.clone()),
            },
        }
    }

    fn chunk_count(&self) -> u32 {
        chunk_count(self.size, self.chunk_size)
    }

    fn chunk_len(&self, index: u32) -> u64 {
        let range = chunk_range(self.size, self.chunk_size, index);
        range.end - range.start
    }

    fn is_complete(&self) -> bool {
        matches!(self.chunks, Chunks::Complete)
    }

    fn is_present(&self, index: u32) -> bool {
        match &self.chunks {
            Chunks::Complete => index < self.chunk_count(),
            Chunks::Partial { bits, .. } => bit(bits, index),
        }
    }

    /// Marks chunk `index` present; returns the bytes newly accounted (0 if it already was).
    fn set_present(&mut self, index: u32) -> u64 {
        let total = self.chunk_count();
        if index >= total {
            return 0;
        }
        let len = self.chunk_len(index);
        let Chunks::Partial { bits, count } = &mut self.chunks else {
            return 0;
        };
        let byte = &mut bits[(index / 8) as usize];
        let mask = 1u8 << (index % 8);
        if *byte & mask != 0 {
            return 0;
        }
        *byte |= mask;
        *count += 1;
        if *count == total {
            self.chunks = Chunks::Complete;
        }
        len
    }

    /// Marks every chunk absent.
    fn clear(&mut self) {
        let count = self.chunk_count();
        if count > 0 {
            self.chunks = Chunks::Partial {
                bits: vec![0; (count as usize).div_ceil(8)],
                count: 0,
            };
        }
    }

    fn present_bytes(&self) -> u64 {
        match &self.chunks {
            Chunks::Complete => self.size,
            Chunks::Partial { count: 0, .. } => 0,
            Chunks::Partial { bits, count } => {
                let total = self.chunk_count();
                let mut bytes = u64::from(*count) * u64::from(self.chunk_size);
                let last = total - 1;
                if bit(bits, last) {
                    bytes -= u64::from(self.chunk_size) - self.chunk_len(last);
                }
                bytes
            }
        }
    }

    /// Byte ranges of absent chunks, merged.
    fn absent_ranges(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for index in 0..self.chunk_count() {
            if self.is_present(index) {
                continue;
            }
            let range = chunk_range(self.size, self.chunk_size, index);
            match out.last_mut() {
                Some(last) if last.end == range.start => last.end = range.end,
                _ => out.push(range),
            }
        }
        out
    }

    fn flags(&self) -> u8 {
        (if self.pinned { FLAG_PINNED } else { 0 })
            | (if self.replicated { FLAG_REPLICATED } else { 0 })
    }
}

fn bit(bits: &[u8], index: u32) -> bool {
    bits.get((index / 8) as usize)
        .is_some_and(|b| b & (1 << (index % 8)) != 0)
}

// ---------------------------------------------------------------------------------------------
// The store

#[derive(Default)]
struct State {
    entries: HashMap<ContentId, Entry>,
    /// tick -> id, oldest first.
    lru: BTreeMap<u64, ContentId>,
    next_tick: u64,
    /// Bytes of present chunks.
    usage: u64,
    /// Content whose presence (and maybe manifest) is not yet synced and committed.
    dirty: HashSet<ContentId>,
    /// Open-handle counts.
    open: HashMap<ContentId, u32>,
}

impl State {
    fn touch(&mut self, id: &ContentId) {
        let tick = self.next_tick;
        if let Some(entry) = self.entries.get_mut(id) {
            self.next_tick += 1;
            self.lru.remove(&entry.tick);
            entry.tick = tick;
            self.lru.insert(tick, *id);
        }
    }

    fn insert(&mut self, id: ContentId, entry: Entry) {
        self.usage += entry.present_bytes();
        if let Some(old) = self.entries.insert(id, entry) {
            self.usage -= old.present_bytes();
            self.lru.remove(&old.tick);
        }
        self.touch(&id);
    }

    fn remove(&mut self, id: &ContentId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.usage -= entry.present_bytes();
        self.lru.remove(&entry.tick);
        self.dirty.remove(id);
        Some(entry)
    }

    fn entry(&self, id: &ContentId) -> Result<&Entry> {
        self.entries
            .get(id)
            .ok_or(Error::ContentNotFound { id: *id })
    }

    fn evictable(&self, id: &ContentId) -> bool {
        self.entries.get(id).is_some_and(|e| {
            e.replicated && !e.pinned && e.present_bytes() > 0 && e.unsynced_manifest.is_none()
        }) && !self.open.contains_key(id)
            && !self.dirty.contains(id)
    }
}

struct Inner {
    db: Arc<Database>,
    objects: PathBuf,
    tmp: PathBuf,
    tmp_canonical: PathBuf,
    config: ContentConfig,
    state: Mutex<State>,
    /// Per-content locks: shared to read or write chunk data, exclusive to replace a file,
    /// change flags, evict or remove. Taken before `state`, after `sync_lock`.
    stripes: Box<[RwLock<()>]>,
    /// Serialises `sync_pending`, eviction and removal.
    sync_lock: Mutex<()>,
    staging_counter: AtomicU64,
}

/// The content-addressed store of file versions. Cheap to clone (shared state); `Send + Sync`.
#[derive(Clone)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentStore")
            .field("objects", &self.inner.objects)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// While alive, its content counts as open and is never evicted. Dropping it records an access.
pub struct OpenGuard {
    inner: Arc<Inner>,
    id: ContentId,
}

impl OpenGuard {
    /// The content held open.
    pub fn id(&self) -> ContentId {
        self.id
    }
}

impl fmt::Debug for OpenGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenGuard").field("id", &self.id).finish()
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        if let Some(count) = state.open.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                state.open.remove(&self.id);
            }
        }
        state.touch(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn stripe(&self, id: &ContentId) -> &RwLock<()> {
        &self.stripes[usize::from(id.0[0]) % STRIPES]
    }

    fn read_stripe(&self, id: &ContentId) -> RwLockReadGuard<'_, ()> {
        self.stripe(id)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_stripe(&self, id: &ContentId) -> RwLockWriteGuard<'_, ()> {
        self.stripe(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn object_path(&self, id: &ContentId) -> PathBuf {
        let hex = id.to_hex();
        self.objects.join(&hex[..2]).join(&hex[2..])
    }

    /// Fsyncs the data of dirty content and commits its records; the caller holds `sync_lock`.
    fn sync_locked(&self) -> Result<()> {
        let batch: Vec<(ContentId, PresenceRecord, Option<Arc<Manifest>>)> = {
            let mut state = self.state();
            let ids: Vec<ContentId> = state.dirty.drain().collect();
            ids.into_iter()
                .filter_map(|id| {
                    let e = state.entries.get(&id)?;
                    Some((id, e.record(), e.unsynced_manifest.clone()))
                })
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.sync_batch(&batch);
        let mut state = self.state();
        match result {
            Ok(committed) => {
                for (id, _, manifest) in &batch {
                    if let (true, Some(e), Some(synced)) =
                        (committed.contains(id), state.entries.get_mut(id), manifest)
                        && e.unsynced_manifest
                            .as_ref()
                            .is_some_and(|m| Arc::ptr_eq(m, synced))
                    {
                        e.unsynced_manifest = None;
                    }
                }
                tracing::debug!(count = committed.len(), "content: synced pending data");
                Ok(())
            }
            Err(e) => {
                for (id, _, _) in &batch {
                    if state.entries.contains_key(id) {
                        state.dirty.insert(*id);
                    }
                }
                Err(e)
            }
        }
    }

    /// Fsyncs the batch's files and directories and commits their records; returns the ids
    /// committed (all but those whose file vanished, which are left unrecorded).
    fn sync_batch(
        &self,
        batch: &[(ContentId, PresenceRecord, Option<Arc<Manifest>>)],
    ) -> Result<HashSet<ContentId>> {
        let mut dirs = HashSet::new();
        let mut committed = HashSet::new();
        if batch.len() >= SYNCFS_MIN_FILES {
            // One file-system-wide flush costs one journal commit; a flush per
            // file and per directory costs one each.
            for (id, _, _) in batch {
                if self.object_path(id).exists() {
                    committed.insert(*id);
                } else {
                    tracing::warn!(id = %id.short(), "content: object file vanished before sync");
                }
            }
            syncfs(&self.objects).map_err(|e| Error::io("syncfs", &self.objects, e))?;
            return self.record_synced(batch, committed);
        }
        for (id, _, _) in batch {
            let path = self.object_path(id);
            {
                // Shared: a rename over the file waits, so the inode synced is the one named.
                let _stripe = self.read_stripe(id);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        tracing::warn!(id = %id.short(), "content: object file vanished before sync");
                        continue;
                    }
                    Err(e) => return Err(Error::io("open", &path, e)),
                };
                file.sync_all().map_err(|e| Error::io("fsync", &path, e))?;
            }
            committed.insert(*id);
            if let Some(parent) = path.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        for dir in &dirs {
            sync_dir(dir)?;
        }
        self.record_synced(batch, committed)
    }

    /// Records the synced objects' manifests and presence (non-durably: the
    /// caller's next durable commit makes them durable).
    fn record_synced(
        &self,
        batch: &[(ContentId, PresenceRecord, Option<Arc<Manifest>>)],
        committed: HashSet<ContentId>,
    ) -> Result<HashSet<ContentId>> {
        let txn = self.db.begin_write_nondurable()?;
        {
            let mut manifests = txn.open_table(MANIFESTS)?;
            let mut presence = txn.open_table(PRESENCE)?;
            for (id, record, manifest) in batch.iter().filter(|(id, _, _)| committed.contains(id)) {
                if let Some(manifest) = manifest {
                    manifests.insert(&id.0, manifest.encode()?.as_slice())?;
                }
                presence.insert(&id.0, encode_presence(record)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(committed)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _sync = lock(&self.sync_lock);
        if let Err(e) = self.sync_locked() {
            tracing::warn!(error = %e, "content: sync of pending data at close failed");
        }
    }
}

fn encode_presence(record: &PresenceRecord) -> Result<Vec<u8>> {
    postcard::to_stdvec(record).map_err(|source| Error::Encode {
        what: "content presence",
        source,
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    let file = File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    file.sync_all().map_err(|e| Error::io("fsync", dir, e))
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Hashes `reader` chunk by chunk (one chunk in memory), copying it to `sink` if given.
fn hash_stream(
    reader: &mut File,
    source: &Path,
    chunk_size: u32,
    mut sink: Option<(&mut File, &Path)>,
) -> Result<Manifest> {
    let mut buf = vec![0u8; chunk_size as usize];
    let mut chunks = Vec::new();
    let mut size = 0u64;
    loop {
        let n = read_full(reader, &mut buf).map_err(|e| Error::io("read", source, e))?;
        if n == 0 {
            break;
        }
        chunks.push(*blake3::hash(&buf[..n]).as_bytes());
        if let Some((file, path)) = sink.as_mut() {
            file.write_all(&buf[..n])
                .map_err(|e| Error::io("write", *path, e))?;
        }
        size += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Manifest::new(chunk_size, size, chunks)
}

/// From how many dirty files on a sync one `syncfs` beats per-file `fsync`s.
const SYNCFS_MIN_FILES: usize = 8;

/// Flushes every dirty page and inode of the file system holding `dir`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn syncfs(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(dir)?;
    // SAFETY: syncfs on a file descriptor owned by `dir`, alive for the call; no memory is passed.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn syncfs(dir: &Path) -> io::Result<()> {
    sync_dir(dir).map_err(|e| io::Error::other(e.to_string()))
}

/// Drops the data of `range` in `file`, keeping its size.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn punch_hole(file: &File, range: Range<u64>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(range.start)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    let len = libc::off_t::try_from(range.end - range.start)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
    // SAFETY: fallocate on a file descriptor owned by `file`, alive for the call; no memory is
    // passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn punch_hole(_file: &File, _range: Range<u64>) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

impl ContentStore {
    /// Opens (creating if need be) the store in `dir`, with its metadata in `db`.
    ///
    /// Creates `objects/` (and its 256 subdirectories) and `tmp/`, deletes what `tmp/` holds,
    /// loads the presence records, adopts object files no record knows if they hash to their
    /// name (deleting them otherwise), and resets to cold the records whose file is missing or of
    /// the wrong size. Usage is computed from the presence records. One store per directory.
    pub fn open(db: Arc<Database>, dir: &Path, config: ContentConfig) -> Result<Self> {
        check_chunk_size(config.chunk_size)
            .map_err(|reason| Error::InvalidContentConfig { reason })?;
        let objects = dir.join("objects");
        let tmp = dir.join("tmp");
        for d in [dir, &objects, &tmp] {
            fs::create_dir_all(d).map_err(|e| Error::io("create directory", d, e))?;
        }
        for b in 0..=255u8 {
            let sub = objects.join(format!("{b:02x}"));
            match fs::create_dir(&sub) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create directory", &sub, e)),
            }
        }
        clean_tmp(&tmp)?;
        sync_dir(&objects)?;
        sync_dir(dir)?;
        let tmp_canonical =
            fs::canonicalize(&tmp).map_err(|e| Error::io("canonicalize", &tmp, e))?;

        // Create the tables, so that read transactions find them.
        let txn = db.begin_write()?;
        {
            txn.open_table(MANIFESTS)?;
            txn.open_table(PRESENCE)?;
            txn.open_table(FLAGS)?;
        }
        txn.commit()?;

        let mut entries: HashMap<ContentId, Entry> = HashMap::new();
        let mut flags: Vec<(ContentId, u8)> = Vec::new();
        {
            let rtx = db.begin_read()?;
            let presence = rtx.open_table(PRESENCE)?;
            for item in presence.iter()? {
                let (key, value) = item?;
                let record: PresenceRecord =
                    postcard::from_bytes(value.value()).map_err(|source| Error::Decode {
                        what: "content presence",
                        source,
                    })?;
                if check_chunk_size(record.chunk_size).is_err() {
                    return Err(Error::InvalidManifest {
                        reason: format!(
                            "stored presence of content {} has chunk size {}",
                            ContentId(*key.value()),
                            record.chunk_size
                        ),
                    });
                }
                entries.insert(ContentId(*key.value()), Entry::from_record(record));
            }
            let table = rtx.open_table(FLAGS)?;
            for item in table.iter()? {
                let (key, value) = item?;
                flags.push((ContentId(*key.value()), value.value()));
            }
        }

        let scan = scan_objects(&objects, &mut entries, config.chunk_size)?;

        // Records to fix: reset presence (file missing or wrong size), stray flags.
        let mut reset = Vec::new();
        for (id, entry) in entries.iter_mut() {
            if entry.unsynced_manifest.is_some() {
                continue; // adopted
            }
            let path = objects.join(&id.to_hex()[..2]).join(&id.to_hex()[2..]);
            match scan.lengths.get(id) {
                Some(&len) if len == entry.size => continue,
                Some(&len) => tracing::warn!(
                    id = %id.short(), len, size = entry.size,
                    "content: object file has the wrong size, resetting to cold"
                ),
                None => tracing::warn!(
                    id = %id.short(),
                    "content: object file is missing, resetting to cold"
                ),
            }
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io("create", &path, e))?;
            file.set_len(entry.size)
                .map_err(|e| Error::io("set length of", &path, e))?;
            entry.clear();
            reset.push(*id);
        }
        let mut stray_flags = Vec::new();
        for (id, bits) in flags {
            match entries.get_mut(&id) {
                Some(entry) => {
                    entry.pinned = bits & FLAG_PINNED != 0;
                    entry.replicated = bits & FLAG_REPLICATED != 0;
                }
                None => stray_flags.push(id),
            }
        }
        if !reset.is_empty() || !stray_flags.is_empty() {
            let txn = db.begin_write()?;
            {
                let mut presence = txn.open_table(PRESENCE)?;
                for id in &reset {
                    if let Some(entry) = entries.get(id) {
                        presence.insert(&id.0, encode_presence(&entry.record())?.as_slice())?;
                    }
                }
                let mut table = txn.open_table(FLAGS)?;
                for id in &stray_flags {
                    table.remove(&id.0)?;
                }
            }
            txn.commit()?;
        }

        // Initial LRU order: object file modification time, oldest first.
        let mut order: Vec<(SystemTime, ContentId)> = entries
            .keys()
            .map(|id| (scan.mtimes.get(id).copied().unwrap_or(UNIX_EPOCH), *id))
            .collect();
        order.sort();
        let mut state = State::default();
        for (_, id) in order {
            if let Some(entry) = entries.remove(&id) {
                let adopted = entry.unsynced_manifest.is_some();
                state.insert(id, entry);
                if adopted {
                    state.dirty.insert(id);
                }
            }
        }
        tracing::info!(
            contents = state.entries.len(),
            usage = state.usage,
            adopted = scan.adopted,
            deleted = scan.deleted,
            reset = reset.len(),
            "content: store opened"
        );

        let stripes = (0..STRIPES).map(|_| RwLock::new(())).collect();
        Ok(ContentStore {
            inner: Arc::new(Inner {
                db,
                objects,
                tmp,
                tmp_canonical,
                config,
                state: Mutex::new(state),
                stripes,
                sync_lock: Mutex::new(()),
                staging_counter: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &ContentConfig {
        &self.inner.config
    }

    /// Stores `data` (chunked at the configured chunk size); dedups by id.
    pub fn put_bytes(&self, data: &[u8]) -> Result<ContentRef> {
        let manifest = Manifest::for_bytes(data, self.inner.config.chunk_size)?;
        let id = manifest.id();
        if self.touch_if_complete(&id) {
            return Ok(ContentRef {
                id,
                size: manifest.size,
            });
        }
        let (path, mut file) = self.staging_file()?;
        let written = file
            .write_all(data)
            .map_err(|e| Error::io("write", &path, e));
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.install(manifest, &path)
    }

    /// Ingests the file at `staged`, hashing it chunk by chunk as it reads (never whole in
    /// memory). A file in this store's `tmp/` (see [`staging_file`](Self::staging_file)) is
    /// renamed into place, or deleted if the content is already complete: it is consumed either
    /// way on success. Any other file is copied and left alone. The file must not change while
    /// this runs.
    pub fn put_file(&self, staged: &Path) -> Result<ContentRef> {
        let chunk_size = self.inner.config.chunk_size;
        let mut source = File::open(staged).map_err(|e| Error::io("open", staged, e))?;
        if self.in_tmp(staged) {
            let manifest = hash_stream(&mut source, staged, chunk_size, None)?;
            drop(source);
            return self.install(manifest, staged);
        }
        let (path, mut copy) = self.staging_file()?;
        let hashed = hash_stream(&mut source, staged, chunk_size, Some((&mut copy, &path)));
        drop(copy);
        match hashed {
            Ok(manifest) => self.install(manifest, &path),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Installs a staging file (from [`staging_file`](Self::staging_file)) whose
    /// manifest the writer computed while writing it, sparing a second read of
    /// the data. The file is consumed on success. Refused (and left alone)
    /// unless it is in `tmp/`, exactly `manifest.size` bytes long, and the
    /// manifest uses this store's chunk size.
    pub fn put_hashed(&self, staged: &Path, manifest: Manifest) -> Result<ContentRef> {
        let refuse = |reason: String| Err(Error::InvalidManifest { reason });
        if !self.in_tmp(staged) {
            return refuse(format!("{} is not a staging file", staged.display()));
        }
        if manifest.chunk_size != self.inner.config.chunk_size {
            return refuse(format!(
                "chunk size {} is not the store's {}",
                manifest.chunk_size, self.inner.config.chunk_size
            ));
        }
        let len = fs::metadata(staged)
            .map_err(|e| Error::io("stat", staged, e))?
            .len();
        if len != manifest.size {
            return refuse(format!(
                "the staging file holds {len} bytes, the manifest says {}",
                manifest.size
            ));
        }
        self.install(manifest, staged)
    }

    /// A new empty file in `tmp/` for a writer to stage content in, then hand to
    /// [`put_file`](Self::put_file). Leftovers are deleted at the next open.
    pub fn staging_file(&self) -> Result<(PathBuf, File)> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        loop {
            let n = self.inner.staging_counter.fetch_add(1, Ordering::Relaxed);
            let path = self
                .inner
                .tmp
                .join(format!("stage-{}-{nanos}-{n}", std::process::id()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create", &path, e)),
            }
        }
    }

    /// The manifest of `id`, if the store knows the content (complete or cold).
    pub fn manifest(&self, id: &ContentId) -> Result<Option<Manifest>> {
        {
            let state = self.inner.state();
            match state.entries.get(id) {
                None => return Ok(None),
                Some(e) => {
                    if let Some(m) = &e.unsynced_manifest {
                        return Ok(Some(Manifest::clone(m)));
                    }
                }
            }
        }
        let rtx = self.inner.db.begin_read()?;
        let table = rtx.open_table(MANIFESTS)?;
        match table.get(&id.0)? {
            Some(bytes) => Ok(Some(Manifest::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Whether the store knows `id` (complete, partial or cold).
    pub fn contains(&self, id: &ContentId) -> bool {
        self.inner.state().entries.contains_key(id)
    }

    /// The [`ContentRef`] of known content.
    pub fn content_ref(&self, id: &ContentId) -> Option<ContentRef> {
        self.inner.state().entries.get(id).map(|e| ContentRef {
            id: *id,
            size: e.size,
        })
    }

    /// Whether every chunk of `id` is held locally (false for unknown content).
    pub fn is_complete(&self, id: &ContentId) -> Result<bool> {
        Ok(self
            .inner
            .state()
            .entries
            .get(id)
            .is_some_and(Entry::is_complete))
    }

    /// Indexes of the absent chunks overlapping the byte range `range`, ascending.
    pub fn missing_chunks(&self, id: &ContentId, range: Range<u64>) -> Result<Vec<u32>> {
        let state = self.inner.state();
        let entry = state.entry(id)?;
        if entry.is_complete() {
            return Ok(Vec::new());
        }
        Ok(chunks_for_range(entry.size, entry.chunk_size, range)
            .filter(|&i| !entry.is_present(i))
            .collect())
    }

    /// Registers cold content from a peer's manifest (validated; verify it against the expected
    /// id first with [`Manifest::verify_id`]): records it with no chunk present and creates its
    /// file sparse at full size. Idempotent; known content is left as it is.
    pub fn register_remote(&self, manifest: &Manifest) -> Result<ContentId> {
        manifest.validate()?;
        let id = manifest.id();
        let _stripe = self.inner.write_stripe(&id);
        if self.contains(&id) {
            return Ok(id);
        }
        let entry = Entry::new(manifest.size, manifest.chunk_size, false);
        let txn = self.inner.db.begin_write_nondurable()?;
        {
            txn.open_table(MANIFESTS)?
                .insert(&id.0, manifest.encode()?.as_slice())?;
            txn.open_table(PRESENCE)?
                .insert(&id.0, encode_presence(&entry.record())?.as_slice())?;
        }
        txn.commit()?;
        let path = self.inner.object_path(&id);
        let file = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        file.set_len(manifest.size)
            .map_err(|e| Error::io("set length of", &path, e))?;
        self.inner.state().insert(id, entry);
        tracing::debug!(id = %id.short(), size = manifest.size, "content: registered remote");
        Ok(id)
    }

    /// Stores chunk `index` of `id` after checking it against the manifest
    /// ([`Error::ChunkHashMismatch`] and nothing written if it does not match). Idempotent and
    /// safe to call concurrently, also for the same chunk.
    pub fn write_chunk(&self, id: &ContentId, index: u32, data: &[u8]) -> Result<()> {
        let manifest = self
            .manifest(id)?
            .ok_or(Error::ContentNotFound { id: *id })?;
        manifest.verify_chunk(index, data)?;
        let offset = manifest.chunk_range(index).start;
        let _stripe = self.inner.read_stripe(id);
        {
            let mut state = self.inner.state();
            if state.entry(id)?.is_present(index) {
                state.touch(id);
                return Ok(());
            }
        }
        let path = self.inner.object_path(id);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        file.write_all_at(data, offset)
            .map_err(|e| Error::io("write", &path, e))?;
        drop(file);
        let mut state = self.inner.state();
        let state = &mut *state;
        let entry = state
            .entries
            .get_mut(id)
            .ok_or(Error::ContentNotFound { id: *id })?;
        let added = entry.set_present(index);
        if added > 0 {
            state.usage += added;
            state.dirty.insert(*id);
        }
        state.touch(id);
        Ok(())
    }

    /// Chunk `index` of `id`, for serving peers ([`Error::ChunkMissing`] if absent).
    pub fn read_chunk(&self, id: &ContentId, index: u32) -> Result<Vec<u8>> {
        let _stripe = self.inner.read_stripe(id);
        let range = {
            let mut state = self.inner.state();
            let entry = state.entry(id)?;
            let count = entry.chunk_count();
            if index >= count {
                return Err(Error::ChunkOutOfRange {
                    id: *id,
                    index,
                    count,
                });
            }
            if !entry.is_present(index) {
                return Err(Error::ChunkMissing { id: *id, index });
            }
            let range = chunk_range(entry.size, entry.chunk_size, index);
            state.touch(id);
            range
        };
        let path = self.inner.object_path(id);
        let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        file.read_exact_at(&mut buf, range.start)
            .map_err(|e| Error::io("read", &path, e))?;
        Ok(buf)
    }

    /// Reads from `offset` into `buf`; returns the bytes read (short at EOF, 0 past it).
    /// [`Error::ChunkMissing`] (first absent chunk) if any chunk it needs is not held.
    pub fn read_at(&self, id: &ContentId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let _stripe = self.inner.read_stripe(id);
        let len = {
            let mut state = self.inner.state();
            let entry = state.entry(id)?;
            if offset >= entry.size || buf.is_empty() {
                return Ok(0);
            }
            let end = offset.saturating_add(buf.len() as u64).min(entry.size);
            if !entry.is_complete() {
                for index in chunks_for_range(entry.size, entry.chunk_size, offset..end) {
                    if !entry.is_present(index) {
                        return Err(Error::ChunkMissing { id: *id, index });
                    }
                }
            }
            state.touch(id);
            (end - offset) as usize
        };
        let path = self.inner.object_path(id);
        let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..len], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", &path, e)),
            }
        }
        Ok(filled)
    }

    /// The data file of `id` (`<dir>/objects/<2 hex>/<62 hex>`), e.g. for FUSE passthrough. Only
    /// chunks reported present hold data; hold an [`OpenGuard`] while reading it directly.
    pub fn object_path(&self, id: &ContentId) -> PathBuf {
        self.inner.object_path(id)
    }

    /// Pins `id`: never evicted until unpinned (committed durably).
    pub fn pin(&self, id: &ContentId) -> Result<()> {
        self.set_flag(id, FLAG_PINNED, true)
    }

    /// Unpins `id`.
    pub fn unpin(&self, id: &ContentId) -> Result<()> {
        self.set_flag(id, FLAG_PINNED, false)
    }

    /// Records whether another region holds a full copy of `id`, which makes the local copy
    /// evictable. Clearing it is committed durably.
    pub fn set_replicated(&self, id: &ContentId, replicated: bool) -> Result<()> {
        self.set_flag(id, FLAG_REPLICATED, replicated)
    }

    /// Whether `id` is pinned (false for unknown content).
    pub fn is_pinned(&self, id: &ContentId) -> bool {
        self.inner.state().entries.get(id).is_some_and(|e| e.pinned)
    }

    /// Whether `id` is marked replicated elsewhere (false for unknown content).
    pub fn is_replicated(&self, id: &ContentId) -> bool {
        self.inner
            .state()
            .entries
            .get(id)
            .is_some_and(|e| e.replicated)
    }

    /// Marks `id` open until the guard drops: open content is never evicted. Counts as an access.
    /// Content need not be known yet. Check [`is_complete`](Self::is_complete) after opening:
    /// an eviction that ran before the guard existed may have made it cold.
    pub fn open_handle(&self, id: &ContentId) -> OpenGuard {
        // Waits for an eviction of this content in progress, so it is either done or not begun.
        let _stripe = self.inner.read_stripe(id);
        let mut state = self.inner.state();
        *state.open.entry(*id).or_insert(0) += 1;
        state.touch(id);
        OpenGuard {
            inner: Arc::clone(&self.inner),
            id: *id,
        }
    }

    /// Whether any [`OpenGuard`] of `id` is alive.
    pub fn is_open(&self, id: &ContentId) -> bool {
        self.inner.state().open.contains_key(id)
    }

    /// Bytes of present chunks held.
    pub fn usage_bytes(&self) -> u64 {
        self.inner.state().usage
    }

    /// Drops the data of evictable content (replicated elsewhere, not pinned, not open, synced),
    /// least recently used first, until usage fits the budget or nothing evictable is left. Runs
    /// [`sync_pending`](Self::sync_pending) first and commits the absent chunks durably before
    /// punching holes in the files. Manifests stay: evicted content is cold.
    pub fn evict_to_budget(&self) -> Result<EvictReport> {
        let inner = &self.inner;
        let budget = inner.config.cache_budget_bytes;
        let _sync = lock(&inner.sync_lock);
        inner.sync_locked()?;
        let candidates: Vec<ContentId> = {
            let state = inner.state();
            if state.usage <= budget {
                return Ok(EvictReport {
                    usage_bytes: state.usage,
                    budget_bytes: budget,
                    ..EvictReport::default()
                });
            }
            state
                .lru
                .values()
                .filter(|id| state.evictable(id))
                .copied()
                .collect()
        };
        // Phase 1: mark absent in memory (readers get ChunkMissing from now on).
        let mut evicted = Vec::new();
        let mut records = Vec::new();
        let mut freed = 0;
        for id in candidates {
            let _stripe = inner.write_stripe(&id);
            let mut state = inner.state();
            if state.usage <= budget {
                break;
            }
            if !state.evictable(&id) {
                continue;
            }
            let state = &mut *state;
            let Some(entry) = state.entries.get_mut(&id) else {
                continue;
            };
            let bytes = entry.present_bytes();
            entry.clear();
            records.push((id, entry.record()));
            state.usage -= bytes;
            freed += bytes;
            evicted.push(id);
        }
        if evicted.is_empty() {
            let usage = inner.state().usage;
            return Ok(EvictReport {
                usage_bytes: usage,
                budget_bytes: budget,
                ..EvictReport::default()
            });
        }
        // Phase 2: durably record the chunks absent, before any data goes.
        let txn = inner.db.begin_write()?;
        {
            let mut presence = txn.open_table(PRESENCE)?;
            for (id, record) in &records {
                presence.insert(&id.0, encode_presence(record)?.as_slice())?;
            }
        }
        txn.commit()?;
        // Phase 3: punch holes over the chunks still absent (some may have been fetched again).
        for id in &evicted {
            let _stripe = inner.write_stripe(id);
            let ranges = match inner.state().entries.get(id) {
                Some(entry) => entry.absent_ranges(),
                None => continue,
            };
            if let Err(e) = self.drop_data(id, &ranges) {
                tracing::warn!(id = %id.short(), error = %e, "content: could not free evicted data");
            }
        }
        let usage = inner.state().usage;
        tracing::info!(
            evicted = evicted.len(),
            freed,
            usage,
            budget,
            "content: evicted to budget"
        );
        Ok(EvictReport {
            evicted,
            freed_bytes: freed,
            usage_bytes: usage,
            budget_bytes: budget,
        })
    }

    /// Forgets `id` entirely (manifest, presence, flags) and deletes its file, e.g. when no file
    /// version references it any more. Returns whether it was known. Open guards do not prevent
    /// it: already opened descriptors of the file keep working.
    pub fn remove(&self, id: &ContentId) -> Result<bool> {
        let _sync = lock(&self.inner.sync_lock);
        let _stripe = self.inner.write_stripe(id);
        if !self.contains(id) {
            return Ok(false);
        }
        let txn = self.inner.db.begin_write_nondurable()?;
        {
            txn.open_table(MANIFESTS)?.remove(&id.0)?;
            txn.open_table(PRESENCE)?.remove(&id.0)?;
            txn.open_table(FLAGS)?.remove(&id.0)?;
        }
        txn.commit()?;
        self.inner.state().remove(id);
        let path = self.inner.object_path(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &path, e)),
        }
        tracing::debug!(id = %id.short(), "content: removed");
        Ok(true)
    }

    /// Fsyncs every data file written since the last call (puts and chunk writes) and the object
    /// directories they are in, then commits their records (non-durably: the caller's next
    /// durable redb commit makes them durable). Run it before a durable commit that references
    /// new content; one call covers any number of files.
    pub fn sync_pending(&self) -> Result<()> {
        let _sync = lock(&self.inner.sync_lock);
        self.inner.sync_locked()
    }

    // -- internals --

    fn touch_if_complete(&self, id: &ContentId) -> bool {
        let mut state = self.inner.state();
        if state.entries.get(id).is_some_and(Entry::is_complete) {
            state.touch(id);
            return true;
        }
        false
    }

    fn in_tmp(&self, staged: &Path) -> bool {
        let Some(parent) = staged.parent() else {
            return false;
        };
        // A path from `staging_file` names `tmp` as it is: no need to resolve it.
        parent == self.inner.tmp
            || fs::canonicalize(parent).is_ok_and(|p| p == self.inner.tmp_canonical)
    }

    /// Moves the staged file (in `tmp/`) into place as complete content `manifest`.
    fn install(&self, manifest: Manifest, staged: &Path) -> Result<ContentRef> {
        let id = manifest.id();
        let content = ContentRef {
            id,
            size: manifest.size,
        };
        let _stripe = self.inner.write_stripe(&id);
        if self.touch_if_complete(&id) {
            if let Err(e) = fs::remove_file(staged) {
                tracing::warn!(path = %staged.display(), error = %e, "content: could not remove duplicate staging file");
            }
            return Ok(content);
        }
        let path = self.inner.object_path(&id);
        fs::rename(staged, &path).map_err(|e| Error::io("rename", staged, e))?;
        let mut state = self.inner.state();
        let state = &mut *state;
        match state.entries.get_mut(&id) {
            Some(entry) => {
                // Cold or partial until now: the file now holds everything.
                state.usage += entry.size - entry.present_bytes();
                entry.chunks = Chunks::Complete;
            }
            None => {
                let mut entry = Entry::new(manifest.size, manifest.chunk_size, true);
                entry.unsynced_manifest = Some(Arc::new(manifest));
                state.insert(id, entry);
            }
        }
        state.dirty.insert(id);
        state.touch(&id);
        tracing::debug!(id = %id.short(), size = content.size, "content: stored");
        Ok(content)
    }

    fn set_flag(&self, id: &ContentId, flag: u8, on: bool) -> Result<()> {
        let _stripe = self.inner.write_stripe(id);
        let (old, new) = {
            let state = self.inner.state();
            let old = state.entry(id)?.flags();
            (old, if on { old | flag } else { old & !flag })
        };
        if old == new {
            return Ok(());
        }
        // Changes that protect data (pin, not replicated) must survive a crash.
        let protective = (flag == FLAG_PINNED && on) || (flag == FLAG_REPLICATED && !on);
        let txn = if protective {
            self.inner.db.begin_write()?
        } else {
            self.inner.db.begin_write_nondurable()?
        };
        {
            let mut table = txn.open_table(FLAGS)?;
            if new == 0 {
                table.remove(&id.0)?;
            } else {
                table.insert(&id.0, new)?;
            }
        }
        txn.commit()?;
        let mut state = self.inner.state();
        if let Some(entry) = state.entries.get_mut(id) {
            entry.pinned = new & FLAG_PINNED != 0;
            entry.replicated = new & FLAG_REPLICATED != 0;
        }
        Ok(())
    }

    /// Frees the data of `ranges` of `id`'s file; the caller holds its stripe exclusively.
    fn drop_data(&self, id: &ContentId, ranges: &[Range<u64>]) -> Result<()> {
        let path = self.inner.object_path(id);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let meta = file.metadata().map_err(|e| Error::io("stat", &path, e))?;
        let block = meta.blksize().max(1);
        for range in ranges {
            if range.is_empty() {
                continue;
            }
            // A hole only frees whole blocks: a range ending at EOF extends to its block's end.
            let mut punch = range.clone();
            if punch.end >= meta.len() {
                punch.end = punch.end.div_ceil(block).saturating_mul(block);
            }
            match punch_hole(&file, punch) {
                Ok(()) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::Unsupported
                        || e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
                {
                    // No hole punching here: truncating works when the whole file goes.
                    let size = meta.len();
                    if ranges.len() == 1 && range.start == 0 && range.end == size {
                        file.set_len(0)
                            .map_err(|e| Error::io("truncate", &path, e))?;
                        file.set_len(size)
                            .map_err(|e| Error::io("set length of", &path, e))?;
                    }
                    return Ok(());
                }
                Err(e) => return Err(Error::io("punch hole in", &path, e)),
            }
        }
        Ok(())
    }
}

/// Begins a write transaction whose commit is made durable by a later durable one.
trait BeginNonDurable {
    fn begin_write_nondurable(&self) -> Result<redb::WriteTransaction>;
}

impl BeginNonDurable for Database {
    fn begin_write_nondurable(&self) -> Result<redb::WriteTransaction> {
        let mut txn = self.begin_write()?;
        txn.set_durability(Durability::None)?;
        Ok(txn)
    }
}

/// Deletes everything in `tmp` (staging files left by a crash).
fn clean_tmp(tmp: &Path) -> Result<()> {
    let entries = fs::read_dir(tmp).map_err(|e| Error::io("read directory", tmp, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", tmp, e))?;
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "content: could not remove staging leftover");
        }
    }
    Ok(())
}

#[derive(Default)]
struct Scan {
    /// Length of each known content's object file.
    lengths: HashMap<ContentId, u64>,
    mtimes: HashMap<ContentId, SystemTime>,
    adopted: usize,
    deleted: usize,
}

/// Walks `objects/`: records file lengths of known content, adopts unknown files that hash to
/// their name (as complete, unsynced content) and deletes the others.
fn scan_objects(
    objects: &Path,
    entries: &mut HashMap<ContentId, Entry>,
    chunk_size: u32,
) -> Result<Scan> {
    let mut scan = Scan::default();
    let dirs = fs::read_dir(objects).map_err(|e| Error::io("read directory", objects, e))?;
    for dir in dirs {
        let dir = dir.map_err(|e| Error::io("read directory", objects, e))?;
        let prefix = dir.file_name().to_string_lossy().into_owned();
        if prefix.len() != 2 || !dir.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let sub = dir.path();
        let files = fs::read_dir(&sub).map_err(|e| Error::io("read directory", &sub, e))?;
        for file in files {
            let file = file.map_err(|e| Error::io("read directory", &sub, e))?;
            let path = file.path();
            let name = format!("{prefix}{}", file.file_name().to_string_lossy());
            let Ok(id) = name.parse::<ContentId>() else {
                tracing::warn!(path = %path.display(), "content: stray file in objects, ignored");
                continue;
            };
            let meta = file.metadata().map_err(|e| Error::io("stat", &path, e))?;
            if let Ok(mtime) = meta.modified() {
                scan.mtimes.insert(id, mtime);
            }
            if entries.contains_key(&id) {
                scan.lengths.insert(id, meta.len());
                continue;
            }
            let adopted = File::open(&path)
                .map_err(|e| Error::io("open", &path, e))
                .and_then(|mut f| hash_stream(&mut f, &path, chunk_size, None));
            match adopted {
                Ok(manifest) if manifest.id() == id => {
                    tracing::info!(id = %id.short(), "content: adopted unrecorded object");
                    let mut entry = Entry::new(manifest.size, manifest.chunk_size, true);
                    entry.unsynced_manifest = Some(Arc::new(manifest));
                    entries.insert(id, entry);
                    scan.adopted += 1;
                }
                _ => {
                    tracing::info!(id = %id.short(), "content: deleting unrecorded object");
                    match fs::remove_file(&path) {
                        Ok(()) => scan.deleted += 1,
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "content: could not delete unrecorded object")
                        }
                    }
                }
            }
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CHUNK: u32 = 64 * 1024;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        db: Arc<Database>,
        store: ContentStore,
    }

    fn fixture(chunk_size: u32, budget: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let db = Arc::new(Database::create(root.join("meta.redb")).unwrap());
        let config = ContentConfig {
            chunk_size,
            cache_budget_bytes: budget,
        };
        let store = ContentStore::open(Arc::clone(&db), &root.join("content"), config).unwrap();
        Fixture {
            _dir: dir,
            root,
            db,
            store,
        }
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn read_all(store: &ContentStore, id: &ContentId, size: u64) -> Vec<u8> {
        let mut buf = vec![0u8; size as usize];
        assert_eq!(store.read_at(id, 0, &mut buf).unwrap(), size as usize);
        buf
    }

    fn object_count(root: &Path) -> usize {
        fs::read_dir(root.join("content/objects"))
            .unwrap()
            .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum()
    }

    #[test]
    fn store_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ContentStore>();
        assert_send_sync::<OpenGuard>();
    }

    #[test]
    fn content_id_hex_round_trip() {
        let id = Manifest::for_bytes(b"hello", CHUNK).unwrap().id();
        let hex = id.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, hex.to_lowercase());
        assert_eq!(hex.parse::<ContentId>().unwrap(), id);
        assert_eq!(id.short(), hex[..12]);
        assert!(matches!(
            hex.to_uppercase().parse::<ContentId>(),
            Err(Error::InvalidContentId { .. })
        ));
        assert!("abc".parse::<ContentId>().is_err());
        let msg = "zz"
            .repeat(32)
            .parse::<ContentId>()
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("invalid content id"), "{msg}");
    }

    #[test]
    fn round_trip_across_chunk_boundaries_and_dedup() {
        let f = fixture(CHUNK, u64::MAX);
        let bytes = data(3 * CHUNK as usize + 1234, 1);
        let r = f.store.put_bytes(&bytes).unwrap();
        assert_eq!(r.size, bytes.len() as u64);
        assert!(f.store.is_complete(&r.id).unwrap());
        assert_eq!(read_all(&f.store, &r.id, r.size), bytes);
        // Reads straddling chunk boundaries.
        for (offset, len) in [
            (CHUNK as u64 - 10, 20usize),
            (1, 2 * CHUNK as usize),
            (0, 1),
        ] {
            let mut buf = vec![0u8; len];
            assert_eq!(f.store.read_at(&r.id, offset, &mut buf).unwrap(), len);
            assert_eq!(buf, bytes[offset as usize..offset as usize + len]);
        }
        // Short read at EOF, nothing past it.
        let mut buf = vec![0u8; 5000];
        let offset = r.size - 100;
        assert_eq!(f.store.read_at(&r.id, offset, &mut buf).unwrap(), 100);
        assert_eq!(buf[..100], bytes[offset as usize..]);
        assert_eq!(f.store.read_at(&r.id, r.size, &mut buf).unwrap(), 0);
        assert_eq!(f.store.read_at(&r.id, r.size + 10, &mut buf).unwrap(), 0);
        // Dedup: same id, stored once, usage unchanged, nothing left in tmp.
        let again = f.store.put_bytes(&bytes).unwrap();
        assert_eq!(again, r);
        assert_eq!(f.store.usage_bytes(), r.size);
        assert_eq!(object_count(&f.root), 1);
        assert_eq!(fs::read_dir(f.root.join("content/tmp")).unwrap().count(), 0);
        assert_eq!(
            f.store.read_chunk(&r.id, 3).unwrap(),
            bytes[3 * CHUNK as usize..]
        );
        // Empty content: zero chunks, valid id, complete.
        let empty = f.store.put_bytes(b"").unwrap();
        assert_eq!(empty.size, 0);
        assert_eq!(
            f.store.manifest(&empty.id).unwrap().unwrap().chunk_count(),
            0
        );
        assert!(f.store.is_complete(&empty.id).unwrap());
        assert_eq!(f.store.read_at(&empty.id, 0, &mut buf).unwrap(), 0);
        assert_ne!(empty.id, r.id);
        // Unknown content.
        let unknown = ContentId([7; 32]);
        assert!(matches!(
            f.store.read_at(&unknown, 0, &mut buf),
            Err(Error::ContentNotFound { id }) if id == unknown
        ));
        assert!(!f.store.is_complete(&unknown).unwrap());
        assert!(f.store.manifest(&unknown).unwrap().is_none());
    }

    #[test]
    fn put_hashed_installs_a_staging_file_with_the_writers_manifest() {
        let f = fixture(CHUNK, u64::MAX);
        let bytes = data(3 * CHUNK as usize + 5, 4);
        let manifest = Manifest::for_bytes(&bytes, CHUNK).unwrap();
        // Wrong length, wrong chunk size, not a staging file: refused, file kept.
        let (path, mut file) = f.store.staging_file().unwrap();
        file.write_all(&bytes[..10]).unwrap();
        drop(file);
        assert!(matches!(
            f.store.put_hashed(&path, manifest.clone()),
            Err(Error::InvalidManifest { .. })
        ));
        assert!(path.exists());
        let other = Manifest::for_bytes(&bytes[..10], CHUNK * 2).unwrap();
        assert!(f.store.put_hashed(&path, other).is_err());
        let outside = f.root.join("outside.bin");
        fs::write(&outside, &bytes).unwrap();
        assert!(f.store.put_hashed(&outside, manifest.clone()).is_err());
        assert!(outside.exists());
        // The right file: installed and readable, the same id as put_bytes.
        fs::write(&path, &bytes).unwrap();
        let r = f.store.put_hashed(&path, manifest).unwrap();
        assert!(!path.exists(), "consumed");
        assert_eq!(r, fixture(CHUNK, u64::MAX).store.put_bytes(&bytes).unwrap());
        assert_eq!(read_all(&f.store, &r.id, r.size), bytes);
    }

    #[test]
    fn put_file_multi_chunk() {
        let f = fixture(CHUNK, u64::MAX);
        let bytes = data(5 * CHUNK as usize + 77, 2);
        let (path, mut file) = f.store.staging_file().unwrap();
        for piece in bytes.chunks(10_000) {
            file.write_all(piece).unwrap();
        }
        drop(file);
        let r = f.store.put_file(&path).unwrap();
        assert!(!path.exists(), "a staging file is consumed");
        assert_eq!(r.size, bytes.len() as u64);
        assert_eq!(r.id, Manifest::for_bytes(&bytes, CHUNK).unwrap().id());
        let manifest = f.store.manifest(&r.id).unwrap().unwrap();
        assert_eq!(manifest.id(), r.id);
        assert_eq!(manifest.chunk_count(), 6);
        assert_eq!(read_all(&f.store, &r.id, r.size), bytes);
        assert_eq!(fs::read(f.store.object_path(&r.id)).unwrap(), bytes);

        // Equal to put_bytes of the same bytes in another store.
        let g = fixture(CHUNK, u64::MAX);
        assert_eq!(g.store.put_bytes(&bytes).unwrap(), r);

        // A file outside tmp/ is copied and left alone; a duplicate staging file is consumed.
        let outside = f.root.join("outside.bin");
        fs::write(&outside, &bytes).unwrap();
        assert_eq!(f.store.put_file(&outside).unwrap(), r);
        assert!(outside.exists());
        let other = data(CHUNK as usize * 2, 3);
        fs::write(&outside, &other).unwrap();
        let r2 = f.store.put_file(&outside).unwrap();
        assert_eq!(read_all(&f.store, &r2.id, r2.size), other);
        let (dup, mut file) = f.store.staging_file().unwrap();
        file.write_all(&bytes).unwrap();
        drop(file);
        assert_eq!(f.store.put_file(&dup).unwrap(), r);
        assert!(!dup.exists());
        assert_eq!(f.store.usage_bytes(), r.size + r2.size);
        assert_eq!(object_count(&f.root), 2);
        // A missing file is an I/O error naming it.
        let err = f.store.put_file(&f.root.join("nope")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[test]
    fn cold_flow_fetches_verifies_and_stays_sparse() {
        let a = fixture(CHUNK, u64::MAX);
        let b = fixture(CHUNK, u64::MAX);
        let bytes = data(16 * CHUNK as usize, 4);
        let r = a.store.put_bytes(&bytes).unwrap();
        let manifest = a.store.manifest(&r.id).unwrap().unwrap();
        manifest.verify_id(&r.id).unwrap();

        let id = b.store.register_remote(&manifest).unwrap();
        assert_eq!(id, r.id);
        assert_eq!(
            b.store.register_remote(&manifest).unwrap(),
            id,
            "idempotent"
        );
        assert!(!b.store.is_complete(&id).unwrap());
        assert_eq!(b.store.usage_bytes(), 0);
        assert_eq!(
            b.store.missing_chunks(&id, 0..r.size).unwrap(),
            (0..16).collect::<Vec<_>>()
        );
        let c = u64::from(CHUNK);
        assert_eq!(
            b.store.missing_chunks(&id, c + 5..3 * c).unwrap(),
            vec![1, 2]
        );
        assert_eq!(
            b.store.missing_chunks(&id, 5..5).unwrap(),
            Vec::<u32>::new()
        );
        assert_eq!(
            b.store.missing_chunks(&id, r.size..r.size + 9).unwrap(),
            Vec::<u32>::new()
        );

        b.store
            .write_chunk(&id, 1, &a.store.read_chunk(&id, 1).unwrap())
            .unwrap();
        b.store
            .write_chunk(&id, 1, &a.store.read_chunk(&id, 1).unwrap())
            .unwrap();
        assert_eq!(b.store.usage_bytes(), c);
        assert_eq!(b.store.missing_chunks(&id, c + 5..3 * c).unwrap(), vec![2]);

        let mut buf = vec![0u8; 1000];
        assert_eq!(b.store.read_at(&id, c + 10, &mut buf).unwrap(), 1000);
        assert_eq!(buf, bytes[c as usize + 10..c as usize + 1010]);
        assert!(matches!(
            b.store.read_at(&id, c - 10, &mut buf),
            Err(Error::ChunkMissing { id: e, index: 0 }) if e == id
        ));
        assert!(matches!(
            b.store.read_at(&id, 2 * c - 10, &mut buf),
            Err(Error::ChunkMissing { index: 2, .. })
        ));
        assert!(matches!(
            b.store.read_chunk(&id, 0),
            Err(Error::ChunkMissing { index: 0, .. })
        ));
        assert!(matches!(
            b.store.read_chunk(&id, 16),
            Err(Error::ChunkOutOfRange {
                index: 16,
                count: 16,
                ..
            })
        ));

        let meta = fs::metadata(b.store.object_path(&id)).unwrap();
        assert_eq!(meta.len(), r.size);
        assert!(
            meta.blocks() * 512 < r.size / 4,
            "sparse: {} blocks",
            meta.blocks()
        );

        for index in 0..16 {
            b.store
                .write_chunk(&id, index, &a.store.read_chunk(&id, index).unwrap())
                .unwrap();
        }
        assert!(b.store.is_complete(&id).unwrap());
        assert_eq!(b.store.usage_bytes(), r.size);
        assert_eq!(read_all(&b.store, &id, r.size), bytes);
        assert!(b.store.missing_chunks(&id, 0..r.size).unwrap().is_empty());
    }

    #[test]
    fn corrupted_chunk_is_rejected_and_nothing_marked() {
        let a = fixture(CHUNK, u64::MAX);
        let b = fixture(CHUNK, u64::MAX);
        let bytes = data(3 * CHUNK as usize - 5, 5);
        let r = a.store.put_bytes(&bytes).unwrap();
        let id = b
            .store
            .register_remote(&a.store.manifest(&r.id).unwrap().unwrap())
            .unwrap();
        let mut chunk = a.store.read_chunk(&id, 2).unwrap();
        chunk[17] ^= 1;
        let err = b.store.write_chunk(&id, 2, &chunk).unwrap_err();
        assert!(matches!(err, Error::ChunkHashMismatch { id: e, index: 2 } if e == id));
        let msg = err.to_string();
        assert!(
            msg.contains(&id.to_string()) && msg.contains("chunk 2"),
            "{msg}"
        );
        // Wrong length, wrong index.
        let good = a.store.read_chunk(&id, 2).unwrap();
        assert!(matches!(
            b.store.write_chunk(&id, 2, &good[1..]),
            Err(Error::ChunkHashMismatch { index: 2, .. })
        ));
        assert!(matches!(
            b.store.write_chunk(&id, 1, &good),
            Err(Error::ChunkHashMismatch { index: 1, .. })
        ));
        assert!(matches!(
            b.store.write_chunk(&id, 3, &good),
            Err(Error::ChunkOutOfRange {
                index: 3,
                count: 3,
                ..
            })
        ));
        assert!(matches!(
            b.store.write_chunk(&ContentId([1; 32]), 0, &good),
            Err(Error::ContentNotFound { .. })
        ));
        assert_eq!(
            b.store.missing_chunks(&id, 0..r.size).unwrap(),
            vec![0, 1, 2]
        );
        assert_eq!(b.store.usage_bytes(), 0);
        let on_disk = fs::read(b.store.object_path(&id)).unwrap();
        assert!(on_disk.iter().all(|&x| x == 0), "nothing written");
        // The real chunk (the short last one) is accepted and accounted exactly.
        b.store.write_chunk(&id, 2, &good).unwrap();
        assert_eq!(b.store.usage_bytes(), good.len() as u64);
    }

    #[test]
    fn manifest_decode_validates_and_id_mismatch_is_detected() {
        let bytes = data(2 * CHUNK as usize + 1, 6);
        let m = Manifest::for_bytes(&bytes, CHUNK).unwrap();
        assert_eq!(Manifest::decode(&m.encode().unwrap()).unwrap(), m);
        assert_eq!(
            m.chunk_range(2),
            2 * u64::from(CHUNK)..2 * u64::from(CHUNK) + 1
        );
        assert_eq!(m.chunk_range(3), m.size..m.size);
        m.verify_chunk(2, &bytes[2 * CHUNK as usize..]).unwrap();

        let bad = |m: Manifest| Manifest::decode(&m.encode().unwrap()).unwrap_err();
        let mut extra = m.clone();
        extra.chunks.push([0; 32]);
        let err = bad(extra);
        assert!(matches!(err, Error::InvalidManifest { .. }), "{err}");
        assert!(err.to_string().contains("expected 3"), "{err}");
        let mut short = m.clone();
        short.size = 10;
        assert!(matches!(bad(short), Error::InvalidManifest { .. }));
        let mut zero = m.clone();
        zero.chunk_size = 0;
        assert!(matches!(bad(zero), Error::InvalidManifest { .. }));
        let mut huge = m.clone();
        huge.chunk_size = MAX_CHUNK_SIZE + 1;
        assert!(matches!(bad(huge), Error::InvalidManifest { .. }));
        assert!(matches!(
            Manifest::decode(&[0xff; 3]),
            Err(Error::Decode { .. })
        ));
        assert!(Manifest::new(CHUNK, 0, vec![]).is_ok());
        assert!(Manifest::for_bytes(b"x", 0).is_err());

        // A tampered manifest hashes to another id.
        let mut tampered = m.clone();
        tampered.chunks[1][0] ^= 1;
        assert_ne!(tampered.id(), m.id());
        assert!(matches!(
            tampered.verify_id(&m.id()),
            Err(Error::ManifestIdMismatch { expected, actual })
                if expected == m.id() && actual == tampered.id()
        ));
        // The chunk size is part of the identity.
        assert_ne!(Manifest::for_bytes(&bytes, CHUNK / 2).unwrap().id(), m.id());

        let f = fixture(CHUNK, u64::MAX);
        let mut inconsistent = m.clone();
        inconsistent.chunks.pop();
        assert!(matches!(
            f.store.register_remote(&inconsistent),
            Err(Error::InvalidManifest { .. })
        ));
        assert!(matches!(
            ContentStore::open(
                Arc::clone(&f.db),
                &f.root.join("other"),
                ContentConfig {
                    chunk_size: 0,
                    ..ContentConfig::default()
                }
            ),
            Err(Error::InvalidContentConfig { .. })
        ));
    }

    #[test]
    fn eviction_respects_budget_lru_and_protections() {
        const C: u32 = 4096;
        let src = fixture(C, u64::MAX);
        let mut f = fixture(C, 25_000);
        let blobs: Vec<Vec<u8>> = (0..5).map(|i| data(10_000, 100 + i)).collect();
        let ids: Vec<ContentId> = blobs
            .iter()
            .map(|b| f.store.put_bytes(b).unwrap().id)
            .collect();
        for b in &blobs {
            src.store.put_bytes(b).unwrap();
        }
        let [a, b, c, d, e] = ids[..] else {
            unreachable!()
        };
        assert_eq!(f.store.usage_bytes(), 50_000);
        for id in [a, b, c, d] {
            f.store.set_replicated(&id, true).unwrap();
        }
        f.store.pin(&b).unwrap();
        let guard = f.store.open_handle(&c);
        assert!(f.store.is_open(&c));
        let mut buf = [0u8; 10];
        f.store.read_at(&a, 0, &mut buf).unwrap(); // LRU now: b c d e a (c touched by open)
        assert!(matches!(
            f.store.pin(&ContentId([9; 32])),
            Err(Error::ContentNotFound { .. })
        ));

        let report = f.store.evict_to_budget().unwrap();
        assert_eq!(
            report.evicted,
            vec![d, a],
            "least recently used evictable first"
        );
        assert_eq!(report.freed_bytes, 20_000);
        assert_eq!(report.usage_bytes, 30_000);
        assert!(!report.within_budget());
        assert_eq!(f.store.usage_bytes(), 30_000);
        for id in [a, d] {
            assert!(!f.store.is_complete(&id).unwrap());
            assert!(f.store.manifest(&id).unwrap().is_some(), "manifest kept");
            assert_eq!(
                f.store.missing_chunks(&id, 0..10_000).unwrap(),
                vec![0, 1, 2]
            );
            assert!(matches!(
                f.store.read_at(&id, 0, &mut buf),
                Err(Error::ChunkMissing { .. })
            ));
            let meta = fs::metadata(f.store.object_path(&id)).unwrap();
            assert_eq!((meta.len(), meta.blocks()), (10_000, 0), "hole punched");
        }
        for id in [b, c, e] {
            assert!(f.store.is_complete(&id).unwrap());
        }

        drop(guard);
        assert!(!f.store.is_open(&c));
        let report = f.store.evict_to_budget().unwrap();
        assert_eq!(report.evicted, vec![c]);
        assert!(report.within_budget());
        assert_eq!(f.store.usage_bytes(), 20_000);
        assert_eq!(
            f.store.evict_to_budget().unwrap().evicted,
            Vec::<ContentId>::new()
        );

        // Fetch d back from a peer: complete again, exact usage.
        for index in 0..3 {
            f.store
                .write_chunk(&d, index, &src.store.read_chunk(&d, index).unwrap())
                .unwrap();
        }
        assert_eq!(f.store.usage_bytes(), 30_000);
        assert_eq!(read_all(&f.store, &d, 10_000), blobs[3]);
        f.store.unpin(&b).unwrap();
        f.store.set_replicated(&e, false).unwrap();
        f.store.pin(&d).unwrap();
        f.store.sync_pending().unwrap();

        // Reopen: usage, flags and presence survive.
        let root = f.root.clone();
        drop(f.store);
        let db = Arc::clone(&f.db);
        let config = ContentConfig {
            chunk_size: C,
            cache_budget_bytes: 25_000,
        };
        f.store = ContentStore::open(db, &root.join("content"), config).unwrap();
        assert_eq!(f.store.usage_bytes(), 30_000);
        assert!(f.store.is_pinned(&d) && !f.store.is_pinned(&b));
        assert!(f.store.is_replicated(&a) && !f.store.is_replicated(&e));
        assert!(!f.store.is_complete(&a).unwrap() && f.store.is_complete(&d).unwrap());
        assert_eq!(read_all(&f.store, &b, 10_000), blobs[1]);
        let report = f.store.evict_to_budget().unwrap();
        assert_eq!(report.evicted, vec![b]);
        assert_eq!(f.store.usage_bytes(), 20_000);
    }

    #[test]
    fn eviction_follows_access_order() {
        let f = fixture(4096, 20_000);
        let ids: Vec<ContentId> = (0..3)
            .map(|i| f.store.put_bytes(&data(10_000, 200 + i)).unwrap().id)
            .collect();
        for id in &ids {
            f.store.set_replicated(id, true).unwrap();
        }
        f.store.read_chunk(&ids[0], 0).unwrap();
        f.store.read_at(&ids[1], 5, &mut [0u8; 3]).unwrap();
        let report = f.store.evict_to_budget().unwrap();
        assert_eq!(report.evicted, vec![ids[2]]);
        assert_eq!(f.store.usage_bytes(), 20_000);
    }

    #[test]
    fn concurrent_chunk_writes_are_safe_and_exact() {
        let a = fixture(4096, u64::MAX);
        let b = fixture(4096, u64::MAX);
        let bytes = data(40 * 4096 + 100, 7);
        let r = a.store.put_bytes(&bytes).unwrap();
        let id = b
            .store
            .register_remote(&a.store.manifest(&r.id).unwrap().unwrap())
            .unwrap();
        let chunks: Vec<Vec<u8>> = (0..41)
            .map(|i| a.store.read_chunk(&id, i).unwrap())
            .collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (store, chunks) = (&b.store, &chunks);
                s.spawn(move || {
                    for i in 0..41u32 {
                        let index = (i + t * 7) % 41;
                        store
                            .write_chunk(&id, index, &chunks[index as usize])
                            .unwrap();
                    }
                });
            }
            s.spawn(|| b.store.sync_pending().unwrap());
        });
        assert!(b.store.is_complete(&id).unwrap());
        assert_eq!(b.store.usage_bytes(), r.size);
        assert_eq!(read_all(&b.store, &id, r.size), bytes);
    }

    #[test]
    fn reopen_adopts_unrecorded_objects_and_cleans_tmp() {
        let f = fixture(CHUNK, u64::MAX);
        let bytes = data(CHUNK as usize + 3, 8);
        let r = f.store.put_bytes(&bytes).unwrap();
        let (leftover, _) = f.store.staging_file().unwrap();
        // A file named after an id it does not hash to.
        let bogus = f.store.object_path(&ContentId([0xab; 32]));
        fs::write(&bogus, b"garbage").unwrap();
        // Content put but never synced: no record in the database. A fresh database stands in
        // for one whose non-durable commits were lost in a crash.
        f.store.sync_pending().unwrap();
        let db = Arc::new(Database::create(f.root.join("fresh.redb")).unwrap());
        let store = ContentStore::open(
            db,
            &f.root.join("content"),
            ContentConfig {
                chunk_size: CHUNK,
                cache_budget_bytes: u64::MAX,
            },
        )
        .unwrap();
        assert!(!leftover.exists(), "tmp/ cleaned");
        assert!(!bogus.exists(), "unverifiable object deleted");
        assert!(store.is_complete(&r.id).unwrap());
        assert_eq!(store.usage_bytes(), r.size);
        assert_eq!(store.manifest(&r.id).unwrap().unwrap().id(), r.id);
        assert_eq!(read_all(&store, &r.id, r.size), bytes);
    }

    #[test]
    fn reopen_resets_missing_files_to_cold_and_remove_forgets() {
        let f = fixture(4096, u64::MAX);
        let keep = f.store.put_bytes(&data(9000, 9)).unwrap();
        let lost = f.store.put_bytes(&data(5000, 10)).unwrap();
        f.store.sync_pending().unwrap();
        let root = f.root.clone();
        drop(f.store);
        fs::remove_file(
            root.join("content/objects")
                .join(&lost.id.to_hex()[..2])
                .join(&lost.id.to_hex()[2..]),
        )
        .unwrap();
        let store = ContentStore::open(
            Arc::clone(&f.db),
            &root.join("content"),
            ContentConfig {
                chunk_size: 4096,
                cache_budget_bytes: u64::MAX,
            },
        )
        .unwrap();
        assert_eq!(store.usage_bytes(), keep.size);
        assert!(!store.is_complete(&lost.id).unwrap());
        assert_eq!(
            store.missing_chunks(&lost.id, 0..lost.size).unwrap(),
            vec![0, 1]
        );
        assert_eq!(
            fs::metadata(store.object_path(&lost.id)).unwrap().len(),
            lost.size
        );

        assert!(store.remove(&keep.id).unwrap());
        assert!(!store.remove(&keep.id).unwrap());
        assert!(!store.contains(&keep.id));
        assert!(!store.object_path(&keep.id).exists());
        assert_eq!(store.usage_bytes(), 0);
        assert!(store.manifest(&keep.id).unwrap().is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn random_data_round_trips_with_deterministic_ids(
            bytes in proptest::collection::vec(any::<u8>(), 0..200_000),
            chunk_size in 1u32..70_000,
        ) {
            let chunk_size = chunk_size.max(256);
            let f = fixture(chunk_size, u64::MAX);
            let m = Manifest::for_bytes(&bytes, chunk_size).unwrap();
            prop_assert_eq!(m.id(), Manifest::for_bytes(&bytes, chunk_size).unwrap().id());
            prop_assert_eq!(u64::from(m.chunk_count()), (bytes.len() as u64).div_ceil(u64::from(chunk_size)));
            let r = f.store.put_bytes(&bytes).unwrap();
            prop_assert_eq!(r.id, m.id());
            prop_assert_eq!(f.store.put_bytes(&bytes).unwrap().id, r.id);
            prop_assert_eq!(read_all(&f.store, &r.id, r.size), bytes.clone());
            for index in 0..m.chunk_count() {
                let chunk = f.store.read_chunk(&r.id, index).unwrap();
                m.verify_chunk(index, &chunk).unwrap();
            }
            prop_assert_eq!(f.store.usage_bytes(), bytes.len() as u64);
        }
    }
}
