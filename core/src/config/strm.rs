//! `[strm]`: STRM jobs of a region (see [`crate::strm`]).
//!
//! ```toml
//! [strm]
//! secret = "a long random string, the same in every region"
//! public_url = "http://media.example:8410"
//! webhook_token = "another secret"
//!
//! [[strm.jobs]]
//! name = "movies"
//! output = "/media/strm/movies"
//! source = { type = "local", path = "/mnt/clouddrive/movies" }
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Checked, Problem, check_path, check_positive, check_prefix};

/// The depth below a job's source root a scan goes at most (the root is depth 0).
pub const DEFAULT_MAX_DEPTH: u32 = 25;

/// Files a run processes at once by default.
pub const DEFAULT_MAX_CONCURRENCY: usize = 10;

/// Mass deletion guard: a cleanup of more than this share (percent) of a job's outputs waits for
/// an operator.
pub const DEFAULT_CLEANUP_MAX_PERCENT: u32 = 50;

/// Mass deletion guard: a cleanup of more than this many files waits for an operator.
pub const DEFAULT_CLEANUP_MAX_FILES: u64 = 1000;

/// The shortest accepted `strm.secret`, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// `[strm]`: the cluster secret, the URL `.strm` files point at, the webhook token and the jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrmConfig {
    /// The per-cluster secret `/stream/` links are signed with. Every region must have the same
    /// one, so any region verifies what another signed. Required when there are jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The base URL written into `.strm` files (`http://host:port`, no path). Default: this
    /// region's HTTP address. A name that resolves to the local region in every site lets each
    /// media server stream namespace content from its own region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// The shared token CloudDrive2 sends (`Authorization` header); no token: the webhook
    /// answers 404.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_token: Option<String>,
    pub jobs: Vec<JobConfig>,
}

/// What a `.strm` file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrmMode {
    /// A URL that keeps working (signed `/stream/` link or a region redirect).
    #[default]
    Url,
    /// The source's local path. Jellyfin 10.11.7 and later ignore local paths in `.strm` files;
    /// this serves Emby and Kodi only.
    Local,
}

/// How a run treats what it finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStrategy {
    /// Scan everything, write what changed, then clean up orphans.
    #[default]
    Full,
    /// Only the changes webhook events name; no scan.
    Incremental,
    /// Scan, skip files whose output exists (no comparison), no cleanup.
    SkipExisting,
}

impl RunStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStrategy::Full => "full",
            RunStrategy::Incremental => "incremental",
            RunStrategy::SkipExisting => "skip-existing",
        }
    }
}

/// Where a job's media comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A directory of this machine (e.g. a mounted cloud drive).
    Local {
        path: PathBuf,
        /// Metadata downloads when a file copy fails with an I/O error: this URL plus the
        /// file's path below the source root (percent-encoded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        download_url: Option<String>,
    },
    /// An OpenList/AList server.
    Openlist {
        /// `http://host:port` of the server.
        url: String,
        /// The API token (sent as `Authorization` without `Bearer`).
        #[serde(default)]
        token: String,
        /// The directory on the server the job covers.
        #[serde(default = "default_root")]
        root: String,
        /// The directory password, if it has one.
        #[serde(default)]
        password: String,
    },
    /// A subtree of the namespace.
    Namespace { path: String },
}

fn default_root() -> String {
    "/".into()
}

/// `SkipMeta` / `UpdateMeta`: whether an existing metadata output is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetaUpdate {
    /// Leave an existing output alone.
    Skip,
    /// Rewrite when size or mtime differ from the source.
    #[default]
    Update,
}

/// How metadata files reach the output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetaMode {
    /// Not at all.
    None,
    /// Read the source file (fall back to an HTTP download on an I/O error).
    #[default]
    Copy,
    /// Always download over HTTP.
    Download,
}

/// `[strm.jobs.metadata]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    pub mode: MetaMode,
    pub update: MetaUpdate,
}

