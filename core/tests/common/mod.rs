//! Helpers shared by the region service tests: deadlines and test data.

use std::future::Future;
use std::time::Duration;

/// The longest any step of a test may wait.
pub const WAIT: Duration = Duration::from_secs(20);

/// Runs `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Polls `done` until it holds, failing the test after [`WAIT`].
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// `len` pseudo-random bytes from `seed` (xorshift): reproducible test data.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
