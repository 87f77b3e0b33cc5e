//! Where a job's media comes from: a local directory, an OpenList/AList server, or a subtree of
//! the namespace. Paths are relative to the source root (`""` is the root, `a/b` below it).
//!
//! A listing has three outcomes: [`Listing::Present`], [`Listing::Absent`] (the directory is
//! known not to exist) and [`Listing::Unknown`] (a timeout, an error, an answer that makes no
//! sense). Unknown is never taken for absent: it stops a run's orphan cleanup.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use serde::Deserialize;
use serde_json::json;

use crate::Engine;
use crate::model::NodeKind;
use crate::node::fetch::ChunkSource;

use super::sign::encode_path;

/// How long one OpenList or download request may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Entries per OpenList page.
pub const OPENLIST_PAGE: u64 = 200;

/// Bytes read from the namespace per step of a copy.
const NS_READ_PIECE: u64 = 1 << 20;

/// Paces listing calls (every OpenList page is one) to at most `qps` per second.
pub struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

impl Pacer {
    pub fn new(qps: f64) -> Pacer {
        Pacer {
            interval: (qps > 0.0).then(|| Duration::from_secs_f64(1.0 / qps)),
            next: Instant::now(),
        }
    }

    /// Waits for the next slot; false when cancelled first. Cancel-safe.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let Some(interval) = self.interval else {
            return !cancel.is_cancelled();
        };
        let now = Instant::now();
        if self.next > now {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(self.next - now) => {}
            }
        }
        self.next = self.next.max(now) + interval;
        true
    }
}

/// One directory entry of a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    pub mtime_ns: i64,
    /// OpenList's download signature.
    pub sign: Option<String>,
}

/// What listing a directory gave (see the module docs).
#[derive(Debug)]
pub enum Listing {
    Present(Vec<SourceEntry>),
    Absent,
    Unknown(String),
}