/// One STRM job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// 1 to 64 characters of `a-z`, `0-9`, `-`, `_`.
    pub name: String,
    pub source: SourceConfig,
    /// The namespace directory the outputs go to (absolute).
    pub output: String,
    #[serde(default)]
    pub mode: StrmMode,
    /// The strategy of scheduled runs and of runs triggered without one.
    #[serde(default)]
    pub strategy: RunStrategy,
    #[serde(default)]
    pub metadata: MetadataConfig,
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Directory listings per second at most (0: unpaced).
    #[serde(default)]
    pub qps: f64,
    #[serde(default = "default_max_depth")]
    pub max_depth: u32,
    /// Extensions (without the dot, any case) that become `.strm` files.
    #[serde(default = "default_media_extensions")]
    pub media_extensions: Vec<String>,
    /// Extensions copied as metadata.
    #[serde(default = "default_metadata_extensions")]
    pub metadata_extensions: Vec<String>,
    /// Seconds between scheduled runs (none: only on demand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_secs: Option<u64>,
    /// The source prefix webhook paths are matched against (default: the local source path, the
    /// OpenList root or the namespace path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_prefix: Option<String>,
    #[serde(default = "default_cleanup_max_percent")]
    pub cleanup_max_percent: u32,
    #[serde(default = "default_cleanup_max_files")]
    pub cleanup_max_files: u64,
}

// `qps` is a finite, non-negative number (checked), so equality is total.
impl Eq for JobConfig {}

fn default_max_concurrency() -> usize {
    DEFAULT_MAX_CONCURRENCY
}

fn default_max_depth() -> u32 {
    DEFAULT_MAX_DEPTH
}

fn default_cleanup_max_percent() -> u32 {
    DEFAULT_CLEANUP_MAX_PERCENT
}

