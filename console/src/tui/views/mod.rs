//! The views: functions from the app state to a frame. They only render:
//! no state changes, no waiting.
//!
//! - `overview`, `queues`, `conflicts`, `cluster`, `events`, `strm`: one per view;
//! - this module: the frame around them (tabs, header, status line) and the
//!   pop-ups (key table, confirmation).

mod cluster;
mod conflicts;
mod events;
mod overview;
mod queues;
mod strm;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Row, Table, Wrap};

use super::action::View;
use super::app::{App, Connection, Level, Prompt};
use super::keys::{self, Scope};
use super::strings;

/// Styles with colour, or without when `NO_COLOR` asked for none (modifiers
/// such as bold and reverse stay, so the selection still shows).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Theme {
    color: bool,
}

impl Theme {
    fn of(app: &App) -> Theme {
        Theme {
            color: app.options.color,
        }
    }

    fn paint(self, style: Style) -> Style {
        if self.color {
            style
        } else {
            Style {
                fg: None,
                bg: None,
                ..style
            }
        }
    }

    fn fg(self, color: Color) -> Style {
        self.paint(Style::new().fg(color))
    }

    fn selected(self) -> Style {
        self.paint(Style::new().add_modifier(Modifier::REVERSED))
    }

    fn title(self) -> Style {
        self.paint(Style::new().add_modifier(Modifier::BOLD))
    }

    fn dim(self) -> Style {
        self.paint(Style::new().fg(Color::DarkGray))
    }

    fn bad(self) -> Style {
        self.paint(Style::new().fg(Color::Red).add_modifier(Modifier::BOLD))
    }

    fn region_state(self, state: i32) -> Style {
        use geosync_proto::v1::RegionState;
        match RegionState::try_from(state) {
            Ok(RegionState::Healthy) => self.fg(Color::Green),
            Ok(RegionState::Degraded) => self.fg(Color::Yellow),
            _ => self.bad(),
        }
    }
}

