//! The geosync test harness: temporary directories, deadlines, child processes.
//! Scenario tests live in `tests/tests/`.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Polls `condition` until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
