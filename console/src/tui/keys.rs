//! The key table: every binding in one list, which both maps key presses to
//! actions and is what `?` shows. Prompts and confirmations take keys before
//! the table does (typed text is text, not commands).

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::action::{Action, Choice, View};
use super::app::App;

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every view.
    Global,
    /// One view.
    In(View),
}

/// One key binding.
#[derive(Debug, Clone)]
pub struct Binding {
    pub scope: Scope,
    /// The keys (any of them triggers it).
    pub keys: &'static [(KeyCode, KeyModifiers)],
    /// How the key table names the keys.
    pub label: &'static str,
    pub action: fn() -> Action,
    /// What it does.
    pub help: &'static str,
}

const NONE: KeyModifiers = KeyModifiers::NONE;
const SHIFT: KeyModifiers = KeyModifiers::SHIFT;
const CTRL: KeyModifiers = KeyModifiers::CONTROL;

macro_rules! bind {
    ($scope:expr, [$($key:expr),+], $label:expr, $action:expr, $help:expr) => {
        Binding {
            scope: $scope,
            keys: &[$($key),+],
            label: $label,
            action: || $action,
            help: $help,
        }
    };
}

/// The key table, in the order `?` shows it. The first binding that matches
/// (view bindings before global ones) wins.
pub fn table() -> &'static [Binding] {
    use KeyCode::*;
    use Scope::*;
    static TABLE: std::sync::OnceLock<Vec<Binding>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        vec![
            bind!(
                Global,
                [(Char('q'), NONE), (Char('c'), CTRL)],
                "q Ctrl-C",
                Action::Quit,
                "quit"
            ),
            bind!(
                Global,
                [(Char('?'), NONE), (Char('?'), SHIFT)],
                "?",
                Action::ToggleHelp,
                "this key table"
            ),
            bind!(Global, [(Tab, NONE)], "Tab", Action::NextView, "next view"),
            bind!(
                Global,
                [(BackTab, SHIFT), (BackTab, NONE)],
                "S-Tab",
                Action::PrevView,
                "previous view"
            ),
            bind!(
                Global,
                [(Char('1'), NONE)],
                "1",
                Action::Show(View::Overview),
                "overview"
            ),
            bind!(
                Global,
                [(Char('2'), NONE)],
                "2",
                Action::Show(View::Queues),
                "queues"
            ),
            bind!(
                Global,
                [(Char('3'), NONE)],
                "3",
                Action::Show(View::Conflicts),
                "conflicts"
            ),
            bind!(
                Global,
                [(Char('4'), NONE)],
                "4",
                Action::Show(View::Cluster),
                "cluster"
            ),
            bind!(
                Global,
                [(Char('5'), NONE)],
                "5",
                Action::Show(View::Events),
                "events"
            ),
            bind!(
                Global,
                [(Char('6'), NONE)],
                "6",
                Action::Show(View::Strm),
                "strm"
            ),
            bind!(
                Global,
                [(Up, NONE), (Char('k'), NONE)],
                "↑ k",
                Action::Up,
                "up"
            ),
            bind!(
                Global,
                [(Down, NONE), (Char('j'), NONE)],
                "↓ j",
                Action::Down,
                "down"
            ),
            bind!(Global, [(PageUp, NONE)], "PgUp", Action::PageUp, "page up"),
            bind!(
                Global,
                [(PageDown, NONE)],
                "PgDn",
                Action::PageDown,
                "page down"
            ),
            bind!(
                Global,
                [(Home, NONE), (Char('g'), NONE)],
                "Home g",
                Action::Top,
                "first row"
            ),
            bind!(
                Global,
                [(End, NONE), (Char('G'), SHIFT), (Char('G'), NONE)],
                "End G",
                Action::Bottom,
                "last row (events: follow)"
            ),
            bind!(
                Global,
                [(Char('/'), NONE)],
                "/",
                Action::BeginFilter,
                "filter this view"
            ),
            bind!(
                Global,
                [(Char(':'), NONE), (Char(':'), SHIFT)],
                ":",
                Action::BeginCommand,
                "command line"
            ),
            bind!(
                Global,
                [(Esc, NONE)],
                "Esc",
                Action::Escape,
                "close / clear filter"
            ),
            bind!(
                In(View::Overview),
                [(Enter, NONE)],
                "Enter",
                Action::Activate,
                "open the region's queue"
            ),
            bind!(
                In(View::Overview),
                [(Char('p'), NONE)],
                "p",
                Action::TogglePause,
                "pause / resume region"
            ),
            bind!(
                In(View::Overview),
                [(Char('s'), NONE)],
                "s",
                Action::Resync,
                "resync region"
            ),
            bind!(
                In(View::Queues),
                [(Left, NONE), (Char('h'), NONE)],
                "← h",
                Action::Left,
                "previous region"
            ),
            bind!(
                In(View::Queues),
                [(Right, NONE), (Char('l'), NONE)],
                "→ l",
                Action::Right,
                "next region"
            ),
            bind!(
                In(View::Queues),
                [(Char('r'), NONE), (Enter, NONE)],
                "r Enter",
                Action::Retry,
                "retry item now"
            ),
            bind!(
                In(View::Queues),
                [(Char('d'), NONE), (Delete, NONE)],
                "d Del",
                Action::Drop,
                "drop item"
            ),
            bind!(
                In(View::Queues),
                [(Char('p'), NONE)],
                "p",
                Action::TogglePause,
                "pause / resume region"
            ),
            bind!(
                In(View::Queues),
                [(Char('s'), NONE)],
                "s",
                Action::Resync,
                "resync region"
            ),
            bind!(
                In(View::Conflicts),
                [(Left, NONE), (Char('h'), NONE)],
                "← h",
                Action::Left,
                "previous version"
            ),
            bind!(
                In(View::Conflicts),
                [(Right, NONE), (Char('l'), NONE)],
                "→ l",
                Action::Right,
                "next version"
            ),
            bind!(
                In(View::Conflicts),
                [(Enter, NONE)],
                "Enter",
                Action::Activate,
                "keep the chosen version"
            ),
            bind!(
                In(View::Conflicts),
                [(Char('b'), NONE)],
                "b",
                Action::KeepBoth,
                "keep both"
            ),
            bind!(
                In(View::Conflicts),
                [(Char('m'), NONE)],
                "m",
                Action::Merge,
                "merge"
            ),
            bind!(
                In(View::Conflicts),
                [(Char('K'), SHIFT), (Char('K'), NONE)],
                "K",
                Action::BulkKeepChosen,
                "bulk keep region, filtered"
            ),
            bind!(
                In(View::Conflicts),
                [(Char('B'), SHIFT), (Char('B'), NONE)],
                "B",
                Action::Bulk(Choice::Both),
                "bulk keep both, filtered"
            ),
            bind!(
                In(View::Conflicts),
                [(Char('M'), SHIFT), (Char('M'), NONE)],
                "M",
                Action::Bulk(Choice::Merge),
                "bulk merge, filtered"
            ),
            bind!(
                In(View::Strm),
                [(Char('r'), NONE), (Enter, NONE)],
                "r Enter",
                Action::StrmRun("full"),
                "run job (full)"
            ),
            bind!(
                In(View::Strm),
                [(Char('S'), SHIFT), (Char('S'), NONE)],
                "S",
                Action::StrmRun("skip-existing"),
                "run job (skip-existing)"
            ),
            bind!(
                In(View::Strm),
                [(Char('c'), NONE)],
                "c",
                Action::StrmConfirm,
                "confirm held cleanup"
            ),
            bind!(
                In(View::Strm),
                [(Char('x'), NONE)],
                "x",
                Action::StrmCancel,
                "cancel active run"
            ),
        ]
    })
}

