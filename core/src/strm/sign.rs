//! Links that keep working: `/stream/` URLs with a non-expiring signature.
//!
//! A link is `<base>/stream<path>?[job=<job>&]sig=<hex>`: the path percent-encoded byte by
//! byte (everything but `A-Z a-z 0-9 - . _ ~ /`, so spaces and non-ASCII names survive every
//! player), and the signature a BLAKE3 keyed hash (an HMAC-equivalent MAC) of the job name and
//! the decoded path under a key derived from the cluster secret. Every region derives the same
//! key, so a link written by one region plays from any other.

/// What the key is derived for (BLAKE3 `derive_key` context: fixed, unique to this use).
const KEY_CONTEXT: &str = "geosync 2026-11 strm stream links v1";

/// Bytes of the MAC a link carries (128 bits).
const SIGNATURE_BYTES: usize = 16;

/// Signs and verifies `/stream/` links with the cluster secret.
#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { .. }")
    }
}

impl Signer {
    /// A signer for the cluster secret `secret`.
    pub fn new(secret: &str) -> Self {
        Signer {
            key: blake3::derive_key(KEY_CONTEXT, secret.as_bytes()),
        }
    }

    fn mac(&self, job: Option<&str>, path: &str) -> [u8; SIGNATURE_BYTES] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        // The job name cannot hold a NUL, so `job \0 path` is unambiguous.
        h.update(job.unwrap_or("").as_bytes());
        h.update(&[0]);
        h.update(path.as_bytes());
        let mut out = [0u8; SIGNATURE_BYTES];
        out.copy_from_slice(&h.finalize().as_bytes()[..SIGNATURE_BYTES]);
        out
    }

    /// The signature of `path` (decoded, absolute) served for `job` (`None`: the namespace).
    pub fn sign(&self, job: Option<&str>, path: &str) -> String {
        self.mac(job, path)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `sig` is the signature of `path` for `job`; compares in constant time.
    pub fn verify(&self, job: Option<&str>, path: &str, sig: &str) -> bool {
        let expected = self.sign(job, path);
        if sig.len() != expected.len() {
            return false;
        }
        expected
            .bytes()
            .zip(sig.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// The full link: `base` (no trailing `/`) + `/stream` + encoded `path` + query.
    pub fn link(&self, base: &str, job: Option<&str>, path: &str) -> String {
        let sig = self.sign(job, path);
        let base = base.trim_end_matches('/');
        match job {
            Some(job) => format!("{base}/stream{}?job={job}&sig={sig}", encode_path(path)),
            None => format!("{base}/stream{}?sig={sig}", encode_path(path)),
        }
    }
}

/// Percent-encodes a path: every byte but `A-Z a-z 0-9 - . _ ~ /`.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_path_and_job() {
        let s = Signer::new("0123456789abcdef-secret");
        let sig = s.sign(None, "/movies/A b.mkv");
        assert!(s.verify(None, "/movies/A b.mkv", &sig));
        assert!(!s.verify(None, "/movies/A c.mkv", &sig));
        assert!(!s.verify(Some("movies"), "/movies/A b.mkv", &sig));
        assert!(!s.verify(None, "/movies/A b.mkv", &sig[..31]));
        let other = Signer::new("another-secret-0123456");
        assert!(!other.verify(None, "/movies/A b.mkv", &sig));
    }

    #[test]
    fn links_are_percent_encoded() {
        assert_eq!(encode_path("/a b/é#?%.mkv"), "/a%20b/%C3%A9%23%3F%25.mkv");
        let s = Signer::new("0123456789abcdef-secret");
        let link = s.link("http://h:1/", None, "/x y.mkv");
        assert!(
            link.starts_with("http://h:1/stream/x%20y.mkv?sig="),
            "{link}"
        );
        assert!(!link.contains(' '));
    }
}
