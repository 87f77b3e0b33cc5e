//! Cluster: the coordinator (leader, term, epoch, head), quorum, clock drift
//! per region and recent quorum and health events.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table};

use super::Theme;
use crate::tui::app::{App, EventKind};
use crate::tui::strings;

/// The smallest full scale of the drift bars, so that a millisecond of
/// drift does not draw a full bar.
const DRIFT_MIN_SCALE_MS: u64 = 1000;

pub(super) fn render(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let [top, bottom] = Layout::vertical([Constraint::Length(9), Constraint::Fill(1)]).areas(area);
    let [coord_area, quorum_area] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Fill(1)]).areas(top);
    let [drift_area, events_area] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Fill(1)]).areas(bottom);
    let Some(c) = &app.cluster else {
        frame.render_widget(
            Paragraph::new(Line::styled(strings::CONNECTING, theme.dim()))
                .block(Block::bordered().title(" Cluster ")),
            area,
        );
        return;
    };
    let leader = c.leader.clone().unwrap_or_default();
    let label = |s: &'static str| Span::styled(format!("{s:<11}"), theme.dim());
    let coordinator = vec![
        Line::from(vec![
            label("instances"),
            Span::raw("1 known: the leader (the Admin API reports no others)"),
        ]),
        Line::from(vec![
            label("leader"),
            Span::styled(leader.id.clone(), theme.title()),
        ]),
        Line::from(vec![label("term"), Span::raw(leader.term.to_string())]),
        Line::from(vec![label("epoch"), Span::raw(c.epoch.clone())]),
        Line::from(vec![label("head"), Span::raw(c.head.to_string())]),
        Line::from(vec![label("events"), Span::raw(c.events_total.to_string())]),
        Line::from(vec![
            label("locks held"),
            Span::styled("- (not in the Admin API)", theme.dim()),
        ]),
    ];
    frame.render_widget(
        Paragraph::new(coordinator).block(Block::bordered().title(" Coordinator ")),
        coord_area,
    );

    let q = c.quorum.unwrap_or_default();
    let verdict = if q.sufficient {
        Span::styled("sufficient", theme.fg(Color::Green))
    } else {
        Span::styled("INSUFFICIENT", theme.bad())
    };
    let quorum = vec![
        Line::from(vec![label("regions"), Span::raw(q.total.to_string())]),
        Line::from(vec![label("healthy"), Span::raw(q.healthy.to_string())]),
        Line::from(vec![label("required"), Span::raw(q.required.to_string())]),
        Line::from(vec![label("quorum"), verdict]),
        Line::from(vec![
            label("conflicts"),
            Span::raw(c.conflicts_open.to_string()),
        ]),
        Line::from(vec![
            label("proposals"),
            Span::styled("- (not in the Admin API)", theme.dim()),
        ]),
    ];
    frame.render_widget(
        Paragraph::new(quorum).block(Block::bordered().title(" Quorum ")),
        quorum_area,
    );

    let max_drift = c
        .regions
        .iter()
        .map(|r| r.clock_drift_ms.unsigned_abs())
        .max()
        .unwrap_or(0)
        .max(DRIFT_MIN_SCALE_MS);
    let bar_width = drift_area.width.saturating_sub(30).max(1) as u64;
    let rows: Vec<Row> = c
        .regions
        .iter()
        .take(drift_area.height.saturating_sub(3) as usize)
        .map(|r| {
            let n = (r.clock_drift_ms.unsigned_abs() * bar_width / max_drift) as usize;
            let bar =
                if r.clock_drift_ms < 0 { "◀" } else { "▶" }.repeat(n.min(bar_width as usize));
            Row::new(vec![
                Span::raw(r.id.clone()),
                Span::styled(strings::region_state(r.state), theme.region_state(r.state)),
                Span::raw(strings::drift(r.clock_drift_ms)),
                Span::styled(bar, theme.fg(Color::Cyan)),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
    )
    .header(Row::new(vec!["REGION", "STATE", "DRIFT", ""]).style(theme.title()))
    .block(Block::bordered().title(" Clock drift (region − coordinator) "));
    frame.render_widget(table, drift_area);

    let height = events_area.height.saturating_sub(2) as usize;
    let recent: Vec<Line> = app
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Health || e.kind == EventKind::Link)
        .rev()
        .take(height)
        .map(|e| {
            let style = if e.text.contains("quorum lost") || e.text.contains("unreachable") {
                theme.bad()
            } else {
                theme.paint(ratatui::style::Style::new())
            };
            Line::from(vec![
                Span::styled(format!("{} ", strings::clock_time(e.at_ms)), theme.dim()),
                Span::styled(e.text.clone(), style),
            ])
        })
        .collect();
    let recent = if recent.is_empty() {
        vec![Line::styled("nothing yet", theme.dim())]
    } else {
        recent
    };
    frame.render_widget(
        Paragraph::new(recent).block(Block::bordered().title(" Quorum and health events ")),
        events_area,
    );
}
