//! A line diff of two small text versions (longest common subsequence), for
//! the conflict detail pane.

/// Files with more lines than this on either side get no line diff (the
/// table is `lines × lines`).
pub const MAX_DIFF_LINES: usize = 400;

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// In both versions.
    Same(&'a str),
    /// Only in the left version.
    Left(&'a str),
    /// Only in the right version.
    Right(&'a str),
}

/// The content as text, if it is text (UTF-8 without NUL bytes).
pub fn as_text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok().filter(|s| !s.contains('\0'))
}

/// The line diff of two texts, or `None` when either is too long.
pub fn lines<'a>(left: &'a str, right: &'a str) -> Option<Vec<Line<'a>>> {
    let a: Vec<&str> = left.lines().collect();
    let b: Vec<&str> = right.lines().collect();
    if a.len() > MAX_DIFF_LINES || b.len() > MAX_DIFF_LINES {
        return None;
    }
    // lcs[i][j]: the LCS length of a[i..] and b[j..].
    let w = b.len() + 1;
    let mut lcs = vec![0u16; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * w + j] = if a[i] == b[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * w + j] >= lcs[i * w + j + 1] {
            out.push(Line::Left(a[i]));
            i += 1;
        } else {
            out.push(Line::Right(b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| Line::Left(l)));
    out.extend(b[j..].iter().map(|l| Line::Right(l)));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_shows_as_removed_and_added() {
        let d = lines("a\nb\nc\n", "a\nB\nc\nd\n").expect("small");
        assert_eq!(
            d,
            vec![
                Line::Same("a"),
                Line::Left("b"),
                Line::Right("B"),
                Line::Same("c"),
                Line::Right("d"),
            ]
        );
    }

    #[test]
    fn binary_is_not_text_and_long_files_get_no_diff() {
        assert!(as_text(b"a\0b").is_none());
        assert!(as_text(&[0xff, 0xfe]).is_none());
        let long = "x\n".repeat(MAX_DIFF_LINES + 1);
        assert!(lines(&long, "x").is_none());
    }
}