fn matches(b: &Binding, key: &KeyEvent) -> bool {
    b.keys.iter().any(|(code, mods)| {
        *code == key.code
            && (*mods == key.modifiers
                || (*mods == NONE
                    && key.modifiers == SHIFT
                    && matches!(code, KeyCode::Char(c) if !c.is_ascii_lowercase())))
    })
}

/// The action a key press means in the app's current state, if any.
pub fn action_for(app: &App, key: KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.code == KeyCode::Char('c') && key.modifiers == CTRL {
        return Some(Action::Quit);
    }
    if app.confirmation.is_some() {
        return match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => Some(Action::Confirm),
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => Some(Action::Escape),
            _ => None,
        };
    }
    if app.prompt.is_some() {
        return match key.code {
            KeyCode::Esc => Some(Action::Escape),
            KeyCode::Enter => Some(Action::Submit),
            KeyCode::Backspace => Some(Action::Backspace),
            KeyCode::Char(c) if !key.modifiers.contains(CTRL) => Some(Action::Input(c)),
            _ => None,
        };
    }
    if app.help {
        return match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            KeyCode::Esc | KeyCode::Char('?') => Some(Action::ToggleHelp),
            _ => None,
        };
    }
    let table = table();
    table
        .iter()
        .filter(|b| b.scope == Scope::In(app.view))
        .chain(table.iter().filter(|b| b.scope == Scope::Global))
        .find(|b| matches(b, &key))
        .map(|b| (b.action)())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::app::Options;

    fn app() -> App {
        App::new(Options {
            coordinator: "http://127.0.0.1:1".into(),
            readonly: false,
            color: false,
        })
    }

    #[test]
    fn no_key_is_bound_twice_where_both_could_apply() {
        let table = table();
        for (i, a) in table.iter().enumerate() {
            for b in &table[i + 1..] {
                let overlap = a.scope == b.scope;
                for key in a.keys {
                    assert!(
                        !(overlap && b.keys.contains(key)),
                        "{key:?} is bound to both {:?} and {:?}",
                        a.help,
                        b.help
                    );
                }
            }
        }
    }

    #[test]
    fn prompts_take_text_before_the_table_does() {
        let mut app = app();
        let q = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
        assert_eq!(action_for(&app, q), Some(Action::Quit));
        app.update(Action::BeginFilter);
        assert_eq!(action_for(&app, q), Some(Action::Input('q')));
        app.update(Action::Escape);
        app.update(Action::BeginCommand);
        assert_eq!(action_for(&app, q), Some(Action::Input('q')));
        let enter = KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE);
        assert_eq!(action_for(&app, enter), Some(Action::Submit));
        // Ctrl-C always quits, even mid-prompt.
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(action_for(&app, ctrl_c), Some(Action::Quit));
    }

    #[test]
    fn view_bindings_win_over_global_ones_and_shifted_symbols_match() {
        let mut app = app();
        app.update(Action::Show(View::Conflicts));
        let enter = KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE);
        assert_eq!(action_for(&app, enter), Some(Action::Activate));
        let question = KeyEvent::new(KeyCode::Char('?'), KeyModifiers::SHIFT);
        assert_eq!(action_for(&app, question), Some(Action::ToggleHelp));
        let bulk = KeyEvent::new(KeyCode::Char('B'), KeyModifiers::SHIFT);
        assert_eq!(action_for(&app, bulk), Some(Action::Bulk(Choice::Both)));
        app.update(Action::Show(View::Cluster));
        assert_eq!(action_for(&app, bulk), None, "bulk is a Conflicts key");
    }
}
