//! The operator's console: a ratatui terminal UI over the coordinator's
//! Admin service.
//!
//! - `action`: the [`Action`] enum (everything that can happen) and the
//!   backend [`Request`]s;
//! - `app`: the [`App`] state, changed only by [`App::update`];
//! - `keys`: the key table (what `?` shows);
//! - `views`: rendering, nothing else;
//! - `net`: the backend, the only network code;
//! - `diff`, `strings`: line diffs, UI text and formatting;
//! - this module: [`Console`] (app + backend, drivable without a terminal)
//!   and [`run`], the event task over the real terminal.

pub mod action;
pub mod app;
pub mod diff;
pub mod keys;
mod net;
pub mod strings;
pub mod views;

use std::future::Future;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossterm::event::{Event, EventStream, KeyEvent};
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

pub use action::{Action, Choice, Operation, Request, View};
pub use app::{App, Options};
pub use net::run_operation;

/// How often the clock ticks (heartbeat ages, sparkline samples, refreshes).
pub const TICK: Duration = Duration::from_secs(1);

/// What can stop the console.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadCoordinator(String),
    #[error(
        "the console needs a terminal: standard input and output must be a TTY (in scripts: `geosync status`, or `geosync demo --headless`)"
    )]
    NotATerminal,
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    #[error("cannot log to {dir}: {reason}")]
    Log { dir: String, reason: String },
}

/// The clock in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether `NO_COLOR` asks for no colours (set and not empty).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// The app and its backend, without a terminal: the event task drives it
/// from terminal input, tests from key events they make.
pub struct Console {
    /// The state the views render.
    pub app: App,
    requests: mpsc::UnboundedSender<Request>,
    news: mpsc::UnboundedReceiver<Action>,
    cancel: CancellationToken,
    backend: JoinHandle<()>,
}

impl Console {
    /// Starts the backend (connecting lazily: an unreachable coordinator
    /// shows as disconnected, it is not an error). Needs a Tokio runtime.
    pub fn start(options: Options) -> Result<Console, Error> {
        let channel = net::channel(&options.coordinator).map_err(Error::BadCoordinator)?;
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (news_tx, news) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let backend = tokio::spawn(net::run(channel, requests_rx, news_tx, cancel.clone()));
        Ok(Console {
            app: App::new(options),
            requests,
            news,
            cancel,
            backend,
        })
    }

    /// Applies an action and hands its requests to the backend.
    pub fn dispatch(&mut self, action: Action) {
        for r in self.app.update(action) {
            // The backend outlives the console's loop; a send only fails at shutdown.
            let _ = self.requests.send(r);
        }
    }

    /// A key press, through the key table. Returns whether it meant anything.
    pub fn key(&mut self, key: KeyEvent) -> bool {
        match keys::action_for(&self.app, key) {
            Some(a) => {
                self.dispatch(a);
                true
            }
            None => false,
        }
    }

    /// A terminal event. Returns whether the screen should be redrawn.
    pub fn event(&mut self, event: Event) -> bool {
        match event {
            Event::Key(k) => self.key(k),
            Event::Resize(..) => true,
            _ => false,
        }
    }

    /// The clock ticks now.
    pub fn tick(&mut self) {
        self.dispatch(Action::Tick(now_ms()));
    }

    /// Waits for the backend's next news. Cancel-safe (a channel receive).
    pub async fn news(&mut self) -> Option<Action> {
        self.news.recv().await
    }

    /// Applies every news item that is already waiting; returns how many.
    pub fn drain_news(&mut self) -> usize {
        let mut n = 0;
        while let Ok(a) = self.news.try_recv() {
            self.dispatch(a);
            n += 1;
        }
        n
    }

    /// Applies news until `done` holds for the app or `deadline` passes;
    /// returns whether it held.
    pub async fn settle(&mut self, deadline: Duration, done: impl Fn(&App) -> bool) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            self.drain_news();
            if done(&self.app) {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(end) => return done(&self.app),
                a = self.news.recv() => match a {
                    Some(a) => self.dispatch(a),
                    None => return done(&self.app),
                },
                _ = tokio::time::sleep(TICK) => self.tick(),
            }
        }
    }

    /// Draws the app on a terminal.
    pub fn draw<B: Backend>(&self, terminal: &mut Terminal<B>) -> Result<(), B::Error> {
        terminal.draw(|f| views::render(f, &self.app)).map(drop)
    }

    /// Stops the backend and waits for it.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        drop(self.requests);
        let _ = self.backend.await;
    }
}

/// Logs of this process go to a daily rolling file `<prefix>.<date>.log` in
/// `dir` (never to the terminal the console owns). Keep the guard alive: it
/// flushes the log when dropped. `RUST_LOG` picks what (default: info).
pub fn log_to_file(
    dir: &Path,
    prefix: &str,
) -> Result<tracing_appender::non_blocking::WorkerGuard, Error> {
    let failed = |reason: String| Error::Log {
        dir: dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
    let appender = tracing_appender::rolling::RollingFileAppender::builder()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(prefix)
        .filename_suffix("log")
        .max_log_files(7)
        .build(dir)
        .map_err(|e| failed(e.to_string()))?;
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Fails only when a subscriber is already set (e.g. in tests): keep that one.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .try_init();
    Ok(guard)
}

/// Puts the terminal back as it was: cooked mode, main screen, cursor shown.
/// Harmless when it already is.
fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Owns the terminal while the console runs; restores it on drop, also when
/// unwinding from a panic (the panic hook restores it before the message).
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<std::io::Stdout>>,
}

impl TerminalGuard {
    fn enter() -> Result<TerminalGuard, Error> {
        if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
            return Err(Error::NotATerminal);
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        crossterm::terminal::enable_raw_mode()?;
        let guard = TerminalGuard {
            terminal: Terminal::new(CrosstermBackend::new(std::io::stdout()))?,
        };
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Runs the console on this process's terminal until the operator quits or
/// `stop` completes. The event task selects over terminal input, the clock
/// and the backend's news, and redraws only after something changed.
pub async fn run(options: Options, stop: impl Future<Output = ()>) -> Result<(), Error> {
    let mut console = Console::start(options)?;
    let result = event_loop(&mut console, stop).await;
    console.shutdown().await;
    result
}

async fn event_loop(console: &mut Console, stop: impl Future<Output = ()>) -> Result<(), Error> {
    let mut guard = TerminalGuard::enter()?;
    let mut input = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(stop);
    console.tick();
    console.draw(&mut guard.terminal)?;
    loop {
        // Cancel-safe: each branch only receives.
        let redraw = tokio::select! {
            _ = &mut stop => break,
            event = input.next() => match event {
                Some(Ok(e)) => console.event(e),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            news = console.news() => match news {
                Some(a) => {
                    console.dispatch(a);
                    true
                }
                None => break,
            },
            _ = tick.tick() => {
                console.tick();
                true
            }
        };
        if console.app.quit {
            break;
        }
        // Batch what else already arrived into the same frame.
        let more = console.drain_news();
        if redraw || more > 0 {
            console.draw(&mut guard.terminal)?;
        }
    }
    drop(guard);
    Ok(())
}
