//! Configuration files of the coordinator and the regions.
//!
//! `geosync coordinator --config coordinator.toml` reads a [`CoordinatorConfig`],
//! `geosync region --config region.toml` a [`RegionConfig`]. Every key except a
//! region's `region` has a default (see ARCHITECTURE.md, "Defaults"), so an empty
//! coordinator file and a region file holding only `region = "eu"` are complete.
//! [`RegionConfig::example`] and [`CoordinatorConfig::example`] are commented
//! files listing every key.
//!
//! Loading never half-succeeds: the file is parsed, every value is checked, then
//! the values that depend on others are resolved (`http_listen` defaults to the
//! `listen` port + 1000, a region's `data_dir` to `./geosync-data/<region>`).
//! A [`ConfigError`] names the file, the key (`sync.rules[1].strategy`), what
//! was expected and, when the key is in the file, its line and column:
//!
//! ```text
//! /etc/geosync/region.toml: key sync.rules[1].strategy: unknown variant "eagr", expected one of "eager", "lazy", "on-demand" (at line 9, column 12)
//! /etc/geosync/region.toml: line 3, column 8: key with no value, expected `=`
//! /etc/geosync/region.toml: unknown key "lisen" (did you mean "listen"?) (at line 2, column 1)
//! /etc/geosync/region.toml: missing key region
//! cannot read /etc/geosync/region.toml: No such file or directory
//! ```
//!
//! Relative paths (`data_dir`, `mount`) are relative to the process's working
//! directory, like the defaults.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::clock::RegionId;
use crate::conflict::{ConflictPolicy, Strategy};

mod strm;
pub use strm::*;

/// The coordinator's default gRPC port.
pub const DEFAULT_COORDINATOR_PORT: u16 = 7400;
/// The first region's default gRPC port.
pub const DEFAULT_REGION_PORT: u16 = 7410;
/// A process's HTTP port defaults to its gRPC port plus this.
pub const HTTP_PORT_OFFSET: u16 = 1000;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The default HTTP address for a gRPC address: the same IP, port + 1000.
///
/// Port 0 (an ephemeral port, as tests use) stays 0. `None` when the port + 1000
/// exceeds 65535.
pub fn default_http_listen(listen: SocketAddr) -> Option<SocketAddr> {
    if listen.port() == 0 {
        return Some(listen);
    }
    let port = listen.port().checked_add(HTTP_PORT_OFFSET)?;
    Some(SocketAddr::new(listen.ip(), port))
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A line and column (both from 1; the column counts characters) in a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a configuration could not be loaded.
///
/// `origin` is the file's path (or the name given to `from_toml_str`); `key` is a
/// dotted path with array indices, e.g. `sync.rules[2].prefix`.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// The file is not valid TOML.
    Syntax {
        origin: String,
        location: Option<Location>,
        message: String,
    },
    /// A required key is absent.
    MissingKey {
        origin: String,
        key: String,
        /// Where the table that lacks the key starts (none for the top level).
        location: Option<Location>,
    },
    /// A key the configuration does not know.
    UnknownKey {
        origin: String,
        key: String,
        /// The closest known key at the same place (full path), if one is close.
        suggestion: Option<String>,
        /// The known keys at that place.
        expected: Vec<String>,
        location: Option<Location>,
    },
    /// A value of the wrong type or out of range, or a check across keys failed.
    Invalid {
        origin: String,
        key: String,
        message: String,
        location: Option<Location>,
    },
}

impl ConfigError {
    /// The file (or name) the error is about.
    pub fn origin(&self) -> String {
        match self {
            ConfigError::Read { path, .. } => path.display().to_string(),
            ConfigError::Syntax { origin, .. }
            | ConfigError::MissingKey { origin, .. }
            | ConfigError::UnknownKey { origin, .. }
            | ConfigError::Invalid { origin, .. } => origin.clone(),
        }
    }

    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
            ConfigError::MissingKey { key, .. }
            | ConfigError::UnknownKey { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
        }
    }

    /// Where in the file the error is, if known.
    pub fn location(&self) -> Option<Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { location, .. }
            | ConfigError::MissingKey { location, .. }
            | ConfigError::UnknownKey { location, .. }
            | ConfigError::Invalid { location, .. } => *location,
        }
    }
}

/// `" (at line L, column C)"` or nothing.
struct At(Option<Location>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(loc) => write!(f, " (at {loc})"),
            None => Ok(()),
        }
    }
}

/// An I/O error's message without the `(os error N)` suffix.
fn io_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    }
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {}", path.display(), io_message(source))
            }
            ConfigError::Syntax {
                origin,
                location: Some(loc),
                message,
            } => write!(f, "{origin}: {loc}: {message}"),
            ConfigError::Syntax {
                origin,
                location: None,
                message,
            } => write!(f, "{origin}: {message}"),
            ConfigError::MissingKey {
                origin,
                key,
                location,
            } => write!(f, "{origin}: missing key {key}{}", At(*location)),
            ConfigError::UnknownKey {
                origin,
                key,
                suggestion,
                expected,
                location,
            } => {
                write!(f, "{origin}: unknown key {key:?}")?;
                match (suggestion, expected.len()) {
                    (Some(s), _) => write!(f, " (did you mean {s:?}?)")?,
                    (None, 0) => write!(f, ", this table takes no keys")?,
                    (None, 1) => write!(f, ", expected {:?}", expected[0])?,
                    (None, _) => write!(f, ", expected one of {}", quoted_list(expected))?,
                }
                write!(f, "{}", At(*location))
            }
            ConfigError::Invalid {
                origin,
                key,
                message,
                location,
            } => write!(f, "{origin}: key {key}: {message}{}", At(*location)),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A failed check after parsing: the key and what is wrong with its value.
#[derive(Debug)]
struct Problem {
    key: String,
    message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }

    fn into_error(self, text: Option<&str>, origin: &str) -> ConfigError {
        ConfigError::Invalid {
            origin: origin.to_owned(),
            location: text.and_then(|t| locate(t, &self.key)),
            key: self.key,
            message: self.message,
        }
    }
}

type Checked = Result<(), Problem>;

/// The 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> Location {
    let bytes = &text.as_bytes()[..offset.min(text.len())];
    let line_start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    let tail = &bytes[line_start..];
    let column = std::str::from_utf8(tail).map_or(tail.len(), |s| s.chars().count()) + 1;
    Location { line, column }
}

/// Splits `a.b[2].c` into `a`, `b`, `[2]`, `c`.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped.find(']').unwrap_or(stripped.len());
            if let Ok(i) = stripped[..end].parse() {
                out.push(Segment::Index(i));
            }
            rest = stripped.get(end + 1..).unwrap_or("");
        }
    }
    out
}

/// Where the value of `key` is in `text`, or the deepest enclosing table or array
/// that is (never the whole document).
fn locate(text: &str, key: &str) -> Option<Location> {
    find_value(text, key).map(|(location, _)| location)
}

/// Where the value of `key` is in `text`, and whether it is that value (`true`)
/// or only its deepest enclosing table or array that is in the file (`false`).
fn find_value(text: &str, key: &str) -> Option<(Location, bool)> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut value: Option<&toml::Spanned<DeValue<'_>>> = None;
    let mut exact = true;
    for seg in segments(key) {
        let next = match (seg, value.map(toml::Spanned::get_ref)) {
            (Segment::Key(k), None) => root
                .get_ref()
                .iter()
                .find(|(n, _)| n.get_ref() == k)
                .map(|(_, v)| v),
            (Segment::Key(k), Some(DeValue::Table(t))) => {
                t.iter().find(|(n, _)| n.get_ref() == k).map(|(_, v)| v)
            }
            (Segment::Index(i), Some(DeValue::Array(a))) => a.get(i),
            _ => None,
        };
        let Some(next) = next else {
            exact = false;
            break;
        };
        value = Some(next);
    }
    value.map(|v| (line_col(text, v.span().start), exact))
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses `text` into `T`, mapping every error to a [`ConfigError`].
/// A configuration that can check itself and fill in what it derives.
trait Checkable: DeserializeOwned {
    fn check_and_resolve(&mut self) -> Checked;
}

fn load_file<T: Checkable>(path: &Path) -> Result<T, ConfigError> {
    let text = read_file(path)?;
    from_toml_text(&text, &path.display().to_string())
}

fn from_toml_text<T: Checkable>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let mut config: T = parse_toml(text, origin)?;
    config
        .check_and_resolve()
        .map_err(|p| p.into_error(Some(text), origin))?;
    Ok(config)
}

fn validate_in_code<T: Checkable>(config: &mut T) -> Result<(), ConfigError> {
    config
        .check_and_resolve()
        .map_err(|p| p.into_error(None, "configuration"))
}

fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        origin: origin.to_owned(),
        location: e.span().map(|s| line_col(text, s.start)),
        message: e.message().to_owned(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| deserialize_error(text, origin, e))
}

