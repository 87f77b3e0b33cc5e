//! Smoke test of the real binary in a pseudo-terminal (tmux): `geosync demo`
//! opens the console, the screen shows the regions, `q` quits, the terminal
//! is restored and the process exits 0. Skips, saying so, without tmux.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

mod common;

use common::{BIN, free_base_port, wait_until};
/// How long the demo may take to show healthy regions, and to stop.
const DEADLINE: Duration = Duration::from_secs(60);

/// A tmux server of its own (own socket), killed on every path.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "smoke"]).stdout)
            .into_owned()
    }

    fn format(&self, f: &str) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["display-message", "-p", "-t", "smoke", f])
                .stdout,
        )
        .trim()
        .to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn tmux_missing() -> bool {
    !Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

#[test]
fn demo_opens_the_console_and_q_quits_with_the_terminal_restored() {
    if tmux_missing() {
        eprintln!(
            "SKIPPED: tmux is not installed; this smoke test needs it (apt-get install tmux)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let base = free_base_port(3);
    let tmux = Tmux {
        socket: dir.path().join("tmux.sock"),
    };
    // After the demo: its exit status and the terminal's modes, then stay up
    // so the pane can be read.
    let script = format!(
        "{} demo --dir {} --base-port {base}; echo \"EXIT=$?\"; stty -a | tr ';' '\\n' | tr -s ' ' '\\n' | grep -E '^-?(icanon|echo)$' | tr '\\n' ' '; echo; sleep 60",
        quoted(Path::new(BIN)),
        quoted(&dir.path().join("data")),
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "smoke",
        "-x",
        "100",
        "-y",
        "30",
        "sh",
        "-c",
        &script,
    ]);
    assert!(started.status.success(), "tmux: {started:?}");

    let shown = wait_until(DEADLINE, || {
        let s = tmux.screen();
        s.contains("1 Overview")
            && ["eu", "us", "ap"].iter().all(|r| s.contains(r))
            && s.matches("healthy").count() >= 3
    });
    assert!(
        shown,
        "the console shows three healthy regions:\n{}",
        tmux.screen()
    );
    assert_eq!(
        tmux.format("#{alternate_on}"),
        "1",
        "the console uses the alternate screen"
    );

    let sent = tmux.run(&["send-keys", "-t", "smoke", "q"]);
    assert!(sent.status.success(), "send-keys: {sent:?}");
    let exited = wait_until(DEADLINE, || tmux.screen().contains("EXIT="));
    let screen = tmux.screen();
    assert!(exited, "the demo stops after q:\n{screen}");
    assert!(screen.contains("EXIT=0"), "exit status 0:\n{screen}");
    assert!(screen.contains("stopping..."), "a clean stop:\n{screen}");
    // Restored: the main screen, cooked mode with echo, a visible cursor.
    assert_eq!(
        tmux.format("#{alternate_on}"),
        "0",
        "back on the main screen"
    );
    assert_eq!(tmux.format("#{cursor_flag}"), "1", "the cursor is visible");
    let modes = screen
        .lines()
        .find(|l| l.contains("icanon"))
        .unwrap_or_default()
        .to_owned();
    let modes: Vec<&str> = modes.split_whitespace().collect();
    assert!(
        modes.contains(&"icanon") && modes.contains(&"echo"),
        "cooked mode and echo restored: {modes:?}\n{screen}"
    );
}
