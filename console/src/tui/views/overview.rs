//! Overview: a row per region (state, lag, queue, drift, heartbeat, lag
//! trend) and the cluster's throughput.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Row, Sparkline, Table, TableState};

use super::{Theme, titled, window};
use crate::tui::action::View;
use crate::tui::app::App;
use crate::tui::strings;

/// The width of the columns before the lag trend.
const FIXED_COLUMNS: usize = 13 + 8 + 7 + 6 + 14 + 7 + 9;

pub(super) fn render(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let [table_area, spark_area] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(4)]).areas(area);
    let visible = app.visible_regions();
    let selected = app.selected_row(View::Overview);
    let height = table_area.height.saturating_sub(3) as usize;
    let (from, to) = window(visible.len(), selected, height);
    // What the fixed columns, their spacing and the borders leave.
    let trend_width = (table_area.width as usize)
        .saturating_sub(FIXED_COLUMNS + 7 + 2)
        .clamp(1, crate::tui::app::HISTORY_SAMPLES);
    let rows: Vec<Row> = match &app.cluster {
        Some(c) => visible[from..to]
            .iter()
            .map(|&i| {
                let r = &c.regions[i];
                let q = r.queue.clone().unwrap_or_default();
                let name = if r.paused {
                    format!("{} (paused)", r.id)
                } else {
                    r.id.clone()
                };
                let trend = app
                    .lag_history
                    .get(&r.id)
                    .map(|h| strings::sparkline(h.iter().copied(), trend_width))
                    .unwrap_or_default();
                Row::new(vec![
                    Cell::from(name),
                    Cell::from(Span::styled(
                        strings::region_state(r.state),
                        theme.region_state(r.state),
                    )),
                    Cell::from(Line::from(r.lag_events.to_string()).right_aligned()),
                    Cell::from(Line::from(format!("{:.1}", r.lag_seconds)).right_aligned()),
                    Cell::from(format!(
                        "{}/{}/{}/{}",
                        q.pending, q.inflight, q.retrying, q.dead
                    )),
                    Cell::from(Line::from(strings::drift(r.clock_drift_ms)).right_aligned()),
                    Cell::from(
                        Line::from(strings::age(app.now_ms, r.last_heartbeat_ms)).right_aligned(),
                    ),
                    Cell::from(Span::styled(trend, theme.fg(ratatui::style::Color::Cyan))),
                ])
            })
            .collect(),
        None => Vec::new(),
    };
    let header = Row::new(vec![
        "REGION",
        "STATE",
        "LAG ev",
        "LAG s",
        "QUEUE p/i/r/d",
        "DRIFT",
        "HEARTBEAT",
        "TREND",
    ])
    .style(theme.title());
    let count = app.cluster.as_ref().map_or(0, |c| c.regions.len());
    let title = titled(
        app,
        View::Overview,
        format!("Regions ({}/{count})", visible.len()),
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(13),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(14),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .row_highlight_style(theme.selected())
    .block(Block::bordered().title(title));
    let mut state = TableState::default().with_selected(selected.map(|s| s - from));
    frame.render_stateful_widget(table, table_area, &mut state);

    let width = spark_area.width.saturating_sub(2) as usize;
    let samples: Vec<u64> = app
        .throughput
        .iter()
        .rev()
        .take(width)
        .rev()
        .copied()
        .collect();
    let latest = samples.last().copied().unwrap_or(0);
    let peak = samples.iter().copied().max().unwrap_or(0);
    let title = format!(" Cluster throughput: {latest} events/s (peak {peak}) ");
    let spark = Sparkline::default()
        .data(&samples)
        .style(theme.fg(ratatui::style::Color::Cyan))
        .block(Block::bordered().title(title));
    frame.render_widget(spark, spark_area);
}