fn deserialize_error(
    text: &str,
    origin: &str,
    e: serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let path = e.path().to_string();
    let root = path == ".";
    let inner = e.into_inner();
    let message = inner.message();
    let location = inner
        .span()
        .filter(|s| !root || !s.is_empty())
        .map(|s| line_col(text, s.start));
    let origin = origin.to_owned();
    let join = |parent: &str, leaf: &str| {
        if parent.is_empty() || parent == "." {
            leaf.to_owned()
        } else {
            format!("{parent}.{leaf}")
        }
    };
    if let Some(field) = backticked(message, "missing field `") {
        return ConfigError::MissingKey {
            origin,
            key: join(&path, field),
            location: location.filter(|_| !root),
        };
    }
    if let Some((field, expected)) = unknown_name(message, "unknown field `") {
        let parent = path
            .strip_suffix(field)
            .map(|p| p.trim_end_matches('.'))
            .unwrap_or(&path);
        let suggestion = suggest(field, &expected).map(|s| join(parent, s));
        return ConfigError::UnknownKey {
            origin,
            key: join(parent, field),
            suggestion,
            expected,
            location,
        };
    }
    let message = if let Some((variant, expected)) = unknown_name(message, "unknown variant `") {
        match expected.len() {
            0 => format!("unknown variant {variant:?}, there are no variants"),
            1 => format!("unknown variant {variant:?}, expected {:?}", expected[0]),
            _ => format!(
                "unknown variant {variant:?}, expected one of {}",
                quoted_list(&expected)
            ),
        }
    } else {
        plain_expectation(message)
    };
    // toml places errors inside arrays at the array; the element is more precise.
    let location = match find_value(text, &path) {
        Some((exact, true)) if !root => Some(exact),
        _ => location,
    };
    ConfigError::Invalid {
        origin,
        key: if root { "(top level)".to_owned() } else { path },
        message,
        location,
    }
}

/// The name in ``prefix`name` `` messages.
fn backticked<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.strip_suffix('`')
}

/// Parses serde's ``unknown field `x`, expected one of `a`, `b` `` (also
/// `` expected `a` ``, `` expected `a` or `b` `` and `there are no fields`).
fn unknown_name<'m>(message: &'m str, prefix: &str) -> Option<(&'m str, Vec<String>)> {
    let rest = message.strip_prefix(prefix)?;
    if let Some(i) = rest.rfind("`, expected ") {
        let list = &rest[i + "`, expected ".len()..];
        let list = list.strip_prefix("one of ").unwrap_or(list);
        let expected = list
            .split(", ")
            .flat_map(|s| s.split(" or "))
            .map(|s| s.trim_matches('`').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        return Some((&rest[..i], expected));
    }
    let i = rest.rfind("`, there are no ")?;
    Some((&rest[..i], Vec::new()))
}

/// Rewrites serde's Rust-flavoured expectations into TOML terms.
fn plain_expectation(message: &str) -> String {
    let Some(i) = message.rfind(", expected ") else {
        return message.to_owned();
    };
    let (head, expected) = (&message[..i], &message[i + ", expected ".len()..]);
    let plain = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a sequence" => "an array",
        "a boolean" => "a boolean (true or false)",
        s if s.starts_with("struct ") || s == "a map" => "a table",
        s => s,
    };
    format!("{head}, expected {plain}")
}

/// The closest of `candidates` to `name`, if it is close enough to be a typo.
fn suggest<'c>(name: &str, candidates: &'c [String]) -> Option<&'c str> {
    let limit = (name.chars().count().max(3) / 3).min(3);
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Value types and their checks
// ---------------------------------------------------------------------------

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "invalid socket address syntax {s:?}, expected an IP address and port such as \
             \"127.0.0.1:7400\" or \"[::1]:7400\""
        )
    })
}

fn de_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_socket_addr(&s).map_err(de::Error::custom)
}

fn de_opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    de_addr(d).map(Some)
}

fn de_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let s = String::deserialize(d)?;
    check_path(&s).map_err(de::Error::custom)?;
    Ok(PathBuf::from(s))
}

fn de_opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    de_path(d).map(Some)
}

fn check_path(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("expected a non-empty path".to_owned());
    }
    if s.contains('\0') {
        return Err(format!("invalid path {s:?}: contains a NUL character"));
    }
    Ok(())
}

fn de_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_prefix(&s).map_err(de::Error::custom)?;
    Ok(s)
}

/// A rule's path prefix: absolute, no `.`/`..`/empty components (a trailing `/`
/// is allowed), no NUL.
fn check_prefix(p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid prefix {p:?}: {why}"));
    if p.contains('\0') {
        return bad("contains a NUL character");
    }
    let Some(rest) = p.strip_prefix('/') else {
        return bad("expected an absolute path starting with '/', such as \"/media\"");
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return if p == "/" {
            Ok(())
        } else {
            bad("empty path component ('//')")
        };
    }
    for component in rest.split('/') {
        match component {
            "" => return bad("empty path component ('//')"),
            "." | ".." => return bad(&format!("{component:?} components are not allowed")),
            _ => {}
        }
    }
    Ok(())
}

/// `prefix` without its trailing `/` (`/` becomes the empty string, which covers
/// every path).
fn normalized_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// Whether `prefix` covers `path` component-wise (`/media` covers `/media` and
/// `/media/a`, not `/mediaserver`).
fn prefix_covers(prefix: &str, path: &[u8]) -> bool {
    let p = normalized_prefix(prefix).as_bytes();
    path.starts_with(p) && (path.len() == p.len() || path[p.len()] == b'/')
}

/// A coordinator endpoint: `http://host[:port]` or `https://host[:port]`, an
/// optional trailing `/`, nothing else (no path, query, user info).
fn check_coordinator_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid coordinator URL {url:?}: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("expected an http:// or https:// URL such as \"http://127.0.0.1:7400\"");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return bad("expected the scheme http or https");
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return bad("expected no path, query or fragment after host:port");
    }
    if authority.contains('@') {
        return bad("user info is not supported");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else {
            return bad("unclosed '[' in an IPv6 host");
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return bad(&format!("{ip:?} is not an IPv6 address"));
        }
        match after {
            "" => (ip, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (ip, Some(port)),
                None => return bad("expected ':' and a port after ']'"),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("expected a host");
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return bad(&format!("{host:?} is not a valid host name"));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return bad(&format!("{port:?} is not a port (1-65535)"));
        }
    }
    Ok(())
}

/// One coordinator URL, checked as it is read (so errors carry its index).
struct CoordinatorUrl(String);

impl<'de> Deserialize<'de> for CoordinatorUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_coordinator_url(&s).map_err(de::Error::custom)?;
        Ok(CoordinatorUrl(s))
    }
}

/// `coordinator = "http://a:7400"` or `coordinator = ["http://a:7400", ...]`.
fn de_coordinators<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Urls;
    impl<'de> Visitor<'de> for Urls {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a coordinator URL or an array of them")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            check_coordinator_url(v).map_err(E::custom)?;
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(CoordinatorUrl(url)) = seq.next_element()? {
                out.push(url);
            }
            if out.is_empty() {
                return Err(de::Error::custom("expected at least one coordinator URL"));
            }
            Ok(out)
        }
    }
    d.deserialize_any(Urls)
}

/// A number of bytes, written in configuration files as `"10GiB"`, `"512 MiB"`,
/// `"1.5G"`, `"4k"`, `"1000"` or a bare TOML integer (bytes).
///
/// Units are case-insensitive: `B` (or none) is bytes; `KB`, `MB`, `GB`, `TB` are
/// decimal (powers of 1000); `KiB`, `MiB`, `GiB`, `TiB` and the bare letters `K`,
/// `M`, `G`, `T` are binary (powers of 1024). A fraction is allowed before a unit
/// larger than a byte and rounds down to whole bytes (`"1.5K"` is 1536). Negative
/// sizes, sizes above `u64::MAX` and unknown units are rejected.
///
/// Displayed (and serialized) in the largest binary unit that divides it exactly,
/// else in bytes: `10GiB`, `1536B`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Why a string is not a [`ByteSize`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid byte size {input:?}: {reason}")]
pub struct ByteSizeError {
    pub input: String,
    pub reason: String,
}

impl ByteSize {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;
    pub const TIB: u64 = 1 << 40;

    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Parses a size; see the type's documentation for the syntax.
    pub fn parse(input: &str) -> Result<Self, ByteSizeError> {
        let fail = |reason: String| ByteSizeError {
            input: input.to_owned(),
            reason,
        };
        let t = input.trim();
        if t.is_empty() {
            return Err(fail(
                "expected a number with an optional unit, such as \"10GiB\"".to_owned(),
            ));
        }
        if t.starts_with('-') {
            return Err(fail("a size cannot be negative".to_owned()));
        }
        let end = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(end);
        let unit = unit.trim_start();
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if int.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
            return Err(fail(
                "expected a number (digits, optionally with a fraction such as 1.5) \
                 followed by an optional unit"
                    .to_owned(),
            ));
        }
        let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => {
                return Err(fail(format!(
                    "unknown unit {unit:?}, expected one of B, K, KB, KiB, M, MB, MiB, \
                     G, GB, GiB, T, TB, TiB"
                )));
            }
        };
        let too_large = || fail(format!("larger than the maximum of {} bytes", u64::MAX));
        let int: u128 = int.parse().map_err(|_| too_large())?;
        let mut total = int.checked_mul(multiplier).ok_or_else(too_large)?;
        // Digits beyond 18 are worth less than a millionth of a byte even in TiB.
        let frac = &frac[..frac.len().min(18)];
        if !frac.is_empty() {
            let digits: u128 = frac.parse().map_err(|_| too_large())?;
            if multiplier == 1 && digits != 0 {
                return Err(fail("a number of bytes cannot have a fraction".to_owned()));
            }
            total += digits * multiplier / 10u128.pow(frac.len() as u32);
        }
        u64::try_from(total).map(ByteSize).map_err(|_| too_large())
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ByteSize::parse(s)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (ByteSize::TIB, "TiB"),
            (ByteSize::GIB, "GiB"),
            (ByteSize::MIB, "MiB"),
            (ByteSize::KIB, "KiB"),
        ];
        for (size, name) in units {
            if self.0 != 0 && self.0.is_multiple_of(size) {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as \"10GiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| {
                    E::custom(format!("invalid byte size {v}: a size cannot be negative"))
                })
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------

