//! Queues: the items of one region's sync queue, in service order.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Color;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};

use super::{Theme, titled, window};
use crate::tui::action::View;
use crate::tui::app::App;
use crate::tui::strings;

pub(super) fn render(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let region = app.queue_region.as_deref().unwrap_or("-");
    let visible = app.visible_items();
    let title = titled(
        app,
        View::Queues,
        format!(
            "Queue of region {region} ◀ h l ▶ ({}/{} items)",
            visible.len(),
            app.queue.len()
        ),
    );
    let block = Block::bordered().title(title);
    if let Some(e) = &app.queue_error {
        let p = Paragraph::new(Line::styled(
            format!("cannot list the queue: {e}"),
            theme.bad(),
        ))
        .block(block);
        frame.render_widget(p, area);
        return;
    }
    if app.queue.is_empty() {
        let p = Paragraph::new(Line::styled("the queue is empty", theme.dim())).block(block);
        frame.render_widget(p, area);
        return;
    }
    let selected = app.selected_row(View::Queues);
    let (from, to) = window(
        visible.len(),
        selected,
        area.height.saturating_sub(3) as usize,
    );
    let rows: Vec<Row> = visible[from..to]
        .iter()
        .map(|&i| {
            let it = &app.queue[i];
            let state = strings::item_state(it.state);
            let state_style = match state {
                "dead" => theme.bad(),
                "retrying" => theme.fg(Color::Yellow),
                "in-flight" => theme.fg(Color::Cyan),
                _ => theme.paint(ratatui::style::Style::new()),
            };
            let next = match state {
                "retrying" => strings::when(app.now_ms, it.next_attempt_ms),
                "dead" => "operator".to_owned(),
                _ => "-".to_owned(),
            };
            Row::new(vec![
                Cell::from(Line::from(it.id.to_string()).right_aligned()),
                Cell::from(it.priority.to_string()),
                Cell::from(strings::op_name(it.op)),
                Cell::from(Span::styled(state, state_style)),
                Cell::from(Line::from(it.attempts.to_string()).right_aligned()),
                Cell::from(next),
                Cell::from(it.path.clone()),
                Cell::from(Span::styled(it.last_error.clone(), theme.dim())),
            ])
        })
        .collect();
    let header = Row::new(vec![
        "ID",
        "P",
        "OP",
        "STATE",
        "TRIES",
        "NEXT",
        "PATH",
        "LAST ERROR",
    ])
    .style(theme.title());
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(1),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(5),
            Constraint::Length(9),
            Constraint::Fill(2),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .row_highlight_style(theme.selected())
    .block(block);
    let mut state = TableState::default().with_selected(selected.map(|s| s - from));
    frame.render_stateful_widget(table, area, &mut state);
}
