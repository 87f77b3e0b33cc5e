//! What the binary's tests share: the binary, a free port range, and waiting
//! with a deadline.

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// The `geosync` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_geosync");

/// A base port whose coordinator, `regions` region ports (base+10, base+11,
/// ...) and their HTTP ports (+1000) are all free now.
pub fn free_base_port(regions: u16) -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        ^ std::process::id();
    for i in 0..200u32 {
        let base = 20_000 + (seed.wrapping_add(i.wrapping_mul(7919)) % 20_000) as u16;
        let ports: Vec<u16> = std::iter::once(base)
            .chain((0..regions).map(|r| base + 10 + r))
            .flat_map(|p| [p, p + 1000])
            .collect();
        if ports
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port range found");
}

/// Polls `f` until it holds or `deadline` passes.
pub fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
