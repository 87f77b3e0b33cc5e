//! Events: a live tail of what the console saw happen (log head moves,
//! health, conflicts, the link) and the operator's actions, with a filter.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use super::{Theme, titled};
use crate::tui::action::View;
use crate::tui::app::{App, EventKind};
use crate::tui::strings;

pub(super) fn render(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let visible = app.visible_events();
    let height = area.height.saturating_sub(2) as usize;
    let end = visible.len().saturating_sub(app.events_scroll);
    let start = end.saturating_sub(height);
    let lines: Vec<Line> = visible[start..end]
        .iter()
        .map(|&i| {
            let e = &app.events[i];
            let kind_style = match e.kind {
                EventKind::Change => theme.fg(Color::Cyan),
                EventKind::Health => theme.fg(Color::Yellow),
                EventKind::Conflict => theme.fg(Color::Magenta),
                EventKind::Operator => theme.fg(Color::Green),
                EventKind::Link => theme.bad(),
            };
            let text_style = if e.text.starts_with("failed") {
                theme.bad()
            } else {
                theme.paint(ratatui::style::Style::new())
            };
            Line::from(vec![
                Span::styled(format!("{} ", strings::clock_time(e.at_ms)), theme.dim()),
                Span::styled(format!("{:<8} ", e.kind.name()), kind_style),
                Span::styled(e.text.clone(), text_style),
            ])
        })
        .collect();
    let follow = if app.events_scroll == 0 {
        "following".to_owned()
    } else {
        format!("scrolled {} up, End follows", app.events_scroll)
    };
    let title = titled(
        app,
        View::Events,
        format!("Events ({}/{}, {follow})", visible.len(), app.events.len()),
    );
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}
