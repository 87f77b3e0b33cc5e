//! STRM: per region that has an HTTP endpoint, its STRM jobs (source,
//! output, last run), the progress of an active run and a held cleanup
//! waiting for confirmation; below, the recent runs of all regions.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

use super::{Theme, titled};
use crate::strm_api::Run;
use crate::tui::action::View;
use crate::tui::app::App;
use crate::tui::strings;

/// Below this width the runs table leaves out strategy and trigger.
const WIDE: u16 = 120;

fn state_style(theme: Theme, state: &str) -> Style {
    match state {
        "done" => theme.fg(Color::Green),
        "running" | "queued" => theme.fg(Color::Cyan),
        "held" => theme.fg(Color::Yellow),
        "failed" => theme.bad(),
        _ => theme.dim(),
    }
}

/// When a run last changed: finished, else started, else queued.
fn run_moment(run: &Run) -> u64 {
    run.finished_ms.or(run.started_ms).unwrap_or(run.created_ms)
}

pub(super) fn render(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let [jobs_area, runs_area] =
        Layout::vertical([Constraint::Fill(3), Constraint::Fill(2)]).areas(area);
    render_jobs(frame, app, theme, jobs_area);
    render_runs(frame, app, theme, runs_area);
}

fn render_jobs(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let keys = app.strm_job_keys();
    let selected = app.strm_sel.current(&keys).cloned();
    let title = titled(app, View::Strm, format!("STRM jobs ({})", keys.len()));
    let block = Block::bordered().title(title);
    let regions = app.strm_regions();
    let mut lines: Vec<Line> = Vec::new();
    let mut selected_line = None;
    if regions.is_empty() {
        lines.push(Line::styled(
            "no region has registered an HTTP endpoint",
            theme.dim(),
        ));
    }
    for r in regions {
        let head = Span::styled(format!("region {}", r.id), theme.title());
        let state = app.strm.get(&r.id);
        let snap = state.and_then(|s| s.snapshot.as_ref());
        let error = state.and_then(|s| s.error.as_ref());
        let Some(snap) = snap else {
            let (text, style) = match error {
                Some(e) => (format!(": cannot reach its STRM API: {e}"), theme.bad()),
                None => (": loading…".to_owned(), theme.dim()),
            };
            lines.push(Line::from(vec![head, Span::styled(text, style)]));
            continue;
        };
        if snap.jobs.is_empty() {
            lines.push(Line::from(vec![
                head,
                Span::styled(format!(": {}", strings::NO_STRM_JOBS), theme.dim()),
            ]));
            continue;
        }
        let mut first = vec![
            head,
            Span::styled(format!("  {}", r.http_endpoint), theme.dim()),
        ];
        if let Some(e) = error {
            first.push(Span::styled(format!("  (stale: {e})"), theme.bad()));
        }
        lines.push(Line::from(first));
        for j in &snap.jobs {
            if !keys.iter().any(|(kr, kj)| kr == &r.id && kj == &j.name) {
                continue;
            }
            let is_selected = selected
                .as_ref()
                .is_some_and(|(sr, sj)| sr == &r.id && sj == &j.name);
            if is_selected {
                selected_line = Some(lines.len());
            }
            let name_style = if is_selected {
                theme.selected()
            } else {
                theme.title()
            };
            lines.push(Line::from(vec![
                Span::raw(if is_selected { "▶ " } else { "  " }),
                Span::styled(j.name.clone(), name_style),
                Span::raw(format!("  {} -> {}", j.source, j.output)),
                Span::styled(format!("  {} {}", j.mode, j.strategy), theme.dim()),
            ]));
            match &j.last_run {
                // An active run shows as progress below.
                Some(last) if last.is_active() => {}
                Some(last) => lines.push(Line::from(vec![
                    Span::raw(format!("    last #{} ", last.id)),
                    Span::styled(last.state.clone(), state_style(theme, &last.state)),
                    Span::raw(format!(
                        " {}  {}",
                        strings::when(app.now_ms, run_moment(last)),
                        strings::strm_counts(&last.counts)
                    )),
                ])),
                None => lines.push(Line::styled("    never run", theme.dim())),
            }
            for run in app.strm_runs_of(&r.id, &j.name) {
                if run.is_active() {
                    let since = match run.started_ms {
                        Some(s) => {
                            format!("for {}", strings::duration_ms(app.now_ms.saturating_sub(s)))
                        }
                        None => format!("since {}", strings::when(app.now_ms, run.created_ms)),
                    };
                    lines.push(Line::from(vec![
                        Span::styled(
                            format!("    {} ", run.state),
                            state_style(theme, &run.state),
                        ),
                        Span::raw(format!(
                            "#{} ({}) {since}  {}",
                            run.id,
                            run.strategy,
                            strings::strm_counts(&run.counts)
                        )),
                        Span::styled("  x cancels", theme.dim()),
                    ]));
                } else if run.awaits_confirmation() {
                    lines.push(Line::styled(
                        format!(
                            "    held #{}: cleanup of {} output(s) waits — c confirms",
                            run.id, run.held
                        ),
                        theme.fg(Color::Yellow),
                    ));
                }
            }
        }
    }
    let height = area.height.saturating_sub(2) as usize;
    // Keep the selected job and its two lines below it in view.
    let offset = match selected_line {
        Some(l) if l + 3 > height => l + 3 - height,
        _ => 0,
    };
    let p = Paragraph::new(lines)
        .scroll((offset.min(u16::MAX as usize) as u16, 0))
        .block(block);
    frame.render_widget(p, area);
}