/// `[heartbeat]`: how often a region reports, and when it counts as offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Milliseconds between heartbeats (default 5000).
    pub interval_ms: u64,
    /// A region without a heartbeat for this long is offline (default 15000);
    /// must exceed `interval_ms`.
    pub offline_after_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval_ms: 5_000,
            offline_after_ms: 15_000,
        }
    }
}

impl HeartbeatConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn offline_after(&self) -> Duration {
        Duration::from_millis(self.offline_after_ms)
    }

    fn check(&self, at: &str) -> Checked {
        if self.interval_ms == 0 {
            return Err(Problem::new(
                format!("{at}.interval_ms"),
                "must be greater than 0",
            ));
        }
        if self.offline_after_ms <= self.interval_ms {
            return Err(Problem::new(
                format!("{at}.offline_after_ms"),
                format!(
                    "must be greater than {at}.interval_ms ({}), got {}",
                    self.interval_ms, self.offline_after_ms
                ),
            ));
        }
        Ok(())
    }
}

/// A string naming one of a fixed set of values, with an error that lists them.
struct OneOf<T: 'static> {
    names: &'static [&'static str],
    values: &'static [T],
}

impl<T: Copy> Visitor<'_> for OneOf<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one of ")?;
        for (i, name) in self.names.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name:?}")?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        match self.names.iter().position(|n| *n == v) {
            Some(i) => Ok(self.values[i]),
            None => Err(E::unknown_variant(v, self.names)),
        }
    }
}

/// How a path's content is replicated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncStrategy {
    /// Content replicated to every region at once.
    Eager,
    /// Metadata batched, content replicated in the background.
    #[default]
    Lazy,
    /// Metadata only; content fetched at first read and cached.
    OnDemand,
}

impl SyncStrategy {
    pub const ALL: [SyncStrategy; 3] = [
        SyncStrategy::Eager,
        SyncStrategy::Lazy,
        SyncStrategy::OnDemand,
    ];
    const NAMES: &'static [&'static str] = &["eager", "lazy", "on-demand"];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncStrategy::Eager => "eager",
            SyncStrategy::Lazy => "lazy",
            SyncStrategy::OnDemand => "on-demand",
        }
    }
}

impl<'de> Deserialize<'de> for SyncStrategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(OneOf {
            names: SyncStrategy::NAMES,
            values: &SyncStrategy::ALL,
        })
    }
}

impl fmt::Display for SyncStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[sync.rules]]`: the strategy for a path prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRule {
    #[serde(deserialize_with = "de_prefix")]
    pub prefix: String,
    pub strategy: SyncStrategy,
}

/// `[sync]`: the sync strategy per path prefix; the longest matching prefix wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// The strategy of paths no rule covers (default `lazy`).
    pub default: SyncStrategy,
    pub rules: Vec<SyncRule>,
}

impl SyncConfig {
    /// The strategy for an absolute path (`/a/b`), as bytes: the rule with the
    /// longest prefix that covers it component-wise (`/media` covers `/media/a`,
    /// not `/mediaserver`), else `default`.
    pub fn strategy_for(&self, path: &[u8]) -> SyncStrategy {
        self.rules
            .iter()
            .filter(|r| prefix_covers(&r.prefix, path))
            .max_by_key(|r| normalized_prefix(&r.prefix).len())
            .map_or(self.default, |r| r.strategy)
    }

    fn check(&self, at: &str) -> Checked {
        check_rule_prefixes(at, self.rules.iter().map(|r| r.prefix.as_str()))
    }
}

/// Every prefix valid, and no two rules for the same prefix.
fn check_rule_prefixes<'a>(at: &str, prefixes: impl Iterator<Item = &'a str>) -> Checked {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (i, prefix) in prefixes.enumerate() {
        let key = format!("{at}.rules[{i}].prefix");
        check_prefix(prefix).map_err(|m| Problem::new(&key, m))?;
        let norm = normalized_prefix(prefix);
        if let Some((_, j)) = seen.iter().find(|(p, _)| *p == norm) {
            return Err(Problem::new(
                key,
                format!("prefix {prefix:?} already has a rule ({at}.rules[{j}])"),
            ));
        }
        seen.push((norm, i));
    }
    Ok(())
}

/// The name of a conflict strategy in configuration files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyName {
    /// Last writer wins.
    #[default]
    Lww,
    Fork,
    Merge,
    Manual,
    /// Needs a `primary` region.
    PrimaryWins,
}

impl StrategyName {
    pub const ALL: [StrategyName; 5] = [
        StrategyName::Lww,
        StrategyName::Fork,
        StrategyName::Merge,
        StrategyName::Manual,
        StrategyName::PrimaryWins,
    ];
    const NAMES: &'static [&'static str] = &["lww", "fork", "merge", "manual", "primary-wins"];

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyName::Lww => "lww",
            StrategyName::Fork => "fork",
            StrategyName::Merge => "merge",
            StrategyName::Manual => "manual",
            StrategyName::PrimaryWins => "primary-wins",
        }
    }

    /// The engine's strategy. `primary-wins` without a primary (only possible in a
    /// config that skipped validation) becomes `fork`, which is what primary-wins
    /// does when no head comes from the primary region.
    pub fn to_strategy(self, primary: Option<&RegionId>) -> Strategy {
        match (self, primary) {
            (StrategyName::Lww, _) => Strategy::LastWriterWins,
            (StrategyName::Fork, _) | (StrategyName::PrimaryWins, None) => Strategy::Fork,
            (StrategyName::Merge, _) => Strategy::Merge,
            (StrategyName::Manual, _) => Strategy::Manual,
            (StrategyName::PrimaryWins, Some(p)) => Strategy::PrimaryWins(p.clone()),
        }
    }
}

impl<'de> Deserialize<'de> for StrategyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(OneOf {
            names: StrategyName::NAMES,
            values: &StrategyName::ALL,
        })
    }
}

impl fmt::Display for StrategyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[conflicts.rules]]`: the conflict strategy for a path prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictRule {
    #[serde(deserialize_with = "de_prefix")]
    pub prefix: String,
    pub strategy: StrategyName,
    /// The primary region: required with `primary-wins`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<RegionId>,
}

/// `[conflicts]`: the conflict strategy per path prefix; the longest matching
/// prefix wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConflictConfig {
    /// The strategy of paths no rule covers (default `lww`).
    pub default: StrategyName,
    /// The primary region of `default`: required when it is `primary-wins`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<RegionId>,
    pub rules: Vec<ConflictRule>,
}

impl ConflictConfig {
    /// The engine's policy. Prefixes lose their trailing `/` (so `/` becomes `""`,
    /// which covers every path).
    pub fn policy(&self) -> ConflictPolicy {
        ConflictPolicy {
            default: self.default.to_strategy(self.primary.as_ref()),
            rules: self
                .rules
                .iter()
                .map(|r| {
                    (
                        normalized_prefix(&r.prefix).to_owned(),
                        r.strategy.to_strategy(r.primary.as_ref()),
                    )
                })
                .collect(),
        }
    }

    fn check(&self, at: &str) -> Checked {
        check_primary(
            self.default,
            self.primary.as_ref(),
            &format!("{at}.default"),
            &format!("{at}.primary"),
        )?;
        check_rule_prefixes(at, self.rules.iter().map(|r| r.prefix.as_str()))?;
        for (i, rule) in self.rules.iter().enumerate() {
            check_primary(
                rule.strategy,
                rule.primary.as_ref(),
                &format!("{at}.rules[{i}].strategy"),
                &format!("{at}.rules[{i}].primary"),
            )?;
        }
        Ok(())
    }
}