fn default_cleanup_max_files() -> u64 {
    DEFAULT_CLEANUP_MAX_FILES
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Video and audio containers Jellyfin plays.
pub fn default_media_extensions() -> Vec<String> {
    strings(&[
        "mkv", "mp4", "m4v", "avi", "mov", "wmv", "flv", "webm", "ts", "m2ts", "mts", "mpg",
        "mpeg", "iso", "rmvb", "mp3", "flac", "m4a", "aac", "ogg", "opus", "wav",
    ])
}

/// Posters, fan art, `.nfo` files and subtitles.
pub fn default_metadata_extensions() -> Vec<String> {
    strings(&[
        "nfo", "jpg", "jpeg", "png", "webp", "gif", "bmp", "srt", "ass", "ssa", "sub", "idx",
        "vtt", "sup", "txt",
    ])
}

impl JobConfig {
    /// A job with every default: `name` writes `.strm` files for `source` into `output`.
    pub fn new(name: &str, source: SourceConfig, output: &str) -> Self {
        JobConfig {
            name: name.to_owned(),
            source,
            output: output.to_owned(),
            mode: StrmMode::default(),
            strategy: RunStrategy::default(),
            metadata: MetadataConfig::default(),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            qps: 0.0,
            max_depth: DEFAULT_MAX_DEPTH,
            media_extensions: default_media_extensions(),
            metadata_extensions: default_metadata_extensions(),
            schedule_secs: None,
            webhook_prefix: None,
            cleanup_max_percent: DEFAULT_CLEANUP_MAX_PERCENT,
            cleanup_max_files: DEFAULT_CLEANUP_MAX_FILES,
        }
    }

    /// The source prefix webhook paths are matched against.
    pub fn webhook_prefix(&self) -> String {
        if let Some(p) = &self.webhook_prefix {
            return p.clone();
        }
        match &self.source {
            SourceConfig::Local { path, .. } => path.to_string_lossy().into_owned(),
            SourceConfig::Openlist { root, .. } => root.clone(),
            SourceConfig::Namespace { path } => path.clone(),
        }
    }

    fn check(&self, at: &str) -> Checked {
        check_job_name(&self.name).map_err(|m| Problem::new(format!("{at}.name"), m))?;
        check_prefix(&self.output).map_err(|m| Problem::new(format!("{at}.output"), m))?;
        if self.output.trim_end_matches('/').is_empty() {
            return Err(Problem::new(
                format!("{at}.output"),
                "the output cannot be the namespace root: give the job a directory of its own",
            ));
        }
        match &self.source {
            SourceConfig::Local { path, download_url } => {
                check_path(&path.to_string_lossy())
                    .map_err(|m| Problem::new(format!("{at}.source.path"), m))?;
                if !path.is_absolute() {
                    return Err(Problem::new(
                        format!("{at}.source.path"),
                        format!("expected an absolute path, got {:?}", path.display()),
                    ));
                }
                if let Some(url) = download_url {
                    check_fetch_url(url)
                        .map_err(|m| Problem::new(format!("{at}.source.download_url"), m))?;
                }
            }
            SourceConfig::Openlist { url, root, .. } => {
                check_fetch_url(url).map_err(|m| Problem::new(format!("{at}.source.url"), m))?;
                check_prefix(root).map_err(|m| Problem::new(format!("{at}.source.root"), m))?;
            }
            SourceConfig::Namespace { path } => {
                check_prefix(path).map_err(|m| Problem::new(format!("{at}.source.path"), m))?;
                let (src, out) = (
                    path.trim_end_matches('/'),
                    self.output.trim_end_matches('/'),
                );
                let inside = |a: &str, b: &str| a == b || b.starts_with(&format!("{a}/"));
                if src.is_empty() || inside(src, out) || inside(out, src) {
                    return Err(Problem::new(
                        format!("{at}.output"),
                        format!(
                            "the output {out:?} and the source {path:?} must not contain each other"
                        ),
                    ));
                }
            }
        }
        check_positive(
            &format!("{at}.max_concurrency"),
            self.max_concurrency as u64,
        )?;
        if !self.qps.is_finite() || self.qps < 0.0 {
            return Err(Problem::new(
                format!("{at}.qps"),
                format!(
                    "expected a number of listings per second >= 0 (0: unpaced), got {}",
                    self.qps
                ),
            ));
        }
        check_positive(&format!("{at}.max_depth"), u64::from(self.max_depth))?;
        for (key, list) in [
            ("media_extensions", &self.media_extensions),
            ("metadata_extensions", &self.metadata_extensions),
        ] {
            for (i, ext) in list.iter().enumerate() {
                if ext.is_empty() || ext.contains(['.', '/', '\0']) {
                    return Err(Problem::new(
                        format!("{at}.{key}[{i}]"),
                        format!(
                            "expected an extension without the dot, such as \"mkv\", got {ext:?}"
                        ),
                    ));
                }
            }
        }
        if let Some(ext) = self.media_extensions.iter().find(|m| {
            self.metadata_extensions
                .iter()
                .any(|d| d.eq_ignore_ascii_case(m))
        }) {
            return Err(Problem::new(
                format!("{at}.metadata_extensions"),
                format!("{ext:?} is a media extension too: an extension is one or the other"),
            ));
        }
        if let Some(s) = self.schedule_secs {
            check_positive(&format!("{at}.schedule_secs"), s)?;
        }
        if let Some(p) = &self.webhook_prefix {
            check_prefix(p).map_err(|m| Problem::new(format!("{at}.webhook_prefix"), m))?;
        }
        if self.cleanup_max_percent == 0 || self.cleanup_max_percent > 100 {
            return Err(Problem::new(
                format!("{at}.cleanup_max_percent"),
                format!("expected 1 to 100, got {}", self.cleanup_max_percent),
            ));
        }
        check_positive(&format!("{at}.cleanup_max_files"), self.cleanup_max_files)?;
        if self.mode == StrmMode::Local && matches!(self.source, SourceConfig::Openlist { .. }) {
            return Err(Problem::new(
                format!("{at}.mode"),
                "an OpenList source has no local paths: use mode \"url\"",
            ));
        }
        if self.mode == StrmMode::Local {
            tracing::warn!(
                job = %self.name,
                "STRM mode \"local\": Jellyfin 10.11.7 and later ignore local paths in .strm files; \
                 these outputs serve Emby and Kodi only (use mode \"url\" for Jellyfin)"
            );
        }
        Ok(())
    }
}

fn check_job_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid job name {name:?}: expected 1 to 64 characters of a-z, 0-9, '-' and '_'"
        ))
    }
}

/// `http://host[:port]` or `https://...`, optionally with a path; no query or fragment.
fn check_http_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid URL {url:?}: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("expected an http:// or https:// URL such as \"http://127.0.0.1:5244\"");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return bad("expected the scheme http or https");
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return bad("expected a host after the scheme");
    }
    if url.contains(['?', '#', ' ', '\0']) {
        return bad("expected no query, fragment or spaces");
    }
    Ok(())
}

/// A URL the region itself requests: `http://` only (the HTTP client has no TLS backend).
fn check_fetch_url(url: &str) -> Result<(), String> {
    check_http_url(url)?;
    if !url
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    {
        return Err(format!(
            "invalid URL {url:?}: https is not supported for sources yet (no TLS client): \
             use an http:// address, e.g. a local reverse proxy"
        ));
    }
    Ok(())
}