/// Why reading a source file failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// An I/O error: an HTTP download may still work.
    #[error("{0}")]
    Io(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A job's source.
#[derive(Clone)]
pub enum Source {
    Local {
        root: PathBuf,
        download_url: Option<String>,
    },
    Openlist(Arc<Openlist>),
    Namespace {
        root: String,
        engine: Arc<Engine>,
        chunks: Arc<dyn ChunkSource>,
    },
}

/// Joins a source root and a relative path.
pub fn join(root: &str, rel: &str) -> String {
    let root = root.trim_end_matches('/');
    if rel.is_empty() {
        if root.is_empty() {
            "/".into()
        } else {
            root.into()
        }
    } else {
        format!("{root}/{rel}")
    }
}

fn system_time_ns(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

impl Source {
    /// Lists the directory `rel`, each call to the source paced by `pacer`.
    pub async fn list(&self, rel: &str, pacer: &mut Pacer, cancel: &CancellationToken) -> Listing {
        if !matches!(self, Source::Openlist(_)) && !pacer.wait(cancel).await {
            return Listing::Unknown("cancelled".into());
        }
        match self {
            Source::Local { root, .. } => {
                let dir = if rel.is_empty() {
                    root.clone()
                } else {
                    root.join(rel)
                };
                match tokio::task::spawn_blocking(move || list_local(&dir)).await {
                    Ok(l) => l,
                    Err(e) => Listing::Unknown(format!("listing task failed: {e}")),
                }
            }
            Source::Openlist(o) => o.list(rel, pacer, cancel).await,
            Source::Namespace { root, engine, .. } => {
                let path = join(root, rel);
                let engine = engine.clone();
                match tokio::task::spawn_blocking(move || list_namespace(&engine, &path)).await {
                    Ok(l) => l,
                    Err(e) => Listing::Unknown(format!("listing task failed: {e}")),
                }
            }
        }
    }

    /// The entry at `rel`: `Ok(None)` when it does not exist.
    pub async fn stat(&self, rel: &str) -> Result<Option<SourceEntry>, String> {
        let name = rel.rsplit('/').next().unwrap_or(rel).to_owned();
        match self {
            Source::Local { root, .. } => {
                let path = root.join(rel);
                match tokio::fs::metadata(&path).await {
                    Ok(m) => Ok(Some(SourceEntry {
                        name,
                        is_dir: m.is_dir(),
                        size: m.len(),
                        mtime_ns: m.modified().map(system_time_ns).unwrap_or(0),
                        sign: None,
                    })),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(format!("stat {}: {e}", path.display())),
                }
            }
            Source::Openlist(o) => o.stat(rel).await,
            Source::Namespace { root, engine, .. } => {
                let path = join(root, rel);
                let engine = engine.clone();
                let r =
                    tokio::task::spawn_blocking(move || engine.namespace.resolve(path.as_bytes()))
                        .await
                        .map_err(|e| format!("stat task failed: {e}"))?;
                match r {
                    Ok(v) => Ok(Some(SourceEntry {
                        name,
                        is_dir: v.meta.kind == NodeKind::Directory,
                        size: v.meta.size,
                        mtime_ns: v.meta.mtime_ns,
                        sign: None,
                    })),
                    Err(crate::Error::NotFound(_)) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// Copies the file `rel` to `dest` by reading it (no HTTP).
    pub async fn copy_to(&self, rel: &str, dest: &Path) -> Result<(), ReadError> {
        match self {
            Source::Local { root, .. } => {
                let src = root.join(rel);
                tokio::fs::copy(&src, dest)
                    .await
                    .map(|_| ())
                    .map_err(|e| ReadError::Io(format!("copy {}: {e}", src.display())))
            }
            Source::Openlist(_) => Err(ReadError::Io(
                "an OpenList source is read over HTTP only".into(),
            )),
            Source::Namespace {
                root,
                engine,
                chunks,
            } => copy_from_namespace(engine, chunks, &join(root, rel), dest).await,
        }
    }

    /// The HTTP URL a file can be downloaded from, when the source has one.
    pub fn download_url(&self, rel: &str, entry: &SourceEntry) -> Option<String> {
        match self {
            Source::Local { download_url, .. } => download_url.as_ref().map(|base| {
                format!(
                    "{}{}",
                    base.trim_end_matches('/'),
                    encode_path(&format!("/{rel}"))
                )
            }),
            Source::Openlist(o) => Some(o.download_url(rel, entry.sign.as_deref())),
            Source::Namespace { .. } => None,
        }
    }
}

fn list_local(dir: &Path) -> Listing {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Listing::Absent,
        Err(e) => return Listing::Unknown(format!("list {}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for item in read {
        let item = match item {
            Ok(i) => i,
            Err(e) => return Listing::Unknown(format!("list {}: {e}", dir.display())),
        };
        let Some(name) = item.file_name().to_str().map(str::to_owned) else {
            return Listing::Unknown(format!(
                "list {}: a name that is not UTF-8: {:?}",
                dir.display(),
                item.file_name()
            ));
        };
        // Follows symlinks: cloud drive mounts often use them. A dangling or looping link is an
        // error, never "absent".
        let meta = match std::fs::metadata(item.path()) {
            Ok(m) => m,
            Err(e) => {
                return Listing::Unknown(format!("stat {}: {e}", item.path().display()));
            }
        };
        out.push(SourceEntry {
            name,
            is_dir: meta.is_dir(),
            size: meta.len(),
            mtime_ns: meta.modified().map(system_time_ns).unwrap_or(0),
            sign: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Listing::Present(out)
}

fn list_namespace(engine: &Engine, path: &str) -> Listing {
    let ns = &engine.namespace;
    let dir = match ns.resolve(path.as_bytes()) {
        Ok(d) => d,
        Err(crate::Error::NotFound(_)) => return Listing::Absent,
        Err(e) => return Listing::Unknown(e.to_string()),
    };
    if dir.meta.kind != NodeKind::Directory {
        return Listing::Unknown(format!("{path} is not a directory"));
    }
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = match ns.readdir(dir.id, after.as_deref(), 1024) {
            Ok(p) => p,
            Err(e) => return Listing::Unknown(e.to_string()),
        };
        let Some(last) = page.last() else { break };
        after = Some(last.name.as_bytes().to_vec());
        for e in page {
            let view = match ns.get(e.node) {
                Ok(v) => v,
                Err(crate::Error::NotFound(_)) => continue,
                Err(err) => return Listing::Unknown(err.to_string()),
            };
            let Ok(name) = String::from_utf8(e.name.as_bytes().to_vec()) else {
                continue;
            };
            out.push(SourceEntry {
                name,
                is_dir: view.meta.kind == NodeKind::Directory,
                size: view.meta.size,
                mtime_ns: view.meta.mtime_ns,
                sign: None,
            });
        }
    }
    Listing::Present(out)
}

async fn copy_from_namespace(
    engine: &Arc<Engine>,
    chunks: &Arc<dyn ChunkSource>,
    path: &str,
    dest: &Path,
) -> Result<(), ReadError> {
    let e = engine.clone();
    let p = path.to_owned();
    let view = tokio::task::spawn_blocking(move || e.namespace.resolve(p.as_bytes()))
        .await
        .map_err(|e| ReadError::Other(e.to_string()))?
        .map_err(|e| ReadError::Other(format!("{path}: {e}")))?;
    let mut file = std::fs::File::create(dest)
        .map_err(|e| ReadError::Io(format!("create {}: {e}", dest.display())))?;
    let Some(content) = view.meta.content.filter(|c| c.size > 0) else {
        return Ok(());
    };
    let mut at = 0u64;
    while at < content.size {
        let end = content.size.min(at + NS_READ_PIECE);
        chunks
            .ensure(content, at..end)
            .await
            .map_err(|e| ReadError::Io(format!("{path}: {e}")))?;
        let store = engine.content.clone();
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; (end - at) as usize];
            let n = store.read_at(&content.id, at, &mut buf)?;
            buf.truncate(n);
            Ok::<_, crate::Error>(buf)
        })
        .await
        .map_err(|e| ReadError::Other(e.to_string()))?
        .map_err(|e| ReadError::Io(format!("{path}: {e}")))?;
        if data.is_empty() {
            return Err(ReadError::Io(format!("{path}: content ends early at {at}")));
        }
        std::io::Write::write_all(&mut file, &data)
            .map_err(|e| ReadError::Io(format!("write {}: {e}", dest.display())))?;
        at += data.len() as u64;
    }
    Ok(())
}

/// Downloads `url` into `dest` (any 2xx answer; others are errors).
pub async fn download(client: &reqwest::Client, url: &str, dest: &Path) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut resp = client
        .get(url)
        .timeout(HTTP_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("download {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("download {url}: HTTP {}", resp.status()));
    }
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| format!("create {}: {e}", dest.display()))?;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("download {url}: {e}"))?
    {
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("write {}: {e}", dest.display()))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("write {}: {e}", dest.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// OpenList / AList
// ---------------------------------------------------------------------------

/// An OpenList/AList server (`POST /api/fs/list`, `POST /api/fs/get`, `GET /d/<path>`).
pub struct Openlist {
    pub url: String,
    pub token: String,
    pub root: String,
    pub password: String,
    pub client: reqwest::Client,
}

#[derive(Deserialize)]
struct Reply<T> {
    code: i64,
    #[serde(default)]
    message: String,
    data: Option<T>,
}

#[derive(Deserialize)]
struct ListData {
    content: Option<Vec<ListItem>>,
    #[serde(default)]
    total: u64,
}

#[derive(Deserialize)]
struct ListItem {
    name: String,
    #[serde(default)]
    size: u64,
    is_dir: bool,
    #[serde(default)]
    modified: String,
    #[serde(default)]
    sign: String,
}

#[derive(Deserialize)]
struct GetData {
    #[serde(default)]
    name: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    is_dir: bool,
    #[serde(default)]
    modified: String,
    #[serde(default)]
    sign: String,
    #[serde(default)]
    raw_url: String,
}

impl Openlist {
    fn server_path(&self, rel: &str) -> String {
        join(&self.root, rel)
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        api: &str,
        body: serde_json::Value,
    ) -> Result<T, String> {
        let url = format!("{}{api}", self.url.trim_end_matches('/'));
        let resp = self
            .client
            .post(&url)
            .header("Authorization", &self.token)
            .timeout(HTTP_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let reply: Reply<T> = resp
            .json()
            .await
            .map_err(|e| format!("{url}: unreadable answer: {e}"))?;
        if reply.code != 200 {
            return Err(format!("{url}: code {}: {}", reply.code, reply.message));
        }
        reply
            .data
            .ok_or_else(|| format!("{url}: code 200 without data"))
    }

    /// Lists a directory, page by page. Every error is [`Listing::Unknown`]: OpenList answers a
    /// missing path with an error code that cannot be told from other failures reliably.
    pub async fn list(&self, rel: &str, pacer: &mut Pacer, cancel: &CancellationToken) -> Listing {
        let path = self.server_path(rel);
        let mut out = Vec::new();
        let mut page = 1u64;
        loop {
            if !pacer.wait(cancel).await {
                return Listing::Unknown("cancelled".into());
            }
            let body = json!({
                "path": path, "password": self.password, "page": page,
                "per_page": OPENLIST_PAGE, "refresh": false,
            });
            let data: ListData = match self.call("/api/fs/list", body).await {
                Ok(d) => d,
                Err(e) => return Listing::Unknown(format!("list {path}: {e}")),
            };
            let items = data.content.unwrap_or_default();
            let n = items.len() as u64;
            for item in items {
                if item.name.is_empty()
                    || item.name.contains('/')
                    || item.name == ".."
                    || item.name == "."
                {
                    return Listing::Unknown(format!(
                        "list {path}: invalid entry name {:?}",
                        item.name
                    ));
                }
                out.push(SourceEntry {
                    mtime_ns: parse_rfc3339_ns(&item.modified).unwrap_or(0),
                    name: item.name,
                    is_dir: item.is_dir,
                    size: item.size,
                    sign: (!item.sign.is_empty()).then_some(item.sign),
                });
            }
            if n == 0 || out.len() as u64 >= data.total || n < OPENLIST_PAGE {
                break;
            }
            page += 1;
        }
        Listing::Present(out)
    }

    async fn get(&self, rel: &str) -> Result<GetData, String> {
        let body = json!({"path": self.server_path(rel), "password": self.password});
        self.call("/api/fs/get", body).await
    }

    /// The entry at `rel` (OpenList cannot tell "missing" from other errors: both are errors).
    pub async fn stat(&self, rel: &str) -> Result<Option<SourceEntry>, String> {
        let d = self.get(rel).await?;
        Ok(Some(SourceEntry {
            name: d.name,
            is_dir: d.is_dir,
            size: d.size,
            mtime_ns: parse_rfc3339_ns(&d.modified).unwrap_or(0),
            sign: (!d.sign.is_empty()).then_some(d.sign),
        }))
    }

    /// A freshly signed link to the file's content (`raw_url` of `/api/fs/get`).
    pub async fn raw_url(&self, rel: &str) -> Result<String, String> {
        let d = self.get(rel).await?;
        if d.raw_url.is_empty() {
            return Err(format!(
                "{}: no raw_url in the answer",
                self.server_path(rel)
            ));
        }
        Ok(d.raw_url)
    }

    /// `GET /d/<path>?sign=...`.
    pub fn download_url(&self, rel: &str, sign: Option<&str>) -> String {
        let base = self.url.trim_end_matches('/');
        let path = encode_path(&self.server_path(rel));
        match sign {
            Some(s) => format!("{base}/d{path}?sign={}", encode_path(s).replace('/', "%2F")),
            None => format!("{base}/d{path}"),
        }
    }
}

/// Parses an RFC 3339 time (`2024-05-01T10:20:30.5+02:00`, `...Z`) to Unix nanoseconds.
pub fn parse_rfc3339_ns(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':'
        || b[16] != b':'
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || se > 60
    {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() {
            return None;
        }
        let mut scaled = String::from(&digits[..digits.len().min(9)]);
        while scaled.len() < 9 {
            scaled.push('0');
        }
        frac_ns = scaled.parse().ok()?;
    }
    let offset_s = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ns("2024-03-01T12:00:00.5+02:00"),
            Some((1_709_294_400 - 7200) * 1_000_000_000 + 500_000_000)
        );
        assert_eq!(parse_rfc3339_ns("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ns("yesterday"), None);
    }

    #[test]
    fn local_listing_tells_absent_from_unknown() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            list_local(&dir.path().join("nope")),
            Listing::Absent
        ));
        std::fs::write(dir.path().join("a.mkv"), b"x").unwrap();
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        assert!(matches!(list_local(dir.path()), Listing::Unknown(_)));
        std::fs::remove_file(dir.path().join("loop")).unwrap();
        match list_local(dir.path()) {
            Listing::Present(e) => assert_eq!(e[0].name, "a.mkv"),
            other => panic!("{other:?}"),
        }
    }
}