fn render_runs(frame: &mut Frame, app: &App, theme: Theme, area: Rect) {
    let mut runs: Vec<(&str, &Run)> = app
        .strm_regions()
        .into_iter()
        .filter_map(|r| {
            let snap = app.strm.get(&r.id)?.snapshot.as_ref()?;
            Some(snap.runs.iter().map(move |run| (r.id.as_str(), run)))
        })
        .flatten()
        .collect();
    runs.sort_by_key(|(_, r)| std::cmp::Reverse(r.created_ms));
    let wide = area.width >= WIDE;
    let height = area.height.saturating_sub(3) as usize;
    let rows: Vec<Row> = runs
        .iter()
        .take(height)
        .map(|(region, run)| {
            let mut cells = vec![
                Cell::from(Line::from(run.id.to_string()).right_aligned()),
                Cell::from(region.to_string()),
                Cell::from(run.job.clone()),
                Cell::from(Span::styled(
                    run.state.clone(),
                    state_style(theme, &run.state),
                )),
                Cell::from(strings::when(app.now_ms, run_moment(run))),
            ];
            if wide {
                cells.push(Cell::from(run.strategy.clone()));
                cells.push(Cell::from(run.trigger.clone()));
            }
            let mut counts = strings::strm_counts(&run.counts);
            if let Some(e) = run.errors.first() {
                counts = format!("{counts}  {e}");
            }
            cells.push(Cell::from(counts));
            Row::new(cells)
        })
        .collect();
    let mut header = vec!["RUN", "REGION", "JOB", "STATE", "WHEN"];
    let mut widths = vec![
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(10),
    ];
    if wide {
        header.extend(["STRATEGY", "TRIGGER"]);
        widths.extend([Constraint::Length(13), Constraint::Length(9)]);
    }
    header.push("COUNTS");
    widths.push(Constraint::Fill(1));
    let block = Block::bordered().title(format!(" Recent STRM runs ({}) ", runs.len()));
    if runs.is_empty() {
        let p = Paragraph::new(Line::styled("no runs yet", theme.dim())).block(block);
        frame.render_widget(p, area);
        return;
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.title()))
        .block(block);
    frame.render_widget(table, area);
}