impl StrmConfig {
    /// The job named `name`.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// Checks what needs the rest of the region's configuration: local-mode namespace jobs
    /// write paths below the region's mount.
    pub(super) fn check_with_mount(&self, at: &str, mount: Option<&std::path::Path>) -> Checked {
        self.check(at)?;
        for (i, job) in self.jobs.iter().enumerate() {
            if job.mode == StrmMode::Local
                && matches!(job.source, SourceConfig::Namespace { .. })
                && mount.is_none()
            {
                return Err(Problem::new(
                    format!("{at}.jobs[{i}].mode"),
                    "mode \"local\" for a namespace source writes paths below the region's mount: set `mount`",
                ));
            }
        }
        Ok(())
    }

    fn check(&self, at: &str) -> Checked {
        if let Some(secret) = &self.secret
            && secret.len() < MIN_SECRET_BYTES
        {
            return Err(Problem::new(
                format!("{at}.secret"),
                format!("too short: expected at least {MIN_SECRET_BYTES} bytes of a random string"),
            ));
        }
        if !self.jobs.is_empty() && self.secret.is_none() {
            return Err(Problem::new(
                format!("{at}.secret"),
                "STRM jobs need the cluster secret their links are signed with (the same in every region)",
            ));
        }
        if let Some(url) = &self.public_url {
            check_http_url(url).map_err(|m| Problem::new(format!("{at}.public_url"), m))?;
        }
        if let Some(token) = &self.webhook_token
            && token.is_empty()
        {
            return Err(Problem::new(
                format!("{at}.webhook_token"),
                "expected a non-empty token (or no key: webhook off)",
            ));
        }
        for (i, job) in self.jobs.iter().enumerate() {
            let key = format!("{at}.jobs[{i}]");
            job.check(&key)?;
            if let Some(j) = self.jobs[..i].iter().position(|o| o.name == job.name) {
                return Err(Problem::new(
                    format!("{key}.name"),
                    format!("job {:?} is already defined ({at}.jobs[{j}])", job.name),
                ));
            }
            let out = job.output.trim_end_matches('/');
            for (j, other) in self.jobs[..i].iter().enumerate() {
                let o = other.output.trim_end_matches('/');
                if out == o
                    || out.starts_with(&format!("{o}/"))
                    || o.starts_with(&format!("{out}/"))
                {
                    return Err(Problem::new(
                        format!("{key}.output"),
                        format!(
                            "overlaps the output of {at}.jobs[{j}] ({:?}): each job needs its own directory",
                            other.output
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::RegionConfig;

    fn err(strm: &str) -> String {
        let text = format!("region = \"eu\"\n{strm}");
        RegionConfig::from_toml_str(&text, "region.toml")
            .unwrap_err()
            .to_string()
    }

    const SECRET: &str = "secret = \"0123456789abcdef0123\"\n";

    #[test]
    fn a_full_job_parses_with_defaults() {
        let text = format!(
            "region = \"eu\"\n[strm]\n{SECRET}\n[[strm.jobs]]\nname = \"movies\"\noutput = \"/strm/movies\"\n\
             source = {{ type = \"local\", path = \"/mnt/movies\" }}\n"
        );
        let c = RegionConfig::from_toml_str(&text, "region.toml").unwrap();
        let job = &c.strm.jobs[0];
        assert_eq!(job.max_concurrency, 10);
        assert_eq!(job.max_depth, 25);
        assert_eq!(job.mode, super::StrmMode::Url);
        assert_eq!(job.metadata.mode, super::MetaMode::Copy);
        assert!(job.media_extensions.iter().any(|e| e == "mkv"));
        assert_eq!(job.webhook_prefix(), "/mnt/movies");
    }

    #[test]
    fn bad_jobs_are_refused_with_the_key() {
        let job = |extra: &str| {
            format!(
                "[strm]\n{SECRET}[[strm.jobs]]\nname = \"m\"\noutput = \"/o\"\n{extra}\n\
                 source = {{ type = \"local\", path = \"/mnt/m\" }}\n"
            )
        };
        assert!(err(&job("max_concurrency = 0")).contains("strm.jobs[0].max_concurrency"));
        assert!(err(&job("qps = -1.0")).contains("strm.jobs[0].qps"));
        assert!(err(&job("mode = \"remote\"")).contains("unknown variant"));
        assert!(err(&job("media_extensions = [\".mkv\"]")).contains("media_extensions[0]"));
        let e = err(
            "[[strm.jobs]]\nname = \"m\"\noutput = \"/o\"\nsource = { type = \"local\", path = \"/m\" }\n",
        );
        assert!(e.contains("strm.secret"), "{e}");
        let e = err(&format!(
            "[strm]\n{SECRET}[[strm.jobs]]\nname = \"Bad Name\"\noutput = \"/o\"\nsource = {{ type = \"local\", path = \"/m\" }}\n"
        ));
        assert!(e.contains("invalid job name"), "{e}");
        let e = err(&format!(
            "[strm]\n{SECRET}[[strm.jobs]]\nname = \"a\"\noutput = \"/o\"\nsource = {{ type = \"local\", path = \"rel\" }}\n"
        ));
        assert!(e.contains("absolute"), "{e}");
        let e = err(&format!(
            "[strm]\n{SECRET}[[strm.jobs]]\nname = \"a\"\noutput = \"/o\"\nsource = {{ type = \"namespace\", path = \"/o/x\" }}\n"
        ));
        assert!(e.contains("must not contain each other"), "{e}");
        let two = format!(
            "[strm]\n{SECRET}[[strm.jobs]]\nname = \"a\"\noutput = \"/o\"\nsource = {{ type = \"local\", path = \"/m\" }}\n\
             [[strm.jobs]]\nname = \"b\"\noutput = \"/o/b\"\nsource = {{ type = \"local\", path = \"/n\" }}\n"
        );
        assert!(err(&two).contains("overlaps"));
        assert!(err("[strm]\nsecret = \"short\"\n").contains("too short"));
        let tls = format!(
            "[strm]\n{SECRET}[[strm.jobs]]\nname = \"a\"\noutput = \"/o\"\n\
             source = {{ type = \"openlist\", url = \"https://ol.example\" }}\n"
        );
        let e = err(&tls);
        assert!(
            e.contains("strm.jobs[0].source.url") && e.contains("https"),
            "{e}"
        );
    }

    /// The example of the README's STRM section.
    const README_EXAMPLE: &str = r#"region = "eu"
[strm]
# The cluster secret /stream/ links are signed with: the same in every region, >= 16 bytes.
secret = "9c1f0a6e4b2d8f7a3e5c1b9d0f2a4c6e"
# What .strm links start with. Default: http://<this region's http_listen>. A name that resolves
# to the local region in every site (split DNS) lets each Jellyfin stream namespace content from
# its own region.
public_url = "http://media.example.net:8410"
# The token CloudDrive2 must send (no token: the webhook is off).
webhook_token = "0b7e1d2c3a4f5e6d"

[[strm.jobs]]
name = "movies"                      # a-z, 0-9, '-', '_'
output = "/media/strm/movies"        # a namespace directory of its own
source = { type = "local", path = "/mnt/clouddrive/115/Movies", download_url = "http://127.0.0.1:19798/static/http/115/Movies" }
mode = "url"                         # "url" (default) or "local" (paths: Emby/Kodi only, see below)
strategy = "full"                    # scheduled runs: "full", "skip-existing"
max_concurrency = 10                 # files processed at once
qps = 5.0                            # directory listings per second (0: unpaced)
max_depth = 25                       # deeper directories are skipped with a warning
schedule_secs = 21600                # a run every 6 hours (omit: on demand only)
webhook_prefix = "/115/Movies"       # the path CloudDrive2 reports for `source.path`
metadata = { mode = "copy", update = "update" }   # mode: none|copy|download; update: skip|update
# media_extensions = ["mkv", "mp4", ...]        # defaults cover common video and audio
# metadata_extensions = ["nfo", "jpg", "png", "srt", "ass", ...]
# cleanup_max_percent = 50
# cleanup_max_files = 1000

[[strm.jobs]]
name = "shows"
output = "/media/strm/shows"
source = { type = "openlist", url = "http://openlist.lan:5244", token = "openlist-token", root = "/115/Shows" }
metadata = { mode = "download" }

[[strm.jobs]]
name = "library"
output = "/media/strm/library"
source = { type = "namespace", path = "/library" }
"#;

    #[test]
    fn the_readme_example_parses() {
        let c =
            RegionConfig::from_toml_str(README_EXAMPLE, "README").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.strm.jobs.len(), 3);
        assert_eq!(c.strm.jobs[0].webhook_prefix(), "/115/Movies");
        assert_eq!(c.strm.jobs[1].metadata.mode, super::MetaMode::Download);
    }
}