/// `primary` is required with `primary-wins` and refused with anything else.
fn check_primary(
    strategy: StrategyName,
    primary: Option<&RegionId>,
    strategy_key: &str,
    primary_key: &str,
) -> Checked {
    match (strategy, primary) {
        (StrategyName::PrimaryWins, None) => Err(Problem::new(
            primary_key,
            format!("missing: required when {strategy_key} is \"primary-wins\""),
        )),
        (s, Some(_)) if s != StrategyName::PrimaryWins => Err(Problem::new(
            primary_key,
            format!(
                "only allowed when {strategy_key} is \"primary-wins\" (it is {s:?})",
                s = s.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

fn check_positive(key: &str, value: u64) -> Checked {
    if value == 0 {
        Err(Problem::new(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

/// `http_listen` must differ from `listen`; when absent it defaults to port + 1000.
fn resolve_http_listen(listen: SocketAddr, http_listen: &mut Option<SocketAddr>) -> Checked {
    match *http_listen {
        Some(http) if http == listen && http.port() != 0 => Err(Problem::new(
            "http_listen",
            format!("must differ from listen ({listen})"),
        )),
        Some(_) => Ok(()),
        None => {
            *http_listen = Some(default_http_listen(listen).ok_or_else(|| {
                Problem::new(
                    "http_listen",
                    format!(
                        "the default (the listen port {} + {HTTP_PORT_OFFSET}) exceeds 65535: \
                         set http_listen explicitly",
                        listen.port()
                    ),
                )
            })?);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Coordinator
// ---------------------------------------------------------------------------

/// The configuration of `geosync coordinator`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "CoordinatorConfig::unresolved")]
pub struct CoordinatorConfig {
    /// The gRPC address (default `127.0.0.1:7400`).
    #[serde(deserialize_with = "de_addr")]
    pub listen: SocketAddr,
    /// The HTTP address; after loading always set (default: the `listen` port + 1000).
    #[serde(
        deserialize_with = "de_opt_addr",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_listen: Option<SocketAddr>,
    /// Where the change log and registries live (default `./geosync-data/coordinator`).
    #[serde(deserialize_with = "de_path")]
    pub data_dir: PathBuf,
    /// How far a remote HLC stamp may run ahead of the wall clock (default 500).
    pub max_clock_drift_ms: u64,
    /// A region this many events behind the head is degraded (default 1000).
    pub degraded_lag_events: u64,
    /// A region this many seconds behind the head is degraded (default 30).
    pub degraded_lag_seconds: f64,
    pub heartbeat: HeartbeatConfig,
    pub conflicts: ConflictConfig,
}

impl Default for CoordinatorConfig {
    /// The defaults, resolved (`http_listen` is set).
    fn default() -> Self {
        let listen = SocketAddr::new(LOCALHOST, DEFAULT_COORDINATOR_PORT);
        CoordinatorConfig {
            listen,
            http_listen: default_http_listen(listen),
            data_dir: PathBuf::from("./geosync-data/coordinator"),
            max_clock_drift_ms: 500,
            degraded_lag_events: 1_000,
            degraded_lag_seconds: 30.0,
            heartbeat: HeartbeatConfig::default(),
            conflicts: ConflictConfig::default(),
        }
    }
}

impl CoordinatorConfig {
    /// The defaults before resolution (`http_listen` unset, so that it follows `listen`).
    fn unresolved() -> Self {
        CoordinatorConfig {
            http_listen: None,
            ..CoordinatorConfig::default()
        }
    }

    /// Reads, checks and resolves a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_file(path)
    }

    /// Parses, checks and resolves a configuration; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        from_toml_text(text, origin)
    }

    /// Checks (and resolves) a configuration built in code.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        validate_in_code(self)
    }
    /// The HTTP address (`http_listen`, or its default if unresolved).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listen
            .or_else(|| default_http_listen(self.listen))
            .unwrap_or(SocketAddr::new(self.listen.ip(), 0))
    }

    pub fn max_clock_drift(&self) -> Duration {
        Duration::from_millis(self.max_clock_drift_ms)
    }

    pub fn degraded_lag(&self) -> Duration {
        Duration::from_secs_f64(self.degraded_lag_seconds)
    }

    /// A commented configuration file listing every key with its default.
    pub fn example() -> &'static str {
        COORDINATOR_EXAMPLE
    }
}

impl Checkable for CoordinatorConfig {
    fn check_and_resolve(&mut self) -> Checked {
        check_path(&self.data_dir.to_string_lossy()).map_err(|m| Problem::new("data_dir", m))?;
        check_positive("max_clock_drift_ms", self.max_clock_drift_ms)?;
        check_positive("degraded_lag_events", self.degraded_lag_events)?;
        if !(self.degraded_lag_seconds.is_finite() && self.degraded_lag_seconds > 0.0) {
            return Err(Problem::new(
                "degraded_lag_seconds",
                format!(
                    "expected a positive number of seconds, got {}",
                    self.degraded_lag_seconds
                ),
            ));
        }
        self.heartbeat.check("heartbeat")?;
        self.conflicts.check("conflicts")?;
        resolve_http_listen(self.listen, &mut self.http_listen)
    }
}

const COORDINATOR_EXAMPLE: &str = r#"# geosync coordinator configuration.
# Every key is optional; the values below are the defaults.

# gRPC address regions and consoles connect to.
listen = "127.0.0.1:7400"
# HTTP address (/metrics, /api/...). Default: the listen port + 1000.
http_listen = "127.0.0.1:8400"
# Where the change log, the conflict and region registries live.
data_dir = "./geosync-data/coordinator"
# How far (milliseconds) a region's clock stamps may run ahead of this clock.
max_clock_drift_ms = 500
# A region is degraded when it lags the log head by this many events...
degraded_lag_events = 1000
# ...or by this many seconds.
degraded_lag_seconds = 30.0

[heartbeat]
# Regions send a heartbeat this often (milliseconds)...
interval_ms = 5000
# ...and are offline after this long without one (must exceed interval_ms).
offline_after_ms = 15000

[conflicts]
# How concurrent writes to a path are reconciled: "lww" (last writer wins),
# "fork" (keep both: name.conflict-<region>-<stamp>.ext), "merge" (disjoint
# changes both survive, else fork), "manual" (an operator decides) or
# "primary-wins" (the path's primary region wins; needs `primary`).
default = "lww"
# primary = "eu"

# Rules for path prefixes; the longest matching prefix wins.
# [[conflicts.rules]]
# prefix = "/media"
# strategy = "primary-wins"
# primary = "eu"
#
# [[conflicts.rules]]
# prefix = "/documents"
# strategy = "manual"
"#;

// ---------------------------------------------------------------------------
// Region
// ---------------------------------------------------------------------------

fn default_region_listen() -> SocketAddr {
    SocketAddr::new(LOCALHOST, DEFAULT_REGION_PORT)
}

fn default_coordinators() -> Vec<String> {
    vec![format!("http://127.0.0.1:{DEFAULT_COORDINATOR_PORT}")]
}

fn default_cache_budget() -> ByteSize {
    ByteSize(10 * ByteSize::GIB)
}

fn default_push_batch() -> usize {
    256
}

fn default_max_clock_drift_ms() -> u64 {
    500
}

/// The configuration of `geosync region`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// This region's id (required).
    pub region: RegionId,
    /// The gRPC address (chunk server; default `127.0.0.1:7410`).
    #[serde(default = "default_region_listen", deserialize_with = "de_addr")]
    pub listen: SocketAddr,
    /// The HTTP address; after loading always set (default: the `listen` port + 1000).
    #[serde(
        default,
        deserialize_with = "de_opt_addr",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_listen: Option<SocketAddr>,
    /// The metadata and content stores (default `./geosync-data/<region>`).
    #[serde(default, deserialize_with = "de_path")]
    pub data_dir: PathBuf,
    /// Coordinator endpoints, tried in order (failover). A single string is
    /// accepted too. Default `["http://127.0.0.1:7400"]`.
    #[serde(default = "default_coordinators", deserialize_with = "de_coordinators")]
    pub coordinator: Vec<String>,
    /// Where to mount the namespace with FUSE (none: not mounted).
    #[serde(
        default,
        deserialize_with = "de_opt_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub mount: Option<PathBuf>,
    /// The most cold content cached locally (default 10GiB).
    #[serde(default = "default_cache_budget")]
    pub cache_budget: ByteSize,
    /// Change events per push (default 256).
    #[serde(default = "default_push_batch")]
    pub push_batch: usize,
    /// How far a remote HLC stamp may run ahead of the wall clock (default 500).
    #[serde(default = "default_max_clock_drift_ms")]
    pub max_clock_drift_ms: u64,
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub conflicts: ConflictConfig,
    /// STRM jobs this region runs (none by default).
    #[serde(default)]
    pub strm: StrmConfig,
}

impl RegionConfig {
    /// The defaults for `region`, resolved.
    pub fn new(region: RegionId) -> Self {
        let listen = default_region_listen();
        RegionConfig {
            data_dir: Self::default_data_dir(&region),
            region,
            listen,
            http_listen: default_http_listen(listen),
            coordinator: default_coordinators(),
            mount: None,
            cache_budget: default_cache_budget(),
            push_batch: default_push_batch(),
            max_clock_drift_ms: default_max_clock_drift_ms(),
            heartbeat: HeartbeatConfig::default(),
            sync: SyncConfig::default(),
            conflicts: ConflictConfig::default(),
            strm: StrmConfig::default(),
        }
    }

    /// `./geosync-data/<region>`.
    pub fn default_data_dir(region: &RegionId) -> PathBuf {
        Path::new("./geosync-data").join(region.as_str())
    }

    /// Reads, checks and resolves a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_file(path)
    }

    /// Parses, checks and resolves a configuration; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        from_toml_text(text, origin)
    }

    /// Checks (and resolves) a configuration built in code.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        validate_in_code(self)
    }
    /// The HTTP address (`http_listen`, or its default if unresolved).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_listen
            .or_else(|| default_http_listen(self.listen))
            .unwrap_or(SocketAddr::new(self.listen.ip(), 0))
    }

    pub fn max_clock_drift(&self) -> Duration {
        Duration::from_millis(self.max_clock_drift_ms)
    }

    /// A commented configuration file listing every key with its default (for
    /// region `eu`).
    pub fn example() -> &'static str {
        REGION_EXAMPLE
    }
}

impl Checkable for RegionConfig {
    fn check_and_resolve(&mut self) -> Checked {
        if self.data_dir.as_os_str().is_empty() {
            self.data_dir = Self::default_data_dir(&self.region);
        }
        check_path(&self.data_dir.to_string_lossy()).map_err(|m| Problem::new("data_dir", m))?;
        if let Some(mount) = &self.mount {
            check_path(&mount.to_string_lossy()).map_err(|m| Problem::new("mount", m))?;
        }
        if self.coordinator.is_empty() {
            return Err(Problem::new(
                "coordinator",
                "expected at least one coordinator URL",
            ));
        }
        for (i, url) in self.coordinator.iter().enumerate() {
            check_coordinator_url(url).map_err(|m| Problem::new(format!("coordinator[{i}]"), m))?;
        }
        check_positive("cache_budget", self.cache_budget.0)?;
        check_positive("push_batch", self.push_batch as u64)?;
        check_positive("max_clock_drift_ms", self.max_clock_drift_ms)?;
        self.heartbeat.check("heartbeat")?;
        self.sync.check("sync")?;
        self.conflicts.check("conflicts")?;
        self.strm.check_with_mount("strm", self.mount.as_deref())?;
        resolve_http_listen(self.listen, &mut self.http_listen)
    }
}

const REGION_EXAMPLE: &str = r#"# geosync region configuration.
# Only `region` is required; the other values below are the defaults.

# This region's id: 1 to 32 characters of a-z, 0-9, '-' and '_'.
region = "eu"
# gRPC address other regions fetch chunks from (regions use 7410, 7411, ...).
listen = "127.0.0.1:7410"
# HTTP address (/metrics, /stream/...). Default: the listen port + 1000.
http_listen = "127.0.0.1:8410"
# The metadata and content stores. Default: ./geosync-data/<region>.
data_dir = "./geosync-data/eu"
# Coordinator endpoints, tried in order (several = failover).
coordinator = ["http://127.0.0.1:7400"]
# Where to mount the namespace with FUSE (not mounted by default).
# mount = "/mnt/geosync"
# The most cold content kept in the local cache: B, KB/MB/GB/TB (powers of
# 1000), K/M/G/T or KiB/MiB/GiB/TiB (powers of 1024), e.g. "512 MiB", "1.5G".
cache_budget = "10GiB"
# Change events sent to the coordinator per push.
push_batch = 256
# How far (milliseconds) other regions' clock stamps may run ahead of this clock.
max_clock_drift_ms = 500

[heartbeat]
# Send a heartbeat this often (milliseconds)...
interval_ms = 5000
# ...the coordinator marks the region offline after this long without one.
offline_after_ms = 15000

[sync]
# How content is replicated: "eager" (to every region at once), "lazy"
# (metadata batched, content in the background) or "on-demand" (metadata
# only; content fetched at first read and cached).
default = "lazy"

# Rules for path prefixes; the longest matching prefix wins.
# [[sync.rules]]
# prefix = "/media"
# strategy = "on-demand"
#
# [[sync.rules]]
# prefix = "/documents"
# strategy = "eager"

[conflicts]
# How concurrent writes to a path are reconciled: "lww" (last writer wins),
# "fork" (keep both: name.conflict-<region>-<stamp>.ext), "merge" (disjoint
# changes both survive, else fork), "manual" (an operator decides) or
# "primary-wins" (the path's primary region wins; needs `primary`).
default = "lww"
# primary = "eu"

# [[conflicts.rules]]
# prefix = "/media"
# strategy = "primary-wins"
# primary = "eu"

# STRM jobs: media libraries turned into Jellyfin .strm files in the namespace.
# [strm]
# The cluster secret /stream/ links are signed with: the same in every region.
# secret = "change-me-to-a-long-random-string"
# The base URL written into .strm files. Default: http://<http_listen>.
# public_url = "http://127.0.0.1:8410"
# The token CloudDrive2 sends in its Authorization header (no token: no webhook).
# webhook_token = "change-me-too"
#
# [[strm.jobs]]
# name = "movies"
# output = "/media/strm/movies"
# "url" (signed links, the default) or "local" (paths: Emby/Kodi only).
# mode = "url"
# "full", "incremental" or "skip-existing": what scheduled runs do.
# strategy = "full"
# max_concurrency = 10
# Directory listings per second (0: unpaced).
# qps = 0.0
# max_depth = 25
# Seconds between scheduled runs (none: on demand only).
# schedule_secs = 21600
# source = { type = "local", path = "/mnt/clouddrive/movies" }
# metadata = { mode = "copy", update = "update" }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: &str) -> RegionId {
        RegionId::new(id).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn region_err(text: &str) -> String {
        RegionConfig::from_toml_str(text, "/etc/geosync/region.toml")
            .unwrap_err()
            .to_string()
    }

    fn coordinator_err(text: &str) -> String {
        CoordinatorConfig::from_toml_str(text, "coordinator.toml")
            .unwrap_err()
            .to_string()
    }

    #[track_caller]
    fn assert_contains(haystack: &str, needles: &[&str]) {
        for needle in needles {
            assert!(
                haystack.contains(needle),
                "{haystack:?} does not contain {needle:?}"
            );
        }
    }

    #[test]
    fn coordinator_defaults_from_an_empty_file() {
        let c = CoordinatorConfig::from_toml_str("", "c.toml").unwrap();
        assert_eq!(c, CoordinatorConfig::default());
        assert_eq!(c.listen, addr("127.0.0.1:7400"));
        assert_eq!(c.http_listen, Some(addr("127.0.0.1:8400")));
        assert_eq!(c.http_addr(), addr("127.0.0.1:8400"));
        assert_eq!(c.data_dir, PathBuf::from("./geosync-data/coordinator"));
        assert_eq!(c.heartbeat.interval(), Duration::from_secs(5));
        assert_eq!(c.heartbeat.offline_after(), Duration::from_secs(15));
        assert_eq!(c.conflicts.policy(), ConflictPolicy::default());
        assert_eq!(c.max_clock_drift(), Duration::from_millis(500));
        assert_eq!(c.degraded_lag_events, 1000);
        assert_eq!(c.degraded_lag(), Duration::from_secs(30));
    }

    #[test]
    fn region_defaults_from_a_region_only_file() {
        let r = RegionConfig::from_toml_str("region = \"eu\"\n", "r.toml").unwrap();
        assert_eq!(r, RegionConfig::new(region("eu")));
        assert_eq!(r.listen, addr("127.0.0.1:7410"));
        assert_eq!(r.http_listen, Some(addr("127.0.0.1:8410")));
        assert_eq!(r.data_dir, PathBuf::from("./geosync-data/eu"));
        assert_eq!(r.coordinator, vec!["http://127.0.0.1:7400".to_owned()]);
        assert_eq!(r.mount, None);
        assert_eq!(r.cache_budget, ByteSize(10 << 30));
        assert_eq!(r.push_batch, 256);
        assert_eq!(r.max_clock_drift_ms, 500);
        assert_eq!(r.heartbeat, HeartbeatConfig::default());
        assert_eq!(r.sync.strategy_for(b"/any/path"), SyncStrategy::Lazy);
        assert_eq!(r.conflicts.policy(), ConflictPolicy::default());
    }

    #[test]
    fn http_listen_defaults_follow_listen() {
        let r =
            RegionConfig::from_toml_str("region = \"us\"\nlisten = \"0.0.0.0:7411\"", "r").unwrap();
        assert_eq!(r.http_listen, Some(addr("0.0.0.0:8411")));
        // An ephemeral port stays ephemeral.
        let c = CoordinatorConfig::from_toml_str("listen = \"127.0.0.1:0\"", "c").unwrap();
        assert_eq!(c.http_listen, Some(addr("127.0.0.1:0")));
        let c = CoordinatorConfig::from_toml_str("listen = \"[::1]:7400\"", "c").unwrap();
        assert_eq!(c.http_listen, Some(addr("[::1]:8400")));
    }

    const FULL_REGION: &str = r#"
region = "us-east_1"
listen = "0.0.0.0:7411"
http_listen = "0.0.0.0:9000"
data_dir = "/var/lib/geosync"
coordinator = ["https://coord-a.example.com:7400", "http://[::1]:7400/", "http://10.0.0.5"]
mount = "/mnt/geosync"
cache_budget = "512 MiB"
push_batch = 64
max_clock_drift_ms = 250

[heartbeat]
interval_ms = 1000
offline_after_ms = 4000

[sync]
default = "eager"

[[sync.rules]]
prefix = "/media"
strategy = "on-demand"

[[sync.rules]]
prefix = "/media/posters/"
strategy = "lazy"

[conflicts]
default = "primary-wins"
primary = "eu"

[[conflicts.rules]]
prefix = "/documents"
strategy = "manual"

[[conflicts.rules]]
prefix = "/media"
strategy = "primary-wins"
primary = "us-east_1"
"#;

    #[test]
    fn full_region_file() {
        let r = RegionConfig::from_toml_str(FULL_REGION, "full.toml").unwrap();
        assert_eq!(r.region, region("us-east_1"));
        assert_eq!(r.listen, addr("0.0.0.0:7411"));
        assert_eq!(r.http_listen, Some(addr("0.0.0.0:9000")));
        assert_eq!(r.data_dir, PathBuf::from("/var/lib/geosync"));
        assert_eq!(
            r.coordinator,
            vec![
                "https://coord-a.example.com:7400",
                "http://[::1]:7400/",
                "http://10.0.0.5"
            ]
        );
        assert_eq!(r.mount, Some(PathBuf::from("/mnt/geosync")));
        assert_eq!(r.cache_budget, ByteSize(512 << 20));
        assert_eq!(r.push_batch, 64);
        assert_eq!(r.max_clock_drift(), Duration::from_millis(250));
        assert_eq!(
            r.heartbeat,
            HeartbeatConfig {
                interval_ms: 1000,
                offline_after_ms: 4000
            }
        );
        assert_eq!(r.sync.default, SyncStrategy::Eager);
        assert_eq!(r.sync.rules.len(), 2);
        assert_eq!(r.sync.strategy_for(b"/media/a.mkv"), SyncStrategy::OnDemand);
        assert_eq!(
            r.sync.strategy_for(b"/media/posters/a.jpg"),
            SyncStrategy::Lazy
        );
        assert_eq!(r.sync.strategy_for(b"/docs"), SyncStrategy::Eager);
        assert_eq!(
            r.conflicts.policy(),
            ConflictPolicy {
                default: Strategy::PrimaryWins(region("eu")),
                rules: vec![
                    ("/documents".to_owned(), Strategy::Manual),
                    (
                        "/media".to_owned(),
                        Strategy::PrimaryWins(region("us-east_1"))
                    ),
                ],
            }
        );
    }

    #[test]
    fn full_coordinator_file() {
        let text = r#"
listen = "10.0.0.1:7500"
http_listen = "10.0.0.1:8080"
data_dir = "/srv/coord"
max_clock_drift_ms = 1000
degraded_lag_events = 50
degraded_lag_seconds = 2.5
[heartbeat]
interval_ms = 2000
offline_after_ms = 2001
[conflicts]
default = "fork"
[[conflicts.rules]]
prefix = "/"
strategy = "merge"
"#;
        let c = CoordinatorConfig::from_toml_str(text, "c.toml").unwrap();
        assert_eq!(c.listen, addr("10.0.0.1:7500"));
        assert_eq!(c.http_listen, Some(addr("10.0.0.1:8080")));
        assert_eq!(c.data_dir, PathBuf::from("/srv/coord"));
        assert_eq!(c.max_clock_drift_ms, 1000);
        assert_eq!(c.degraded_lag_events, 50);
        assert_eq!(c.degraded_lag_seconds, 2.5);
        assert_eq!(c.heartbeat.offline_after_ms, 2001);
        let policy = c.conflicts.policy();
        assert_eq!(policy.default, Strategy::Fork);
        assert_eq!(policy.rules, vec![(String::new(), Strategy::Merge)]);
        assert_eq!(policy.strategy_for(b"/a/b"), &Strategy::Merge);
        // An integer is accepted where seconds are a float.
        let c = CoordinatorConfig::from_toml_str("degraded_lag_seconds = 5", "c").unwrap();
        assert_eq!(c.degraded_lag_seconds, 5.0);
    }

    #[test]
    fn a_single_coordinator_string_is_accepted() {
        let r = RegionConfig::from_toml_str(
            "region = \"eu\"\ncoordinator = \"http://coord:7400\"",
            "r",
        )
        .unwrap();
        assert_eq!(r.coordinator, vec!["http://coord:7400".to_owned()]);
    }

    #[test]
    fn configs_round_trip_through_toml() {
        let r = RegionConfig::from_toml_str(FULL_REGION, "full.toml").unwrap();
        let text = toml::to_string(&r).unwrap();
        assert_eq!(RegionConfig::from_toml_str(&text, "again").unwrap(), r);
        let c = CoordinatorConfig::default();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(CoordinatorConfig::from_toml_str(&text, "again").unwrap(), c);
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let e =
            RegionConfig::from_toml_str("region = \"eu\"\n\nlisten \"x\"\n", "r.toml").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
        assert_eq!(e.location(), Some(Location { line: 3, column: 8 }));
        assert_contains(
            &e.to_string(),
            &["r.toml: line 3, column 8: ", "expected `=`"],
        );
        let e = coordinator_err("listen = \"a\"\nlisten = \"b\"\n");
        assert_contains(&e, &["coordinator.toml: line 2, column 1: duplicate key"]);
        let e = coordinator_err("[heartbeat\n");
        assert_contains(&e, &["coordinator.toml: line 1, column "]);
    }

    #[test]
    fn unknown_variant_names_key_and_choices() {
        let text = "region = \"eu\"\n[[sync.rules]]\nprefix = \"/a\"\nstrategy = \"lazy\"\n\
                    [[sync.rules]]\nprefix = \"/b\"\nstrategy = \"eagr\"\n";
        let e = RegionConfig::from_toml_str(text, "/etc/geosync/region.toml").unwrap_err();
        assert_eq!(e.key(), Some("sync.rules[1].strategy"));
        assert_eq!(
            e.location(),
            Some(Location {
                line: 7,
                column: 12
            })
        );
        assert_eq!(
            e.to_string(),
            "/etc/geosync/region.toml: key sync.rules[1].strategy: unknown variant \"eagr\", \
             expected one of \"eager\", \"lazy\", \"on-demand\" (at line 7, column 12)"
        );
        let e = region_err("region = \"eu\"\n[conflicts]\ndefault = \"newest\"\n");
        assert_contains(
            &e,
            &[
                "key conflicts.default: unknown variant \"newest\", expected one of \"lww\", \
                 \"fork\", \"merge\", \"manual\", \"primary-wins\"",
            ],
        );
    }

    #[test]
    fn bad_socket_address() {
        let e = region_err("region = \"eu\"\nlisten = \"localhost:7410\"\n");
        assert_contains(
            &e,
            &[
                "/etc/geosync/region.toml: key listen: invalid socket address syntax",
                "\"localhost:7410\"",
                "(at line 2, column 10)",
            ],
        );
        let e = coordinator_err("http_listen = \"127.0.0.1\"");
        assert_contains(&e, &["key http_listen: invalid socket address syntax"]);
    }

    #[test]
    fn missing_keys() {
        let e = RegionConfig::from_toml_str("", "/etc/geosync/region.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/geosync/region.toml: missing key region"
        );
        let e = region_err("region = \"eu\"\n[[sync.rules]]\nprefix = \"/a\"\n");
        assert_contains(
            &e,
            &["missing key sync.rules[0].strategy (at line 2, column 1)"],
        );
    }

    #[test]
    fn unknown_keys_with_suggestions() {
        let e = RegionConfig::from_toml_str("region = \"eu\"\nlisen = \"1.2.3.4:5\"", "r.toml")
            .unwrap_err();
        assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "r.toml: unknown key \"lisen\" (did you mean \"listen\"?) (at line 2, column 1)"
        );
        let e = coordinator_err("[heartbeat]\nintervl_ms = 3\n");
        assert_contains(
            &e,
            &["unknown key \"heartbeat.intervl_ms\" (did you mean \"heartbeat.interval_ms\"?)"],
        );
        let e = region_err("region = \"eu\"\n[[sync.rules]]\nprefx = \"/a\"\nstrategy = \"lazy\"");
        assert_contains(
            &e,
            &["unknown key \"sync.rules[0].prefx\" (did you mean \"sync.rules[0].prefix\"?)"],
        );
        let e = coordinator_err("[heartbeat]\nbananas = 3\n");
        assert_contains(
            &e,
            &[
                "coordinator.toml: unknown key \"heartbeat.bananas\", expected one of \
                 \"interval_ms\", \"offline_after_ms\" (at line 2, column 1)",
            ],
        );
    }

    #[test]
    fn type_errors_speak_toml() {
        let e = coordinator_err("heartbeat = 5");
        assert_contains(
            &e,
            &["key heartbeat: invalid type: integer `5`, expected a table"],
        );
        let e = coordinator_err("max_clock_drift_ms = -1");
        assert_contains(
            &e,
            &[
                "key max_clock_drift_ms: ",
                "expected a non-negative integer",
            ],
        );
        let e = region_err("region = \"eu\"\npush_batch = \"lots\"");
        assert_contains(&e, &["key push_batch: invalid type: string \"lots\""]);
        let e = region_err("region = \"eu\"\nsync = { rules = 3 }");
        assert_contains(&e, &["key sync.rules: ", "expected an array"]);
    }

    #[test]
    fn bad_region_id() {
        let e = region_err("region = \"EU\"");
        assert_contains(&e, &["key region: region id \"EU\" may only hold"]);
        let e = region_err("region = \"\"");
        assert_contains(&e, &["key region: region id is empty"]);
        let e = region_err(
            "region = \"eu\"\n[conflicts]\ndefault = \"primary-wins\"\nprimary = \"Bad!\"",
        );
        assert_contains(&e, &["key conflicts.primary: region id \"Bad!\""]);
    }

    #[test]
    fn bad_prefixes_name_the_rule() {
        let rules = |p: &str| {
            // TOML has no `\0` escape.
            let p = format!("{p:?}").replace("\\0", "\\u0000");
            format!(
                "region = \"eu\"\n[[sync.rules]]\nprefix = \"/ok\"\nstrategy = \"lazy\"\n\
                 [[sync.rules]]\nprefix = \"/ok2\"\nstrategy = \"lazy\"\n\
                 [[sync.rules]]\nprefix = {p}\nstrategy = \"eager\"\n"
            )
        };
        for (prefix, why) in [
            ("media", "expected an absolute path"),
            ("", "expected an absolute path"),
            ("/a/../b", "\"..\" components are not allowed"),
            ("/a/./b", "\".\" components are not allowed"),
            ("/..", "\"..\" components are not allowed"),
            ("/a//b", "empty path component"),
            ("//", "empty path component"),
            ("/a\0b", "NUL"),
        ] {
            let e = region_err(&rules(prefix));
            assert_contains(
                &e,
                &[
                    "/etc/geosync/region.toml: key sync.rules[2].prefix: invalid prefix",
                    why,
                    "(at line 9, column 10)",
                ],
            );
        }
        for ok in ["/", "/a", "/a/", "/a b/c.d/...x"] {
            RegionConfig::from_toml_str(&rules(ok), "r").unwrap();
        }
        let e = region_err(
            "region = \"eu\"\n[[conflicts.rules]]\nprefix = \"/a/\"\nstrategy = \"fork\"\n\
             [[conflicts.rules]]\nprefix = \"/a\"\nstrategy = \"merge\"\n",
        );
        assert_contains(
            &e,
            &[
                "key conflicts.rules[1].prefix: prefix \"/a\" already has a rule (conflicts.rules[0])",
            ],
        );
    }

    #[test]
    fn primary_is_required_iff_primary_wins() {
        let e = region_err(
            "region = \"eu\"\n[[conflicts.rules]]\nprefix = \"/media\"\nstrategy = \"primary-wins\"\n",
        );
        assert_contains(
            &e,
            &[
                "key conflicts.rules[0].primary: missing: required when \
                 conflicts.rules[0].strategy is \"primary-wins\"",
                "(at line 2, column 1)",
            ],
        );
        let e = region_err(
            "region = \"eu\"\n[[conflicts.rules]]\nprefix = \"/media\"\nstrategy = \"fork\"\n\
             primary = \"eu\"\n",
        );
        assert_contains(
            &e,
            &[
                "key conflicts.rules[0].primary: only allowed when conflicts.rules[0].strategy \
                 is \"primary-wins\"",
                "(at line 5, column 11)",
            ],
        );
        let e = coordinator_err("[conflicts]\ndefault = \"primary-wins\"\n");
        assert_contains(&e, &["key conflicts.primary: missing"]);
        let e = coordinator_err("[conflicts]\nprimary = \"eu\"\n");
        assert_contains(
            &e,
            &["key conflicts.primary: only allowed when conflicts.default"],
        );
    }

    #[test]
    fn conflict_policy_conversion() {
        let config = ConflictConfig {
            default: StrategyName::Merge,
            primary: None,
            rules: vec![
                ConflictRule {
                    prefix: "/a/".into(),
                    strategy: StrategyName::Lww,
                    primary: None,
                },
                ConflictRule {
                    prefix: "/a/b".into(),
                    strategy: StrategyName::PrimaryWins,
                    primary: Some(region("us")),
                },
                ConflictRule {
                    prefix: "/c".into(),
                    strategy: StrategyName::Manual,
                    primary: None,
                },
            ],
        };
        let policy = config.policy();
        assert_eq!(policy.default, Strategy::Merge);
        assert_eq!(policy.strategy_for(b"/a/x"), &Strategy::LastWriterWins);
        assert_eq!(
            policy.strategy_for(b"/a/b/c"),
            &Strategy::PrimaryWins(region("us"))
        );
        assert_eq!(policy.strategy_for(b"/a/bc"), &Strategy::LastWriterWins);
        assert_eq!(policy.strategy_for(b"/c"), &Strategy::Manual);
        assert_eq!(policy.strategy_for(b"/cd"), &Strategy::Merge);
        for (name, strategy) in [
            ("lww", Strategy::LastWriterWins),
            ("fork", Strategy::Fork),
            ("merge", Strategy::Merge),
            ("manual", Strategy::Manual),
        ] {
            let c =
                CoordinatorConfig::from_toml_str(&format!("[conflicts]\ndefault = {name:?}"), "c")
                    .unwrap();
            assert_eq!(c.conflicts.policy().default, strategy, "{name}");
        }
        // Unvalidated primary-wins without a primary degrades to fork.
        assert_eq!(StrategyName::PrimaryWins.to_strategy(None), Strategy::Fork);
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in SyncStrategy::ALL {
            let v = toml::Value::try_from(s).unwrap();
            assert_eq!(v.as_str(), Some(s.as_str()));
            assert_eq!(v.try_into::<SyncStrategy>().unwrap(), s);
        }
        for s in StrategyName::ALL {
            let v = toml::Value::try_from(s).unwrap();
            assert_eq!(v.as_str(), Some(s.as_str()));
            assert_eq!(v.try_into::<StrategyName>().unwrap(), s);
        }
        assert_contains(
            &region_err("region = \"eu\"\n[sync]\ndefault = 3"),
            &[
                "key sync.default: invalid type: integer `3`, expected one of \"eager\", \
                 \"lazy\", \"on-demand\" (at line 3, column 11)",
            ],
        );
    }

    #[test]
    fn sync_strategy_for_longest_component_prefix() {
        let sync = SyncConfig {
            default: SyncStrategy::Lazy,
            rules: vec![
                SyncRule {
                    prefix: "/media".into(),
                    strategy: SyncStrategy::OnDemand,
                },
                SyncRule {
                    prefix: "/media/music/".into(),
                    strategy: SyncStrategy::Eager,
                },
                SyncRule {
                    prefix: "/".into(),
                    strategy: SyncStrategy::Eager,
                },
            ],
        };
        assert_eq!(sync.strategy_for(b"/media"), SyncStrategy::OnDemand);
        assert_eq!(sync.strategy_for(b"/media/a.mkv"), SyncStrategy::OnDemand);
        assert_eq!(sync.strategy_for(b"/media/music"), SyncStrategy::Eager);
        assert_eq!(
            sync.strategy_for(b"/media/music/a.flac"),
            SyncStrategy::Eager
        );
        assert_eq!(sync.strategy_for(b"/media/musical"), SyncStrategy::OnDemand);
        assert_eq!(sync.strategy_for(b"/mediaserver/x"), SyncStrategy::Eager);
        let plain = SyncConfig {
            default: SyncStrategy::OnDemand,
            rules: vec![SyncRule {
                prefix: "/docs".into(),
                strategy: SyncStrategy::Eager,
            }],
        };
        assert_eq!(plain.strategy_for(b"/docsx"), SyncStrategy::OnDemand);
        assert_eq!(plain.strategy_for(b"/docs/a"), SyncStrategy::Eager);
        assert_eq!(plain.strategy_for(b"/"), SyncStrategy::OnDemand);
    }

    #[test]
    fn heartbeat_checks() {
        let e = coordinator_err("[heartbeat]\ninterval_ms = 5000\noffline_after_ms = 5000\n");
        assert_contains(
            &e,
            &[
                "coordinator.toml: key heartbeat.offline_after_ms: must be greater than \
                 heartbeat.interval_ms (5000), got 5000 (at line 3, column 20)",
            ],
        );
        let e = region_err("region = \"eu\"\n[heartbeat]\noffline_after_ms = 100\n");
        assert_contains(
            &e,
            &["key heartbeat.offline_after_ms: must be greater than"],
        );
        let e = coordinator_err("[heartbeat]\ninterval_ms = 0\n");
        assert_contains(&e, &["key heartbeat.interval_ms: must be greater than 0"]);
    }

    #[test]
    fn other_value_checks() {
        assert_contains(
            &region_err("region = \"eu\"\npush_batch = 0"),
            &["key push_batch: must be greater than 0 (at line 2, column 14)"],
        );
        assert_contains(
            &region_err("region = \"eu\"\ncache_budget = 0"),
            &["key cache_budget: must be greater than 0"],
        );
        assert_contains(
            &coordinator_err("degraded_lag_seconds = -1.0"),
            &["key degraded_lag_seconds: expected a positive number of seconds, got -1"],
        );
        assert_contains(
            &coordinator_err("degraded_lag_seconds = nan"),
            &["key degraded_lag_seconds: expected a positive number"],
        );
        assert_contains(
            &coordinator_err("max_clock_drift_ms = 0"),
            &["key max_clock_drift_ms: must be greater than 0"],
        );
        assert_contains(
            &coordinator_err("data_dir = \"\""),
            &["key data_dir: expected a non-empty path"],
        );
        assert_contains(
            &region_err("region = \"eu\"\nmount = \"\""),
            &["key mount: expected a non-empty path"],
        );
        assert_contains(
            &coordinator_err("listen = \"127.0.0.1:65000\""),
            &["key http_listen: the default (the listen port 65000 + 1000) exceeds 65535"],
        );
        assert_contains(
            &coordinator_err("listen = \"127.0.0.1:7400\"\nhttp_listen = \"127.0.0.1:7400\""),
            &["key http_listen: must differ from listen (127.0.0.1:7400)"],
        );
        assert_contains(
            &region_err("region = \"eu\"\ncache_budget = \"10 parsecs\""),
            &[
                "key cache_budget: invalid byte size \"10 parsecs\": unknown unit \"parsecs\"",
                "(at line 2, column 16)",
            ],
        );
        assert_contains(
            &region_err("region = \"eu\"\ncache_budget = -5"),
            &["key cache_budget: invalid byte size -5: a size cannot be negative"],
        );
    }

    #[test]
    fn bad_coordinator_urls() {
        for (url, why) in [
            ("127.0.0.1:7400", "expected an http:// or https:// URL"),
            ("ftp://host:21", "expected the scheme http or https"),
            ("http://", "expected a host"),
            ("http://:7400", "expected a host"),
            ("http://host:", "is not a port"),
            ("http://host:0", "is not a port"),
            ("http://host:70000", "is not a port"),
            ("http://host:7400/api", "expected no path"),
            ("http://user@host:7400", "user info"),
            ("http://[::1", "unclosed"),
            ("http://[zz]:1", "is not an IPv6 address"),
            ("http://ho st:1", "is not a valid host name"),
        ] {
            let text = format!("region = \"eu\"\ncoordinator = [\"http://ok:7400\", {url:?}]\n");
            let e = region_err(&text);
            assert_contains(
                &e,
                &[
                    "/etc/geosync/region.toml: key coordinator[1]: invalid coordinator URL",
                    &format!("{url:?}"),
                    why,
                    "(at line 2, column 34)",
                ],
            );
        }
        assert_contains(
            &region_err("region = \"eu\"\ncoordinator = []"),
            &["key coordinator: expected at least one coordinator URL"],
        );
        assert_contains(
            &region_err("region = \"eu\"\ncoordinator = \"nope\""),
            &["key coordinator: invalid coordinator URL \"nope\""],
        );
        for ok in [
            "http://a:1",
            "HTTPS://coord.example.com",
            "http://[::1]",
            "https://[2001:db8::1]:443/",
            "http://10.1.2.3:7400",
        ] {
            check_coordinator_url(ok).unwrap();
        }
    }

    #[test]
    fn load_reads_files_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = RegionConfig::load(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read {}: No such file or directory",
                missing.display()
            )
        );
        let path = dir.path().join("region.toml");
        std::fs::write(&path, "region = \"eu\"\npush_batch = 0\n").unwrap();
        let e = RegionConfig::load(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: key push_batch: must be greater than 0 (at line 2, column 14)",
                path.display()
            )
        );
        std::fs::write(&path, "region = \"eu\"\n").unwrap();
        assert_eq!(RegionConfig::load(&path).unwrap().region, region("eu"));
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            CoordinatorConfig::load(&path).unwrap(),
            CoordinatorConfig::default()
        );
    }

    #[test]
    fn validate_configs_built_in_code() {
        let mut r = RegionConfig::new(region("eu"));
        r.validate().unwrap();
        r.sync.rules.push(SyncRule {
            prefix: "relative".into(),
            strategy: SyncStrategy::Eager,
        });
        let e = r.validate().unwrap_err();
        assert_contains(
            &e.to_string(),
            &["configuration: key sync.rules[0].prefix: invalid prefix"],
        );
        let mut c = CoordinatorConfig {
            http_listen: None,
            ..CoordinatorConfig::default()
        };
        assert_eq!(c.http_addr(), addr("127.0.0.1:8400"));
        c.validate().unwrap();
        assert_eq!(c.http_listen, Some(addr("127.0.0.1:8400")));
    }

    #[test]
    fn byte_size_parsing() {
        const K: u64 = 1024;
        for (input, bytes) in [
            ("0", 0),
            ("1000", 1000),
            ("1000B", 1000),
            ("1000 b", 1000),
            ("4k", 4 * K),
            ("4K", 4 * K),
            ("4KiB", 4 * K),
            ("4kib", 4 * K),
            ("4KB", 4000),
            ("4kb", 4000),
            ("512 MiB", 512 * K * K),
            ("512M", 512 * K * K),
            ("512MB", 512_000_000),
            ("10GiB", 10 * K * K * K),
            ("10gib", 10 * K * K * K),
            ("1.5G", 3 * K * K * K / 2),
            ("1.5GB", 1_500_000_000),
            ("0.5k", 512),
            ("1.1K", 1126),
            ("2T", 2 * K * K * K * K),
            ("2TB", 2_000_000_000_000),
            ("2tib", 2 * K * K * K * K),
            ("  7 MiB  ", 7 * K * K),
            ("1.0", 1),
            ("18446744073709551615", u64::MAX),
            ("15.999999999999999999999T", 16 * K * K * K * K - 1),
        ] {
            assert_eq!(ByteSize::parse(input), Ok(ByteSize(bytes)), "{input:?}");
        }
        for (input, why) in [
            ("", "expected a number"),
            ("   ", "expected a number"),
            ("-1", "cannot be negative"),
            ("-1GiB", "cannot be negative"),
            ("GiB", "expected a number"),
            (".5G", "expected a number"),
            ("5.G", "expected a number"),
            ("1.2.3K", "expected a number"),
            ("10XB", "unknown unit \"XB\""),
            ("10 PiB", "unknown unit \"PiB\""),
            ("1e9", "unknown unit \"e9\""),
            ("+5", "expected a number"),
            ("1.5", "cannot have a fraction"),
            ("18446744073709551616", "larger than the maximum"),
            ("16EiB", "unknown unit"),
            ("16777216TiB", "larger than the maximum"),
            (
                "99999999999999999999999999999999999999999",
                "larger than the maximum",
            ),
        ] {
            let e = ByteSize::parse(input).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("invalid byte size {input:?}: ")),
                "{msg}"
            );
            assert_contains(&msg, &[why]);
        }
        for (size, shown) in [
            (0, "0B"),
            (1000, "1000B"),
            (1536, "1536B"),
            (4096, "4KiB"),
            (10 << 30, "10GiB"),
            (3 << 40, "3TiB"),
            (u64::MAX, "18446744073709551615B"),
        ] {
            assert_eq!(ByteSize(size).to_string(), shown);
            assert_eq!(ByteSize::parse(shown), Ok(ByteSize(size)));
        }
        let r = RegionConfig::from_toml_str("region = \"eu\"\ncache_budget = 4096", "r").unwrap();
        assert_eq!(r.cache_budget, ByteSize(4096));
    }

    /// Uncomments the commented-out settings (`# key = ...`, `# [table]`).
    /// The commented `primary` keys need `default = "primary-wins"`.
    fn uncomment(example: &str) -> String {
        example
            .replace("default = \"lww\"", "default = \"primary-wins\"")
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with('[')
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        }) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn examples_parse_to_the_defaults() {
        let r = RegionConfig::from_toml_str(RegionConfig::example(), "example").unwrap();
        assert_eq!(r, RegionConfig::new(region("eu")));
        let c = CoordinatorConfig::from_toml_str(CoordinatorConfig::example(), "example").unwrap();
        assert_eq!(c, CoordinatorConfig::default());
    }

    #[test]
    fn examples_with_every_setting_uncommented_parse() {
        let text = uncomment(RegionConfig::example());
        let r =
            RegionConfig::from_toml_str(&text, "example").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(r.mount, Some(PathBuf::from("/mnt/geosync")));
        assert_eq!(r.sync.rules.len(), 2);
        assert_eq!(r.conflicts.rules.len(), 1);
        assert_eq!(r.conflicts.primary, Some(region("eu")));
        let text = uncomment(CoordinatorConfig::example());
        let c = CoordinatorConfig::from_toml_str(&text, "example")
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.conflicts.rules.len(), 2);
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let names: Vec<String> = ["listen", "http_listen", "data_dir"]
            .map(String::from)
            .to_vec();
        assert_eq!(suggest("lisen", &names), Some("listen"));
        assert_eq!(suggest("http_lisen", &names), Some("http_listen"));
        assert_eq!(suggest("datadir", &names), Some("data_dir"));
        assert_eq!(suggest("region", &names), None);
        assert_eq!(suggest("x", &names), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
