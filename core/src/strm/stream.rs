//! What `/stream/` needs besides the namespace: `Range` headers and content types.

/// The part of a file a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// The whole file (no `Range`, or one this server ignores, as RFC 9110 allows).
    Full,
    /// Bytes `start..end` (end exclusive): a 206 answer.
    Partial { start: u64, end: u64 },
    /// A range that starts past the end: 416.
    Unsatisfiable,
}

/// Reads a `Range` header for a file of `size` bytes. Only one `bytes=` range is served; a
/// multi-range or malformed header is ignored (the whole file is sent).
pub fn parse_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(h) = header else {
        return ByteRange::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (num(a), num(b)) {
        (Some(start), end) if a.len() == a.trim().len() => {
            if !b.is_empty() && end.is_none() {
                return ByteRange::Full;
            }
            if start >= size {
                return ByteRange::Unsatisfiable;
            }
            let end = end.map_or(size, |e| e.saturating_add(1).min(size));
            if end <= start {
                return ByteRange::Full;
            }
            ByteRange::Partial { start, end }
        }
        (None, Some(suffix)) if a.is_empty() => {
            if suffix == 0 {
                return ByteRange::Unsatisfiable;
            }
            ByteRange::Partial {
                start: size.saturating_sub(suffix),
                end: size,
            }
        }
        _ => ByteRange::Full,
    }
}

/// The `Content-Type` for a file name, by extension.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("mkv") => "video/x-matroska",
        Some("mp4" | "m4v") => "video/mp4",
        Some("webm") => "video/webm",
        Some("avi") => "video/x-msvideo",
        Some("mov") => "video/quicktime",
        Some("wmv") => "video/x-ms-wmv",
        Some("flv") => "video/x-flv",
        Some("ts" | "m2ts" | "mts") => "video/mp2t",
        Some("mpg" | "mpeg") => "video/mpeg",
        Some("rmvb") => "application/vnd.rn-realmedia-vbr",
        Some("iso") => "application/x-iso9660-image",
        Some("mp3") => "audio/mpeg",
        Some("flac") => "audio/flac",
        Some("m4a") => "audio/mp4",
        Some("aac") => "audio/aac",
        Some("ogg" | "opus") => "audio/ogg",
        Some("wav") => "audio/wav",
        Some("srt") => "application/x-subrip",
        Some("vtt") => "text/vtt",
        Some("ass" | "ssa") => "text/x-ssa",
        Some("nfo" | "xml") => "text/xml; charset=utf-8",
        Some("txt" | "strm") => "text/plain; charset=utf-8",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), ByteRange::Full);
        assert_eq!(
            parse_range(Some("bytes=2-4"), 10),
            ByteRange::Partial { start: 2, end: 5 }
        );
        assert_eq!(
            parse_range(Some("bytes=2-"), 10),
            ByteRange::Partial { start: 2, end: 10 }
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            ByteRange::Partial { start: 7, end: 10 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-100"), 10),
            ByteRange::Partial { start: 5, end: 10 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), ByteRange::Full);
    }

    #[test]
    fn types() {
        assert_eq!(content_type("A.MKV"), "video/x-matroska");
        assert_eq!(content_type("poster.jpg"), "image/jpeg");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
