//! The trend chart of the HTML report: an inline SVG of accounts per run (a line, left scale)
//! and joiners, movers and leavers per run (bars, right scale). Accounts are counted in
//! thousands where changes are counted in ones, so each has its own scale. The SVG scales
//! to its container through its viewBox and needs no script or font.

// Writing to a String cannot fail, so the results of `writeln!` are ignored throughout.
use std::fmt::Write;

use super::html::escape;
use super::TrendPoint;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 740.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 210.0;
/// Wide bars would read as areas when there are only a few runs.
const MAX_BAR_WIDTH: f64 = 18.0;

const ACCOUNTS_COLOR: &str = "#1f3a93";
/// Joiners, movers, leavers: distinct in hue and in lightness, so they survive greyscale.
const EVENT_SERIES: [(&str, &str); 3] = [
    ("Joiners", "#2e7d32"),
    ("Movers", "#ef8c00"),
    ("Leavers", "#b71c1c"),
];

pub(super) fn trend_chart(trend: &[TrendPoint]) -> String {
    let mut svg = format!(
        "<svg id=\"trend-chart\" role=\"img\" aria-labelledby=\"trend-chart-title trend-chart-desc\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"system-ui, sans-serif\" font-size=\"12\">\n\
         <title id=\"trend-chart-title\">Accounts, joiners, movers and leavers per run</title>\n\
         <desc id=\"trend-chart-desc\">{}</desc>\n",
        escape(&description(trend))
    );
    if trend.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">No complete runs to chart yet.</text>",
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
    } else {
        draw(&mut svg, trend);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The chart's content in words, for screen readers and text-only tools.
fn description(trend: &[TrendPoint]) -> String {
    let (Some(first), Some(last)) = (trend.first(), trend.last()) else {
        return "No complete runs yet.".to_string();
    };
    let total = |count: fn(&TrendPoint) -> u64| events(trend).map(count).sum::<u64>();
    format!(
        "{} runs from {} to {}: accounts {} to {}; {} joiners, {} movers and {} leavers in total.",
        trend.len(),
        date(first),
        date(last),
        first.accounts,
        last.accounts,
        total(|point| point.joiners),
        total(|point| point.movers),
        total(|point| point.leavers),
    )
}

fn draw(svg: &mut String, trend: &[TrendPoint]) {
    let max_accounts = trend
        .iter()
        .map(|point| point.accounts)
        .max()
        .unwrap_or(0)
        .max(1);
    // Scaled to the changes: a baseline's accounts are present, not joiners, and would
    // flatten every other bar.
    let max_events = events(trend)
        .map(|point| point.joiners.max(point.movers).max(point.leavers))
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_height = BOTTOM - TOP;
    let slot = (RIGHT - LEFT) / trend.len() as f64;
    let x_center = |index: usize| LEFT + slot * (index as f64 + 0.5);
    let y_of = |value: u64, max: u64| BOTTOM - value as f64 / max as f64 * plot_height;

    // Scales and axes.
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{RIGHT}\" y2=\"{TOP}\" stroke=\"#ccc\"/>\n\
         <line x1=\"{LEFT}\" y1=\"{BOTTOM}\" x2=\"{RIGHT}\" y2=\"{BOTTOM}\" stroke=\"#444\"/>\n\
         <text x=\"{LEFT}\" y=\"22\" fill=\"{ACCOUNTS_COLOR}\">accounts</text>\n\
         <text x=\"{RIGHT}\" y=\"22\" text-anchor=\"end\">joiners / movers / leavers</text>\n\
         <text x=\"{left}\" y=\"{top}\" text-anchor=\"end\" fill=\"{ACCOUNTS_COLOR}\">{max_accounts}</text>\n\
         <text x=\"{left}\" y=\"{BOTTOM}\" text-anchor=\"end\" fill=\"{ACCOUNTS_COLOR}\">0</text>\n\
         <text x=\"{right}\" y=\"{top}\">{max_events}</text>\n\
         <text x=\"{right}\" y=\"{BOTTOM}\">0</text>",
        left = LEFT - 6.0,
        right = RIGHT + 6.0,
        top = TOP + 4.0,
    );

    // Bars first, so the accounts line stays visible on top of them.
    let bar_width = (slot * 0.7 / 3.0).min(MAX_BAR_WIDTH);
    for (index, point) in trend.iter().enumerate() {
        if point.baseline {
            continue;
        }
        let values = [point.joiners, point.movers, point.leavers];
        for (series, (value, (_, color))) in values.iter().zip(EVENT_SERIES).enumerate() {
            let x = x_center(index) + (series as f64 - 1.5) * bar_width;
            let y = y_of(*value, max_events);
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar_width:.1}\" height=\"{:.1}\" fill=\"{color}\"/>",
                BOTTOM - y
            );
        }
    }
    let accounts: Vec<(f64, f64)> = trend
        .iter()
        .enumerate()
        .map(|(index, point)| (x_center(index), y_of(point.accounts, max_accounts)))
        .collect();
    if accounts.len() > 1 {
        let points: Vec<String> = accounts
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{ACCOUNTS_COLOR}\" stroke-width=\"2\"/>",
            points.join(" ")
        );
    }
    for (x, y) in &accounts {
        let _ = writeln!(
            svg,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{ACCOUNTS_COLOR}\"/>"
        );
    }

    // Run dates under the first and last runs.
    let label_y = BOTTOM + 16.0;
    match trend {
        [only] => {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{label_y}\" text-anchor=\"middle\">{}</text>",
                x_center(0),
                date(only)
            );
        }
        [first, .., last] => {
            let _ = writeln!(
                svg,
                "<text x=\"{LEFT}\" y=\"{label_y}\">{}</text>\n\
                 <text x=\"{RIGHT}\" y=\"{label_y}\" text-anchor=\"end\">{}</text>",
                date(first),
                date(last)
            );
        }
        [] => {}
    }
    legend(svg);
}

fn legend(svg: &mut String) {
    let y = HEIGHT - 14.0;
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{ACCOUNTS_COLOR}\" stroke-width=\"2\"/>\
         <circle cx=\"{}\" cy=\"{y}\" r=\"3\" fill=\"{ACCOUNTS_COLOR}\"/>\
         <text x=\"{}\" y=\"{}\">Accounts</text>",
        LEFT + 20.0,
        LEFT + 10.0,
        LEFT + 26.0,
        y + 4.0
    );
    for (index, (label, color)) in EVENT_SERIES.iter().enumerate() {
        let x = LEFT + 120.0 + index as f64 * 110.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"{}\">{label}</text>",
            y - 6.0,
            x + 18.0,
            y + 4.0
        );
    }
}

/// The runs that were compared with an earlier one: the ones whose events are changes.
fn events(trend: &[TrendPoint]) -> impl Iterator<Item = &TrendPoint> {
    trend.iter().filter(|point| !point.baseline)
}

fn date(point: &TrendPoint) -> String {
    point.finished_at.format("%Y-%m-%d %H:%M UTC").to_string()
}