/// Draws the whole console.
pub fn render(frame: &mut Frame, app: &App) {
    let theme = Theme::of(app);
    let [tabs, header, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_tabs(frame, app, theme, tabs);
    render_header(frame, app, theme, header);
    match app.view {
        View::Overview => overview::render(frame, app, theme, body),
        View::Queues => queues::render(frame, app, theme, body),
        View::Conflicts => conflicts::render(frame, app, theme, body),
        View::Cluster => cluster::render(frame, app, theme, body),
        View::Events => events::render(frame, app, theme, body),
        View::Strm => strm::render(frame, app, theme, body),
    }
    render_status(frame, app, theme, status);
    if app.help {
        render_help(frame, app, theme, body);
    }
    if app.confirmation.is_some() {
        render_confirmation(frame, app, theme, body);
    }
}

fn tab_title(app: &App, view: View) -> String {
    let name = match view {
        View::Overview => "Overview".to_owned(),
        View::Queues => "Queues".to_owned(),
        View::Conflicts => {
            let open = app
                .cluster
                .as_ref()
                .map_or(app.conflicts.len() as u64, |c| c.conflicts_open);
            format!("Conflicts ({open})")
        }
        View::Cluster => "Cluster".to_owned(),
        View::Events => "Events".to_owned(),
        View::Strm => "STRM".to_owned(),
    };
    format!("{} {name}", view.index() + 1)
}

/// Below this width the tab bar and the link status are compact.
const NARROW: u16 = 100;

fn render_tabs(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let narrow = area.width < NARROW;
    let mut spans = Vec::new();
    if !narrow {
        spans.push(Span::styled("geosync ", theme.title()));
    }
    for v in View::ALL {
        let style = if v == app.view {
            theme.selected().add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        spans.push(Span::raw("│"));
        let title = if narrow {
            tab_title(app, v)
        } else {
            format!(" {} ", tab_title(app, v))
        };
        spans.push(Span::styled(title, style));
    }
    frame.render_widget(Line::from(spans), area);
    let (text, style) = match &app.connection {
        Connection::Connected => ("● connected", theme.fg(Color::Green)),
        Connection::Connecting => (strings::CONNECTING, theme.fg(Color::Yellow)),
        // The header line says the rest.
        Connection::Disconnected(_) if narrow => {
            ("disconnected", theme.bad().add_modifier(Modifier::REVERSED))
        }
        Connection::Disconnected(_) => (
            "✗ disconnected — retrying",
            theme.bad().add_modifier(Modifier::REVERSED),
        ),
    };
    let mut right = vec![Span::styled(text, style)];
    if app.options.readonly {
        right.insert(0, Span::styled("[read-only] ", theme.fg(Color::Cyan)));
    }
    let line = Line::from(right);
    let width = line.width() as u16;
    if area.width > width {
        let r = Rect {
            x: area.x + area.width - width,
            width,
            ..area
        };
        frame.render_widget(Clear, r);
        frame.render_widget(line, r);
    }
}

fn render_header(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    if let Connection::Disconnected(error) = &app.connection {
        let line = Line::from(vec![
            Span::styled(format!(" {} ", strings::DISCONNECTED), theme.bad()),
            Span::styled(format!("{}: {error}", app.options.coordinator), theme.dim()),
        ]);
        frame.render_widget(line, area);
        return;
    }
    let Some(c) = &app.cluster else {
        frame.render_widget(
            Line::styled(
                format!(" {} {}", strings::CONNECTING, app.options.coordinator),
                theme.dim(),
            ),
            area,
        );
        return;
    };
    let leader = c.leader.clone().unwrap_or_default();
    let q = c.quorum.unwrap_or_default();
    let quorum_style = if q.sufficient {
        theme.fg(Color::Green)
    } else {
        theme.bad().add_modifier(Modifier::REVERSED)
    };
    let epoch: String = c.epoch.chars().take(8).collect();
    // Quorum first: it is what must never be cut off.
    let mut leader_id = leader.id.clone();
    if area.width < NARROW && leader_id.chars().count() > 13 {
        leader_id = leader_id.chars().take(12).collect::<String>() + "…";
    }
    let line = Line::from(vec![
        Span::raw("quorum "),
        Span::styled(
            format!(
                "{}/{}, required {}{}",
                q.healthy,
                q.total,
                q.required,
                if q.sufficient { "" } else { " INSUFFICIENT" }
            ),
            quorum_style,
        ),
        Span::raw("  leader "),
        Span::styled(leader_id, theme.title()),
        Span::raw(format!(
            " term {}  epoch {epoch}  head {}",
            leader.term, c.head
        )),
    ]);
    frame.render_widget(line, area);
}

fn hints(view: View) -> &'static str {
    match view {
        View::Overview => "Enter queue  p pause/resume  s resync  / filter  : cmd  ? keys  q quit",
        View::Queues => "←/→ region  r retry  d drop  / filter  : cmd  ? keys  q quit",
        View::Conflicts => "←/→ version  Enter keep  b both  m merge  K/B/M bulk  / filter  ? keys",
        View::Cluster => "Tab next view  : cmd  ? keys  q quit",
        View::Events => "↑/↓ scroll  End follow  / filter  : cmd  ? keys  q quit",
        View::Strm => "r run  S skip-existing  c confirm cleanup  x cancel  / filter  ? keys",
    }
}

fn render_status(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let line = match (app.prompt, &app.message) {
        (Some(Prompt::Filter), _) => Line::from(vec![
            Span::styled("/", theme.title()),
            Span::raw(app.filter(app.view).to_owned()),
            Span::styled("█", theme.dim()),
            Span::styled("   Enter keep  Esc clear", theme.dim()),
        ]),
        (Some(Prompt::Command), _) => Line::from(vec![
            Span::styled(":", theme.title()),
            Span::raw(app.command.clone()),
            Span::styled("█", theme.dim()),
        ]),
        (None, Some(m)) => {
            let style = match m.level {
                Level::Info => theme.fg(Color::Cyan),
                Level::Error => theme.bad(),
            };
            Line::styled(m.text.clone(), style)
        }
        (None, None) => Line::styled(hints(app.view), theme.dim()),
    };
    frame.render_widget(line, area);
}

/// A rectangle of at most `width` × `height` centred in `area`.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// The key table: this view's bindings first, then the global ones, in as
/// many columns as the height needs.
fn render_help(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let table = keys::table();
    let entries: Vec<&keys::Binding> = table
        .iter()
        .filter(|b| b.scope == Scope::In(app.view))
        .chain(table.iter().filter(|b| b.scope == Scope::Global))
        .collect();
    let rows_fit = area.height.saturating_sub(2).max(1) as usize;
    let columns = entries.len().div_ceil(rows_fit).max(1);
    let rows = entries.len().div_ceil(columns).max(1);
    let width = (columns as u16 * 40 + 2).min(area.width);
    let popup = centered(area, width, rows as u16 + 2);
    frame.render_widget(Clear, popup);
    let block = Block::bordered().title(strings::HELP_TITLE);
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let areas = Layout::horizontal(vec![Constraint::Fill(1); columns]).split(inner);
    for (chunk, column) in entries.chunks(rows).zip(areas.iter()) {
        let lines: Vec<Row> = chunk
            .iter()
            .map(|b| {
                let help = match b.scope {
                    Scope::Global => Span::raw(b.help),
                    Scope::In(_) => Span::styled(b.help, theme.fg(Color::Cyan)),
                };
                Row::new(vec![Span::styled(b.label, theme.title()), help])
            })
            .collect();
        let t = Table::new(lines, [Constraint::Length(8), Constraint::Fill(1)]);
        frame.render_widget(t, *column);
    }
}

fn render_confirmation(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let Some(c) = &app.confirmation else {
        return;
    };
    let width = area.width.saturating_sub(4).clamp(20, 76);
    let max_details = area.height.saturating_sub(8) as usize;
    let mut lines = vec![
        Line::styled(c.question.clone(), theme.title()),
        Line::raw(""),
    ];
    for d in c.details.iter().take(max_details) {
        lines.push(Line::raw(format!("  {d}")));
    }
    if c.details.len() > max_details {
        lines.push(Line::styled(
            format!("  … and {} more", c.details.len() - max_details),
            theme.dim(),
        ));
    }
    if !c.details.is_empty() {
        lines.push(Line::raw(""));
    }
    lines.push(Line::styled(strings::CONFIRM_KEYS, theme.fg(Color::Yellow)));
    let inner_width = width.saturating_sub(2).max(1) as usize;
    let wrapped: usize = lines
        .iter()
        .map(|l| l.width().max(1).div_ceil(inner_width))
        .sum();
    let popup = centered(area, width, wrapped as u16 + 2);
    frame.render_widget(Clear, popup);
    let p = Paragraph::new(lines).wrap(Wrap { trim: false }).block(
        Block::bordered()
            .title(" confirm ")
            .border_style(theme.fg(Color::Yellow)),
    );
    frame.render_widget(p, popup);
}

/// The rows `[offset, offset + height)` that keep `selected` in view.
pub(crate) fn window(len: usize, selected: Option<usize>, height: usize) -> (usize, usize) {
    let height = height.max(1);
    let offset = match selected {
        Some(s) if s >= height => s + 1 - height,
        _ => 0,
    };
    (offset, (offset + height).min(len))
}

/// A block title with the view's filter, which stays visible while set.
pub(crate) fn titled(app: &App, view: View, title: String) -> String {
    let f = app.filter(view);
    let editing = app.prompt == Some(Prompt::Filter) && app.view == view;
    if f.is_empty() && !editing {
        format!(" {title} ")
    } else {
        format!(" {title} — filter: /{f} ")
    }
}
