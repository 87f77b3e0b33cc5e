//! CloudDrive2 file-system webhook payloads: parsed and checked as untrusted input.
//!
//! CloudDrive2 POSTs `{"device_name", "user_name", "version", "event_category": "file",
//! "event_name": "notify", "event_time", "send_time", "data": [{"action", "is_dir",
//! "source_file", "destination_file"}]}` where every value is a string. A payload is accepted
//! whole or not at all: one bad item refuses the request, so nothing half-applies.

use serde::Deserialize;

/// The most changes one request may carry.
pub const MAX_WEBHOOK_ITEMS: usize = 1000;

/// The most bytes a webhook body may have.
pub const MAX_WEBHOOK_BYTES: usize = 1 << 20;

/// What happened to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Delete,
    Rename,
}

/// One checked change: absolute, normalised source paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    pub action: Action,
    pub is_dir: bool,
    pub source: String,
    /// The new path of a rename.
    pub destination: Option<String>,
}

/// Why a payload is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("malformed webhook payload: {0}")]
    Malformed(String),
    #[error(
        "webhook payload has {0} changes; at most {MAX_WEBHOOK_ITEMS} are accepted per request"
    )]
    TooMany(usize),
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    event_category: Option<String>,
    #[serde(default)]
    event_name: Option<String>,
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    action: String,
    is_dir: String,
    source_file: String,
    #[serde(default)]
    destination_file: Option<String>,
}

/// Normalises an untrusted source path: `\` is a separator too, empty and `.` components go,
/// `..` and NUL are refused. The result is absolute (`/a/b`, `/` for the root).
pub fn normalize_path(raw: &str) -> Result<String, String> {
    if raw.contains('\0') {
        return Err(format!("path {raw:?} contains a NUL character"));
    }
    if raw.trim().is_empty() {
        return Err("empty path".into());
    }
    let mut out = String::with_capacity(raw.len() + 1);
    for part in raw.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(format!("path {raw:?} has a '..' component")),
            p => {
                out.push('/');
                out.push_str(p);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Parses and checks a webhook body.
pub fn parse(body: &[u8]) -> Result<Vec<FileChange>, PayloadError> {
    let payload: Payload =
        serde_json::from_slice(body).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    if let Some(c) = payload.event_category.as_deref()
        && c != "file"
    {
        return Err(PayloadError::Malformed(format!(
            "event_category {c:?}: only \"file\" events are handled"
        )));
    }
    if let Some(n) = payload.event_name.as_deref()
        && n != "notify"
    {
        return Err(PayloadError::Malformed(format!(
            "event_name {n:?}: only \"notify\" events are handled"
        )));
    }
    if payload.data.len() > MAX_WEBHOOK_ITEMS {
        return Err(PayloadError::TooMany(payload.data.len()));
    }
    let mut out = Vec::with_capacity(payload.data.len());
    for (i, item) in payload.data.into_iter().enumerate() {
        let bad = |m: String| PayloadError::Malformed(format!("data[{i}]: {m}"));
        let action = match item.action.as_str() {
            "create" => Action::Create,
            "delete" => Action::Delete,
            "rename" => Action::Rename,
            a => {
                return Err(bad(format!(
                    "unknown action {a:?}, expected \"create\", \"delete\" or \"rename\""
                )));
            }
        };
        let is_dir = match item.is_dir.as_str() {
            "true" => true,
            "false" => false,
            v => return Err(bad(format!("is_dir {v:?}, expected \"true\" or \"false\""))),
        };
        let source =
            normalize_path(&item.source_file).map_err(|m| bad(format!("source_file: {m}")))?;
        let destination = match (action, item.destination_file.as_deref()) {
            (Action::Rename, Some(d)) => {
                Some(normalize_path(d).map_err(|m| bad(format!("destination_file: {m}")))?)
            }
            (Action::Rename, None) => return Err(bad("a rename needs destination_file".into())),
            _ => None,
        };
        out.push(FileChange {
            action,
            is_dir,
            source,
            destination,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_traversal_refused() {
        assert_eq!(normalize_path("/a//b/./c/").unwrap(), "/a/b/c");
        assert_eq!(normalize_path("a\\b").unwrap(), "/a/b");
        assert!(normalize_path("/a/../etc").is_err());
        assert!(normalize_path("/a\0b").is_err());
        assert!(normalize_path("").is_err());
    }

    #[test]
    fn payloads_are_checked_whole() {
        let ok = br#"{"device_name":"d","event_category":"file","event_name":"notify","data":[
            {"action":"create","is_dir":"false","source_file":"/m/a.mkv","destination_file":""},
            {"action":"rename","is_dir":"true","source_file":"/m/x","destination_file":"/m/y"}]}"#;
        let changes = parse(ok).unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1].destination.as_deref(), Some("/m/y"));
        assert!(matches!(parse(b"{"), Err(PayloadError::Malformed(_))));
        let bad_dir = br#"{"data":[{"action":"create","is_dir":"yes","source_file":"/a"}]}"#;
        assert!(matches!(parse(bad_dir), Err(PayloadError::Malformed(_))));
        let bad_action = br#"{"data":[{"action":"chmod","is_dir":"false","source_file":"/a"}]}"#;
        assert!(matches!(parse(bad_action), Err(PayloadError::Malformed(_))));
        let rename = br#"{"data":[{"action":"rename","is_dir":"false","source_file":"/a"}]}"#;
        assert!(matches!(parse(rename), Err(PayloadError::Malformed(_))));
        let item = r#"{"action":"delete","is_dir":"false","source_file":"/a"}"#;
        let many = format!("{{\"data\":[{}]}}", vec![item; 1001].join(","));
        assert_eq!(parse(many.as_bytes()), Err(PayloadError::TooMany(1001)));
    }
}
