//! Conflicts: the waiting conflicts, and the selected one's versions side by
//! side with a line diff of small text files.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};

use super::{Theme, titled, window};
use crate::tui::action::View;
use crate::tui::app::{App, ContentState, DIFF_MAX_BYTES};
use crate::tui::{diff, strings};

pub(super) fn render(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let [list_area, detail_area] =
        Layout::vertical([Constraint::Percentage(38), Constraint::Fill(1)]).areas(area);
    render_list(frame, app, theme, list_area);
    render_detail(frame, app, theme, detail_area);
}

fn render_list(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let visible = app.visible_conflicts();
    let title = titled(
        app,
        View::Conflicts,
        format!("Conflicts ({}/{})", visible.len(), app.conflicts.len()),
    );
    let block = Block::bordered().title(title);
    if let Some(e) = &app.conflicts_error {
        let p = Paragraph::new(Line::styled(
            format!("cannot list conflicts: {e}"),
            theme.bad(),
        ))
        .block(block);
        frame.render_widget(p, area);
        return;
    }
    if app.conflicts.is_empty() {
        let p = Paragraph::new(Line::styled("no open conflicts", theme.dim())).block(block);
        frame.render_widget(p, area);
        return;
    }
    let selected = app.selected_row(View::Conflicts);
    let (from, to) = window(
        visible.len(),
        selected,
        area.height.saturating_sub(3) as usize,
    );
    let rows: Vec<Row> = visible[from..to]
        .iter()
        .map(|&i| {
            let c = &app.conflicts[i];
            let regions: Vec<&str> = c.versions.iter().map(|v| v.region.as_str()).collect();
            Row::new(vec![
                Cell::from(c.path.clone()),
                Cell::from(regions.join(",")),
                Cell::from(c.strategy.clone()),
                Cell::from(Line::from(strings::age(app.now_ms, c.detected_at_ms)).right_aligned()),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(14),
            Constraint::Length(12),
            Constraint::Length(7),
        ],
    )
    .header(Row::new(vec!["PATH", "REGIONS", "STRATEGY", "AGE"]).style(theme.title()))
    .row_highlight_style(theme.selected())
    .block(block);
    let mut state = TableState::default().with_selected(selected.map(|s| s - from));
    frame.render_stateful_widget(table, area, &mut state);
}

fn render_detail(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let Some(c) = app.selected_conflict() else {
        frame.render_widget(Block::bordered().title(" Versions "), area);
        return;
    };
    let chosen = app.version_sel.min(c.versions.len().saturating_sub(1));
    let keep = c
        .versions
        .get(chosen)
        .map_or("-".to_owned(), |v| v.region.clone());
    let merge = match App::merge_allowed(c) {
        Ok(()) => "m merge",
        Err(_) => "(no merge)",
    };
    let title = format!(" {} — Enter keep {keep}  b both  {merge} ", c.path);
    let block = Block::bordered().title(Span::styled(title, theme.title()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [versions_area, diff_area] =
        Layout::vertical([Constraint::Length(6), Constraint::Fill(1)]).areas(inner);

    let mut header = vec![Cell::from("")];
    for (i, v) in c.versions.iter().enumerate() {
        let label = if i == chosen {
            Span::styled(
                format!("▶ {}", v.region),
                theme.selected().add_modifier(Modifier::BOLD),
            )
        } else {
            Span::styled(format!("  {}", v.region), theme.title())
        };
        header.push(Cell::from(label));
    }
    let field = |name: &'static str, f: &dyn Fn(&geosync_proto::v1::ConflictVersion) -> String| {
        let mut cells = vec![Cell::from(Span::styled(name, theme.dim()))];
        cells.extend(c.versions.iter().map(|v| Cell::from(format!("  {}", f(v)))));
        Row::new(cells)
    };
    let rows = vec![
        field("size", &|v| {
            if v.deleted {
                "deleted".to_owned()
            } else {
                strings::bytes(v.size)
            }
        }),
        field("mtime", &|v| strings::mtime(v.mtime_ns)),
        field("HLC", &|v| strings::hlc(v.hlc.as_ref())),
        field("hash", &|v| strings::short_hex(&v.hash, 16)),
    ];
    let mut widths = vec![Constraint::Length(6)];
    widths.extend(c.versions.iter().map(|_| Constraint::Fill(1)));
    let table = Table::new(rows, widths).header(Row::new(header));
    frame.render_widget(table, versions_area);

    let lines = diff_lines(app, c, theme);
    let scroll_hint = Block::new().title(Span::styled(
        match (c.versions.first(), c.versions.get(1)) {
            (Some(a), Some(b)) => format!("diff: - {}  + {}", a.region, b.region),
            _ => "diff".to_owned(),
        },
        theme.dim(),
    ));
    frame.render_widget(Paragraph::new(lines).block(scroll_hint), diff_area);
}

/// The diff pane's lines: the diff of the first two versions, or why none.
fn diff_lines<'a>(app: &'a App, c: &'a geosync_proto::v1::Conflict, theme: Theme) -> Vec<Line<'a>> {
    let (Some(a), Some(b)) = (c.versions.first(), c.versions.get(1)) else {
        return Vec::new();
    };
    let note = |s: String| vec![Line::styled(s, theme.dim())];
    if a.deleted || b.deleted {
        return note("a version is a deletion: nothing to compare".to_owned());
    }
    if a.size > DIFF_MAX_BYTES || b.size > DIFF_MAX_BYTES {
        return note(format!(
            "larger than {}: no line diff",
            strings::bytes(DIFF_MAX_BYTES)
        ));
    }
    let content = |v: &geosync_proto::v1::ConflictVersion| -> Result<&'a [u8], String> {
        if v.hash.is_empty() {
            return Ok(&[]);
        }
        match app.contents.get(&v.hash) {
            Some(ContentState::Loaded(d)) => Ok(d.as_slice()),
            Some(ContentState::Failed(e)) => {
                Err(format!("cannot fetch {}'s version: {e}", v.region))
            }
            _ => Err("fetching the versions…".to_owned()),
        }
    };
    let (left, right) = match (content(a), content(b)) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(e), _) | (_, Err(e)) => return note(e),
    };
    let (Some(left), Some(right)) = (diff::as_text(left), diff::as_text(right)) else {
        return note("binary content: no line diff".to_owned());
    };
    let Some(d) = diff::lines(left, right) else {
        return note(format!(
            "more than {} lines: no line diff",
            diff::MAX_DIFF_LINES
        ));
    };
    if d.iter().all(|l| matches!(l, diff::Line::Same(_))) {
        return note("same content; the versions differ in metadata only".to_owned());
    }
    d.into_iter()
        .map(|l| match l {
            diff::Line::Same(s) => Line::raw(format!("  {s}")),
            diff::Line::Left(s) => Line::styled(format!("- {s}"), theme.fg(Color::Red)),
            diff::Line::Right(s) => Line::styled(format!("+ {s}"), theme.fg(Color::Green)),
        })
        .collect()
}
