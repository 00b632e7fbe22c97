//! A run's report, for people: two self-contained SVG graphs in the manner of Jepsen's
//! `latency-raw.png` and `rate.png` ([`latency_svg`], [`throughput_svg`]) and a one-page HTML
//! summary that embeds them ([`html_summary`]): verdict, how to replay the run, operation counts
//! and latencies ([`op_stats`]), the faults, and the checker's verdict as JSON.
//!
//! Everything is plain text built here: no fonts, scripts or style sheets are fetched, so the
//! files open as they are from a CI artifact.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::history::{Action, FaultWindow, Op, Outcome, Validity};

/// Size of both graphs, in pixels.
pub const SVG_WIDTH: f64 = 1200.0;
pub const SVG_HEIGHT: f64 = 500.0;
/// Most points [`latency_svg`] draws; past this, `ok` operations are thinned out.
pub const MAX_POINTS: usize = 40_000;
/// Latencies below this (in ms) are drawn at it: the bottom of the log scale.
pub const MIN_LATENCY_MS: f64 = 0.1;

/// The plot area of both graphs.
const PLOT_LEFT: f64 = 76.0;
const PLOT_RIGHT: f64 = 1010.0;
const PLOT_TOP: f64 = 78.0;
const PLOT_BOTTOM: f64 = 440.0;
const LEGEND_X: f64 = 1032.0;

const FONT: &str = "Helvetica, Arial, 'Liberation Sans', 'DejaVu Sans', sans-serif";
const TEXT: &str = "#222";
const MUTED: &str = "#666";

/// Every operation kind, in the order tables and legends list them.
const KINDS: [&str; 6] = ["add", "read", "lookup", "write", "register_read", "version"];
const OUTCOMES: [Outcome; 3] = [Outcome::Ok, Outcome::Fail, Outcome::Info];

/// The serde tag (`f`) of an action: `add`, `read`, `lookup`, `write`, `register_read` or `version`.
pub fn op_kind(action: &Action) -> &'static str {
    match action {
        Action::Add { .. } => "add",
        Action::Read { .. } => "read",
        Action::Lookup { .. } => "lookup",
        Action::Write { .. } => "write",
        Action::RegisterRead { .. } => "register_read",
        Action::Version { .. } => "version",
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "info",
    }
}

fn outcome_colour(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "#2f9e5e",
        Outcome::Fail => "#d7263d",
        Outcome::Info => "#f29d12",
    }
}

/// How a point of the latency graph is drawn: writes are circles, reads and lookups small squares, model
/// versions diamonds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Marker {
    Circle,
    Square,
    Diamond,
}

const MARKERS: [Marker; 3] = [Marker::Circle, Marker::Square, Marker::Diamond];

fn marker_of(kind: &str) -> Marker {
    match kind {
        "read" | "lookup" | "register_read" => Marker::Square,
        "version" => Marker::Diamond,
        _ => Marker::Circle,
    }
}

fn draw_marker(out: &mut String, marker: Marker, x: f64, y: f64, size: f64) {
    match marker {
        Marker::Circle => {
            let _ = write!(out, r#"<circle cx="{x:.1}" cy="{y:.1}" r="{:.1}"/>"#, size * 0.62);
        }
        Marker::Square => {
            let h = size * 0.5;
            let _ = write!(out, r#"<rect x="{:.1}" y="{:.1}" width="{size:.1}" height="{size:.1}"/>"#, x - h, y - h);
        }
        Marker::Diamond => {
            let h = size * 0.75;
            let _ = write!(out, r#"<path d="M{x:.1} {:.1}l{h:.1} {h:.1}l-{h:.1} {h:.1}l-{h:.1} -{h:.1}z"/>"#, y - h);
        }
    }
}

/// Colours of fault kinds; a kind not listed takes the next unused colour of `EXTRA_FAULT_COLOURS`.
const FAULT_COLOURS: [(&str, &str); 6] = [
    ("partition", "#7e57c2"),
    ("kill", "#455a64"),
    ("pause", "#1e88e5"),
    ("loss", "#00897b"),
    ("clock", "#c2185b"),
    ("restart", "#6d4c41"),
];
const EXTRA_FAULT_COLOURS: [&str; 8] = ["#5c6bc0", "#8d6e63", "#00acc1", "#9e9d24", "#ad1457", "#3949ab", "#558b2f", "#78909c"];

/// Each distinct fault kind, in order of first appearance, with its colour (the same in both
/// graphs and in the HTML summary).
fn fault_palette(faults: &[FaultWindow]) -> Vec<(&str, &'static str)> {
    let mut palette: Vec<(&str, &'static str)> = Vec::new();
    let mut extra = 0;
    for fault in faults {
        if palette.iter().any(|(kind, _)| *kind == fault.kind) {
            continue;
        }
        let colour = match FAULT_COLOURS.iter().find(|(kind, _)| *kind == fault.kind) {
            Some((_, colour)) => colour,
            None => {
                let colour = EXTRA_FAULT_COLOURS[extra % EXTRA_FAULT_COLOURS.len()];
                extra += 1;
                colour
            }
        };
        palette.push((&fault.kind, colour));
    }
    palette
}

fn fault_colour(palette: &[(&str, &'static str)], kind: &str) -> &'static str {
    palette.iter().find(|(k, _)| *k == kind).map_or("#888888", |(_, c)| c)
}

/// Escapes text for HTML and XML, in text and in attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A round step near `raw`: 1, 2 or 5 times a power of ten, not smaller than `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 + 1e-9 {
        1.0
    } else if fraction <= 2.0 + 1e-9 {
        2.0
    } else if fraction <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// A tick value, with as many decimals as the step needs.
fn tick_label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{value:.decimals$}")
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The time axis shared by both graphs: from 0 to `max_s`, ticks every `step` seconds.
#[derive(Debug, Clone, Copy)]
struct TimeAxis {
    max_s: f64,
    step: f64,
}

impl TimeAxis {
    /// Covers every operation and fault (at least one second).
    fn new(ops: &[Op], faults: &[FaultWindow]) -> TimeAxis {
        let end_ns =
            ops.iter().map(|op| op.end_ns.max(op.start_ns)).chain(faults.iter().map(|f| f.end_ns.max(f.start_ns))).max().unwrap_or(0);
        let span = (end_ns as f64 / 1e9).max(1.0);
        let step = nice_step(span / 10.0);
        TimeAxis { max_s: (span / step - 1e-9).ceil().max(1.0) * step, step }
    }

    fn x(&self, seconds: f64) -> f64 {
        PLOT_LEFT + (seconds / self.max_s).clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT)
    }

    fn x_ns(&self, ns: u64) -> f64 {
        self.x(ns as f64 / 1e9)
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let n = (self.max_s / self.step).round() as usize;
        (0..=n).map(move |i| i as f64 * self.step)
    }
}

/// The latency axis: log10, from 0.1 ms (10^`lo_exp`) to 10^`hi_exp` ms.
#[derive(Debug, Clone, Copy)]
struct LogScale {
    lo_exp: i32,
    hi_exp: i32,
    top: f64,
    bottom: f64,
}

impl LogScale {
    /// Decades 0.1 ms to 10 s, more if an operation took longer.
    fn for_max(max_ms: f64) -> LogScale {
        let needed = if max_ms > 0.0 && max_ms.is_finite() { (max_ms.log10() - 1e-9).ceil() as i32 } else { 0 };
        LogScale { lo_exp: -1, hi_exp: needed.clamp(4, 9), top: PLOT_TOP, bottom: PLOT_BOTTOM }
    }

    fn y(&self, ms: f64) -> f64 {
        let v = ms.max(MIN_LATENCY_MS).log10().clamp(self.lo_exp as f64, self.hi_exp as f64);
        self.bottom - (v - self.lo_exp as f64) / (self.hi_exp - self.lo_exp) as f64 * (self.bottom - self.top)
    }
}

/// The operations the latency graph draws: all of them up to `limit`, else every non-`ok`
/// operation and every `every`-th `ok` one. Returns the operations kept and `every`.
fn downsample(ops: &[Op], limit: usize) -> (Vec<&Op>, usize) {
    if ops.len() <= limit {
        return (ops.iter().collect(), 1);
    }
    let not_ok = ops.iter().filter(|op| op.outcome != Outcome::Ok).count();
    let ok = ops.len() - not_ok;
    let room = limit.saturating_sub(not_ok).max(1);
    let every = ok.div_ceil(room).max(1);
    let mut kept = Vec::with_capacity(not_ok + ok / every + 1);
    let mut ok_seen = 0usize;
    for op in ops {
        if op.outcome == Outcome::Ok {
            if ok_seen % every == 0 {
                kept.push(op);
            }
            ok_seen += 1;
        } else {
            kept.push(op);
        }
    }
    (kept, every)
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn svg_open(out: &mut String, title: &str, subtitle: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT}" font-size="11">"#,
        w = SVG_WIDTH,
        h = SVG_HEIGHT
    );
    let _ = write!(out, "<title>{}</title>", esc(title));
    let _ = write!(out, r##"<rect width="{SVG_WIDTH}" height="{SVG_HEIGHT}" fill="#ffffff"/>"##);
    let _ = write!(out, r#"<text x="{PLOT_LEFT}" y="26" font-size="16" font-weight="bold" fill="{TEXT}">{}</text>"#, esc(title));
    let _ = write!(out, r#"<text x="{PLOT_LEFT}" y="44" font-size="11.5" fill="{MUTED}">{}</text>"#, esc(subtitle));
}

/// The fault windows as translucent bands over the whole plot height, each with a solid cap.
fn draw_fault_bands(out: &mut String, axis: &TimeAxis, faults: &[FaultWindow], palette: &[(&str, &'static str)]) {
    out.push_str(r#"<g id="faults">"#);
    for fault in faults {
        let colour = fault_colour(palette, &fault.kind);
        let x0 = axis.x_ns(fault.start_ns);
        let x1 = axis.x_ns(fault.end_ns.max(fault.start_ns));
        let width = (x1 - x0).max(1.5);
        let height = PLOT_BOTTOM - PLOT_TOP;
        let _ = write!(
            out,
            r#"<rect class="fault" x="{x0:.1}" y="{PLOT_TOP}" width="{width:.1}" height="{height}" fill="{colour}" fill-opacity="0.13"><title>{}: {}</title></rect>"#,
            esc(&fault.kind),
            esc(&fault.description)
        );
        let _ = write!(out, r#"<rect x="{x0:.1}" y="{PLOT_TOP}" width="{width:.1}" height="3" fill="{colour}" fill-opacity="0.85"/>"#);
        let _ = write!(
            out,
            r#"<line x1="{x0:.1}" y1="{PLOT_TOP}" x2="{x0:.1}" y2="{PLOT_BOTTOM}" stroke="{colour}" stroke-opacity="0.45" stroke-width="1"/>"#
        );
    }
    out.push_str("</g>");
}

/// Each fault's kind above its band, in two lanes so that neighbours do not overlap.
fn draw_fault_labels(out: &mut String, axis: &TimeAxis, faults: &[FaultWindow], palette: &[(&str, &'static str)]) {
    let mut order: Vec<&FaultWindow> = faults.iter().collect();
    order.sort_by_key(|f| f.start_ns);
    let lanes = [PLOT_TOP - 6.0, PLOT_TOP - 19.0];
    let mut lane_end = [f64::MIN; 2];
    out.push_str(r#"<g id="fault-labels" font-size="10.5" font-weight="bold">"#);
    for fault in order {
        let width = fault.kind.chars().count() as f64 * 6.2 + 4.0;
        let x = axis.x_ns(fault.start_ns).min(PLOT_RIGHT - width).max(PLOT_LEFT - 20.0);
        let lane = (0..lanes.len()).find(|&l| lane_end[l] <= x).unwrap_or_else(|| if lane_end[0] <= lane_end[1] { 0 } else { 1 });
        lane_end[lane] = x + width + 4.0;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" fill="{}">{}</text>"#,
            x + 1.0,
            lanes[lane],
            fault_colour(palette, &fault.kind),
            esc(&fault.kind)
        );
    }
    out.push_str("</g>");
}

/// Vertical grid lines at the time ticks (drawn under the data).
fn draw_time_grid(out: &mut String, axis: &TimeAxis) {
    out.push_str(r##"<g stroke="#e6e6e6" stroke-width="1">"##);
    for t in axis.ticks() {
        let x = axis.x(t);
        let _ = write!(out, r#"<line x1="{x:.1}" y1="{PLOT_TOP}" x2="{x:.1}" y2="{PLOT_BOTTOM}"/>"#);
    }
    out.push_str("</g>");
}

/// The frame, the time ticks and their labels, and the x axis title.
fn draw_frame_and_time_axis(out: &mut String, axis: &TimeAxis) {
    let _ = write!(
        out,
        r##"<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{}" height="{}" fill="none" stroke="#9a9a9a" stroke-width="1"/>"##,
        PLOT_RIGHT - PLOT_LEFT,
        PLOT_BOTTOM - PLOT_TOP
    );
    out.push_str(r##"<g stroke="#9a9a9a" stroke-width="1">"##);
    for t in axis.ticks() {
        let x = axis.x(t);
        let _ = write!(out, r#"<line x1="{x:.1}" y1="{PLOT_BOTTOM}" x2="{x:.1}" y2="{}"/>"#, PLOT_BOTTOM + 5.0);
    }
    out.push_str("</g>");
    let _ = write!(out, r#"<g fill="{TEXT}" text-anchor="middle">"#);
    for t in axis.ticks() {
        let _ = write!(out, r#"<text x="{:.1}" y="{}">{}</text>"#, axis.x(t), PLOT_BOTTOM + 17.0, tick_label(t, axis.step));
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{}" font-size="12" fill="{MUTED}">time since start (s)</text>"#,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        PLOT_BOTTOM + 38.0
    );
    out.push_str("</g>");
}

fn draw_y_title(out: &mut String, title: &str) {
    let _ = write!(
        out,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle" font-size="12" fill="{MUTED}">{}</text>"#,
        (PLOT_TOP + PLOT_BOTTOM) / 2.0,
        esc(title)
    );
}

fn draw_no_operations(out: &mut String) {
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="22" fill="#9a9a9a">no operations</text>"##,
        (PLOT_LEFT + PLOT_RIGHT) / 2.0,
        (PLOT_TOP + PLOT_BOTTOM) / 2.0
    );
}

/// One row of a legend.
enum Swatch {
    /// A marker of the latency graph, in a colour.
    Marker(Marker, &'static str),
    /// A line of the throughput graph.
    Line(&'static str),
    /// A fault band.
    Band(&'static str),
}

struct LegendSection {
    title: &'static str,
    rows: Vec<(Swatch, String)>,
}

fn draw_legend(out: &mut String, sections: &[LegendSection]) {
    let mut y = PLOT_TOP + 4.0;
    out.push_str(r#"<g id="legend">"#);
    for section in sections.iter().filter(|s| !s.rows.is_empty()) {
        let _ = write!(
            out,
            r#"<text x="{LEGEND_X}" y="{y:.1}" font-size="11" font-weight="bold" fill="{TEXT}" letter-spacing="0.5">{}</text>"#,
            esc(section.title)
        );
        y += 17.0;
        for (swatch, label) in &section.rows {
            let cx = LEGEND_X + 6.0;
            let cy = y - 4.0;
            match swatch {
                Swatch::Marker(marker, colour) => {
                    let _ = write!(out, r#"<g fill="{colour}">"#);
                    draw_marker(out, *marker, cx, cy, 7.0);
                    out.push_str("</g>");
                }
                Swatch::Line(colour) => {
                    let _ = write!(
                        out,
                        r#"<line x1="{:.1}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="{colour}" stroke-width="2.2" stroke-linecap="round"/>"#,
                        cx - 6.0,
                        cx + 6.0
                    );
                }
                Swatch::Band(colour) => {
                    let _ = write!(
                        out,
                        r#"<rect x="{:.1}" y="{:.1}" width="12" height="10" fill="{colour}" fill-opacity="0.25" stroke="{colour}" stroke-width="1"/>"#,
                        cx - 6.0,
                        cy - 5.0
                    );
                }
            }
            let _ = write!(out, r#"<text x="{:.1}" y="{y:.1}" fill="{TEXT}">{}</text>"#, LEGEND_X + 18.0, esc(label));
            y += 15.0;
        }
        y += 9.0;
    }
    out.push_str("</g>");
}

fn fault_legend(faults: &[FaultWindow], palette: &[(&str, &'static str)]) -> LegendSection {
    let rows = palette
        .iter()
        .map(|(kind, colour)| {
            let n = faults.iter().filter(|f| f.kind == *kind).count();
            let label = if n > 1 { format!("{kind} ×{n}") } else { kind.to_string() };
            (Swatch::Band(colour), label)
        })
        .collect();
    LegendSection { title: "FAULTS", rows }
}

/// Jepsen's `latency-raw` graph: one point per operation at (invocation time, latency), latency on
/// a log scale, coloured by outcome (ok green, fail red, info orange), shaped by kind (writes
/// circles, reads and lookups squares, model versions diamonds), over the fault windows as shaded bands.
/// Past [`MAX_POINTS`] operations every non-`ok` operation is kept and `ok` ones are thinned out
/// evenly; the subtitle says so.
pub fn latency_svg(ops: &[Op], faults: &[FaultWindow], title: &str) -> String {
    let axis = TimeAxis::new(ops, faults);
    let (shown, every) = downsample(ops, MAX_POINTS);
    let max_ms = ops.iter().map(Op::latency_ms).fold(0.0, f64::max);
    let scale = LogScale::for_max(max_ms);
    let palette = fault_palette(faults);

    let mut subtitle = if ops.is_empty() {
        "no operations".to_string()
    } else {
        format!(
            "{} operations over {} s · latency = completion − invocation, at invocation time, log scale",
            thousands(ops.len() as u64),
            tick_label(axis.max_s, axis.step)
        )
    };
    if every > 1 {
        let _ = write!(
            subtitle,
            " · showing {} of {}: every fail/info operation and every {} ok one",
            thousands(shown.len() as u64),
            thousands(ops.len() as u64),
            ordinal(every)
        );
    }

    let mut out = String::with_capacity(4096 + shown.len() * 48);
    svg_open(&mut out, title, &subtitle);
    draw_fault_bands(&mut out, &axis, faults, &palette);
    draw_time_grid(&mut out, &axis);

    // Decades, with faint lines at 2..9 times each.
    out.push_str(r##"<g stroke="#f1f1f1" stroke-width="1">"##);
    for exp in scale.lo_exp..scale.hi_exp {
        for m in 2..=9 {
            let y = scale.y(m as f64 * 10f64.powi(exp));
            let _ = write!(out, r#"<line x1="{PLOT_LEFT}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}"/>"#);
        }
    }
    out.push_str("</g>");
    out.push_str(r##"<g stroke="#dcdcdc" stroke-width="1">"##);
    for exp in scale.lo_exp..=scale.hi_exp {
        let y = scale.y(10f64.powi(exp));
        let _ = write!(out, r#"<line x1="{PLOT_LEFT}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}"/>"#);
    }
    out.push_str("</g>");

    // Points: ok first so that the rarer fail and info points are drawn over them.
    out.push_str(r#"<g id="points">"#);
    for outcome in OUTCOMES {
        let opacity = if outcome == Outcome::Ok { 0.55 } else { 0.85 };
        for marker in MARKERS {
            let mut group = shown.iter().filter(|op| op.outcome == outcome && marker_of(op_kind(&op.action)) == marker).peekable();
            if group.peek().is_none() {
                continue;
            }
            let _ = write!(out, r#"<g class="{}" fill="{}" fill-opacity="{opacity}">"#, outcome_name(outcome), outcome_colour(outcome));
            for op in group {
                draw_marker(&mut out, marker, axis.x_ns(op.start_ns), scale.y(op.latency_ms()), 4.0);
            }
            out.push_str("</g>");
        }
    }
    out.push_str("</g><!-- end points -->");

    if ops.is_empty() {
        draw_no_operations(&mut out);
    }
    draw_frame_and_time_axis(&mut out, &axis);

    // Latency ticks.
    out.push_str(r##"<g stroke="#9a9a9a" stroke-width="1">"##);
    for exp in scale.lo_exp..=scale.hi_exp {
        let y = scale.y(10f64.powi(exp));
        let _ = write!(out, r#"<line x1="{}" y1="{y:.1}" x2="{PLOT_LEFT}" y2="{y:.1}"/>"#, PLOT_LEFT - 5.0);
    }
    out.push_str("</g>");
    let _ = write!(out, r#"<g fill="{TEXT}" text-anchor="end">"#);
    for exp in scale.lo_exp..=scale.hi_exp {
        let y = scale.y(10f64.powi(exp));
        let label = if exp < 0 { format!("{:.*}", (-exp) as usize, 10f64.powi(exp)) } else { thousands(10u64.pow(exp as u32)) };
        let _ = write!(out, r#"<text x="{}" y="{:.1}">{label}</text>"#, PLOT_LEFT - 8.0, y + 4.0);
    }
    out.push_str("</g>");
    draw_y_title(&mut out, "latency (ms)");
    draw_fault_labels(&mut out, &axis, faults, &palette);

    // Legend.
    let outcome_rows = OUTCOMES
        .iter()
        .map(|&o| {
            let n = ops.iter().filter(|op| op.outcome == o).count() as u64;
            (Swatch::Marker(Marker::Circle, outcome_colour(o)), format!("{}  ({})", outcome_name(o), thousands(n)))
        })
        .collect();
    let kind_rows = KINDS
        .iter()
        .filter_map(|&kind| {
            let n = ops.iter().filter(|op| op_kind(&op.action) == kind).count() as u64;
            (n > 0).then(|| (Swatch::Marker(marker_of(kind), "#555555"), format!("{kind}  ({})", thousands(n))))
        })
        .collect();
    draw_legend(
        &mut out,
        &[
            LegendSection { title: "OUTCOME", rows: outcome_rows },
            LegendSection { title: "OPERATION", rows: kind_rows },
            fault_legend(faults, &palette),
        ],
    );
    out.push_str("</svg>\n");
    out
}

/// Jepsen's `rate` graph: operations completed per second (1 s bins, by completion time), one
/// line per outcome, over the fault windows as shaded bands.
pub fn throughput_svg(ops: &[Op], faults: &[FaultWindow], title: &str) -> String {
    let axis = TimeAxis::new(ops, faults);
    let palette = fault_palette(faults);
    let bins = (axis.max_s.ceil() as usize).max(1);
    let mut counts: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (i, outcome) in OUTCOMES.iter().enumerate() {
        let mut row = vec![0u64; bins];
        for op in ops.iter().filter(|op| op.outcome == *outcome) {
            let bin = ((op.end_ns / 1_000_000_000) as usize).min(bins - 1);
            row[bin] += 1;
        }
        counts.insert(i, row);
    }
    let peak = counts.values().flat_map(|row| row.iter().copied()).max().unwrap_or(0);
    let y_step = nice_step((peak.max(1) as f64) / 5.0).max(1.0);
    let y_max = ((peak.max(1) as f64) / y_step - 1e-9).ceil().max(1.0) * y_step;
    let y_of = |v: f64| PLOT_BOTTOM - v / y_max * (PLOT_BOTTOM - PLOT_TOP);

    let subtitle = if ops.is_empty() {
        "no operations".to_string()
    } else {
        format!(
            "{} operations over {} s · completed per second (1 s bins, at completion time), by outcome",
            thousands(ops.len() as u64),
            tick_label(axis.max_s, axis.step)
        )
    };
    let mut out = String::with_capacity(8192 + bins * 40);
    svg_open(&mut out, title, &subtitle);
    draw_fault_bands(&mut out, &axis, faults, &palette);
    draw_time_grid(&mut out, &axis);
    let y_ticks = (y_max / y_step).round() as usize;
    out.push_str(r##"<g stroke="#e6e6e6" stroke-width="1">"##);
    for i in 1..y_ticks {
        let y = y_of(i as f64 * y_step);
        let _ = write!(out, r#"<line x1="{PLOT_LEFT}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}"/>"#);
    }
    out.push_str("</g>");

    out.push_str(r#"<g id="lines" fill="none" stroke-width="1.7" stroke-linejoin="round" stroke-linecap="round">"#);
    for (i, outcome) in OUTCOMES.iter().enumerate() {
        let row = &counts[&i];
        if row.iter().all(|&c| c == 0) {
            continue;
        }
        let _ = write!(out, r#"<polyline class="{}" stroke="{}" points=""#, outcome_name(*outcome), outcome_colour(*outcome));
        for (bin, &count) in row.iter().enumerate() {
            let x = axis.x(bin as f64 + 0.5);
            if bin > 0 {
                out.push(' ');
            }
            let _ = write!(out, "{x:.1},{:.1}", y_of(count as f64));
        }
        out.push_str(r#""/>"#);
    }
    out.push_str("</g>");
    if ops.is_empty() {
        draw_no_operations(&mut out);
    }
    draw_frame_and_time_axis(&mut out, &axis);
    out.push_str(r##"<g stroke="#9a9a9a" stroke-width="1">"##);
    for i in 0..=y_ticks {
        let y = y_of(i as f64 * y_step);
        let _ = write!(out, r#"<line x1="{}" y1="{y:.1}" x2="{PLOT_LEFT}" y2="{y:.1}"/>"#, PLOT_LEFT - 5.0);
    }
    out.push_str("</g>");
    let _ = write!(out, r#"<g fill="{TEXT}" text-anchor="end">"#);
    for i in 0..=y_ticks {
        let v = i as f64 * y_step;
        let _ = write!(out, r#"<text x="{}" y="{:.1}">{}</text>"#, PLOT_LEFT - 8.0, y_of(v) + 4.0, thousands(v as u64));
    }
    out.push_str("</g>");
    draw_y_title(&mut out, "operations per second");
    draw_fault_labels(&mut out, &axis, faults, &palette);
    let outcome_rows = OUTCOMES
        .iter()
        .enumerate()
        .map(|(i, &o)| {
            let total: u64 = counts[&i].iter().sum();
            (Swatch::Line(outcome_colour(o)), format!("{}  ({})", outcome_name(o), thousands(total)))
        })
        .collect();
    draw_legend(&mut out, &[LegendSection { title: "OUTCOME", rows: outcome_rows }, fault_legend(faults, &palette)]);
    out.push_str("</svg>\n");
    out
}

/// Counts and latencies of one kind of operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpStats {
    /// [`op_kind`]: `add`, `read`, `lookup`, `write`, `register_read` or `version`.
    pub kind: String,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// Latency percentiles (nearest rank) and maximum over the `ok` operations; `None` when
    /// none was `ok`.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl OpStats {
    pub fn total(&self) -> u64 {
        self.ok + self.fail + self.info
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One row per kind of operation present in `ops`, in a fixed order (add, read, lookup, write,
/// register_read, version).
pub fn op_stats(ops: &[Op]) -> Vec<OpStats> {
    KINDS
        .iter()
        .filter_map(|&kind| {
            let of_kind: Vec<&Op> = ops.iter().filter(|op| op_kind(&op.action) == kind).collect();
            if of_kind.is_empty() {
                return None;
            }
            let count = |o: Outcome| of_kind.iter().filter(|op| op.outcome == o).count() as u64;
            let mut latencies: Vec<f64> = of_kind.iter().filter(|op| op.outcome == Outcome::Ok).map(|op| op.latency_ms()).collect();
            latencies.sort_by(f64::total_cmp);
            Some(OpStats {
                kind: kind.to_string(),
                ok: count(Outcome::Ok),
                fail: count(Outcome::Fail),
                info: count(Outcome::Info),
                p50_ms: percentile(&latencies, 0.50),
                p99_ms: percentile(&latencies, 0.99),
                max_ms: latencies.last().copied(),
            })
        })
        .collect()
}

/// What [`html_summary`] shows.
#[derive(Debug, Clone)]
pub struct Summary<'a> {
    pub title: &'a str,
    pub validity: Validity,
    pub seed: u64,
    /// The command that replays the run (same seed).
    pub command: &'a str,
    /// When the run started, as the caller formats it (e.g. RFC 3339).
    pub started_at: &'a str,
    pub duration_s: f64,
    pub nodes: usize,
    pub workload: &'a str,
    pub nemeses: &'a [String],
    pub faults: &'a [FaultWindow],
    /// The checkers' verdict, shown pretty-printed.
    pub verdict: &'a serde_json::Value,
    /// From [`op_stats`].
    pub op_stats: &'a [OpStats],
    /// File names of the graphs, relative to the HTML file.
    pub latency_svg_file: &'a str,
    pub throughput_svg_file: &'a str,
    pub notes: &'a [String],
}

fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        None => "–".to_string(),
        Some(ms) if ms < 10.0 => format!("{ms:.2}"),
        Some(ms) if ms < 100.0 => format!("{ms:.1}"),
        Some(ms) => format!("{ms:.0}"),
    }
}

fn fmt_duration(seconds: f64) -> String {
    if seconds >= 60.0 {
        let whole = seconds.floor() as u64;
        format!("{seconds:.1} s ({} min {:02} s)", whole / 60, whole % 60)
    } else {
        format!("{seconds:.1} s")
    }
}

const CSS: &str = r#"
:root { --fg: #1f2328; --muted: #656d76; --line: #d8dee4; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg); background: #fff; }
.banner { padding: 22px 32px; color: #fff; }
.banner.valid { background: #1a7f37; }
.banner.invalid { background: #cf222e; }
.banner.unknown { background: #6e7781; }
.banner .verdict { font-size: 34px; font-weight: 800; letter-spacing: 2px; }
.banner .meaning { font-size: 15px; opacity: .95; }
.banner h1 { margin: 8px 0 0; font-size: 18px; font-weight: 600; opacity: .95; }
main { max-width: 1260px; margin: 0 auto; padding: 8px 32px 40px; }
h2 { font-size: 17px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; border-top: 2px solid var(--line); }
table.params th { background: none; color: var(--muted); font-weight: 500; width: 150px; }
code, pre { font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
code.cmd { display: inline-block; background: var(--bg); border: 1px solid var(--line); border-radius: 4px; padding: 2px 6px; user-select: all; word-break: break-all; }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px; overflow: auto; max-height: 560px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
.fail { color: #cf222e; } .info { color: #bc4c00; }
.graph img { width: 100%; max-width: 1200px; height: auto; border: 1px solid var(--line); border-radius: 6px; }
.muted { color: var(--muted); }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
"#;

/// The set checker's reads by kind (full-asset reads, and lookups by `via`), each with how many
/// were strong, from its verdict (`checker` of a run's verdict, or the set verdict itself); `None`
/// when the verdict is not a set checker's.
fn set_reads_table(verdict: &serde_json::Value) -> Option<String> {
    let checker = if verdict["checker"].is_object() { &verdict["checker"] } else { verdict };
    let reads = checker["reads"].as_u64()?;
    let strong_reads = checker["strong_reads"].as_u64()?;
    checker["acknowledged"].as_u64()?;
    let mut rows: Vec<(String, u64, u64)> = vec![("read (fused buckets)".to_string(), reads, strong_reads)];
    if let Some(by_via) = checker["lookups_by_via"].as_object() {
        for (via, counts) in by_via {
            let what = match via.as_str() {
                "annotation" => "lookup: annotation GET".to_string(),
                "search" => "lookup: search".to_string(),
                other => format!("lookup: {other}"),
            };
            rows.push((what, counts["ok"].as_u64().unwrap_or(0), counts["strong"].as_u64().unwrap_or(0)));
        }
    }
    let mut out = String::from("<h2>Set reads</h2>\n<table>\n<tr><th>read</th><th class=\"n\">ok</th><th class=\"n\">strong</th><th class=\"n\">eventual</th></tr>\n");
    for (what, ok, strong) in rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&what),
            thousands(ok),
            thousands(strong),
            thousands(ok.saturating_sub(strong))
        );
    }
    out.push_str("</table>\n");
    let looked_up = checker["looked_up"].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "<p class=\"muted\">The <code>ok</code> reads the set checker classified elements with: a read of an asset's fused buckets observes all of its elements, a lookup (an annotation <code>GET</code>, or a search for a word only one element's text holds) only the element it names; {} acknowledged elements were looked up.</p>",
        thousands(looked_up)
    );
    Some(out)
}

/// A one-page, self-contained HTML report of a run: verdict banner, how to replay it, operation
/// counts and latencies, the faults, both graphs (as `<img>` of the given relative file names),
/// the checkers' verdict as JSON and the notes. Every piece of text is HTML-escaped.
pub fn html_summary(s: &Summary) -> String {
    let (class, word, meaning) = match s.validity {
        Validity::Valid => ("valid", "VALID", "every property held"),
        Validity::Invalid => ("invalid", "INVALID", "a property was violated: see the checker verdict below"),
        Validity::Unknown => ("unknown", "UNKNOWN", "too little was observed to tell"),
    };
    let code = s.validity.exit_code();
    let mut out = String::with_capacity(16 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(out, "<title>{word}: {}</title>", esc(s.title));
    let _ = writeln!(out, "<style>{CSS}</style>\n</head>\n<body>");
    let _ = writeln!(
        out,
        "<header class=\"banner {class}\">\n<div class=\"verdict\">{word}</div>\n<div class=\"meaning\">Exit code {code}: {meaning}.</div>\n<h1>{}</h1>\n</header>",
        esc(s.title)
    );
    out.push_str("<main>\n");

    // Parameters.
    out.push_str("<h2>Run</h2>\n<table class=\"params\">\n");
    let nemeses = if s.nemeses.is_empty() { "none".to_string() } else { s.nemeses.join(", ") };
    let rows: [(&str, String); 7] = [
        ("Seed", format!("<code>{}</code>", s.seed)),
        ("Replay", format!("<code class=\"cmd\">{}</code>", esc(s.command))),
        ("Started", esc(s.started_at)),
        ("Duration", esc(&fmt_duration(s.duration_s))),
        ("Nodes", s.nodes.to_string()),
        ("Workload", esc(s.workload)),
        ("Nemeses", esc(&nemeses)),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    out.push_str("</table>\n");

    // Operations.
    out.push_str("<h2>Operations</h2>\n");
    if s.op_stats.is_empty() {
        out.push_str("<p class=\"muted\">No operations were recorded.</p>\n");
    } else {
        out.push_str(
            "<table>\n<tr><th>kind</th><th class=\"n\">ok</th><th class=\"n\">fail</th><th class=\"n\">info</th><th class=\"n\">total</th>",
        );
        out.push_str("<th class=\"n\">p50 ms</th><th class=\"n\">p99 ms</th><th class=\"n\">max ms</th></tr>\n");
        for st in s.op_stats {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n{}\">{}</td><td class=\"n{}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&st.kind),
                thousands(st.ok),
                if st.fail > 0 { " fail" } else { "" },
                thousands(st.fail),
                if st.info > 0 { " info" } else { "" },
                thousands(st.info),
                thousands(st.total()),
                fmt_ms(st.p50_ms),
                fmt_ms(st.p99_ms),
                fmt_ms(st.max_ms)
            );
        }
        if s.op_stats.len() > 1 {
            let sum = |f: fn(&OpStats) -> u64| s.op_stats.iter().map(f).sum::<u64>();
            let _ = writeln!(
                out,
                "<tr class=\"total\"><td>all</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td></td><td></td><td></td></tr>",
                thousands(sum(|st| st.ok)),
                thousands(sum(|st| st.fail)),
                thousands(sum(|st| st.info)),
                thousands(sum(OpStats::total))
            );
        }
        out.push_str("</table>\n<p class=\"muted\">Latencies (completion − invocation) over <code>ok</code> operations; <code>info</code> means the outcome is unknown (e.g. a timeout).</p>\n");
    }

    if let Some(table) = set_reads_table(s.verdict) {
        out.push_str(&table);
    }

    // Faults.
    out.push_str("<h2>Faults</h2>\n");
    if s.faults.is_empty() {
        out.push_str("<p class=\"muted\">No faults were injected.</p>\n");
    } else {
        let palette = fault_palette(s.faults);
        out.push_str("<table>\n<tr><th>kind</th><th>description</th><th class=\"n\">start s</th><th class=\"n\">end s</th><th class=\"n\">duration s</th></tr>\n");
        let mut order: Vec<&FaultWindow> = s.faults.iter().collect();
        order.sort_by_key(|f| f.start_ns);
        for f in order {
            let start = f.start_ns as f64 / 1e9;
            let end = f.end_ns.max(f.start_ns) as f64 / 1e9;
            let _ = writeln!(
                out,
                "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td>{}</td><td class=\"n\">{start:.1}</td><td class=\"n\">{end:.1}</td><td class=\"n\">{:.1}</td></tr>",
                fault_colour(&palette, &f.kind),
                esc(&f.kind),
                esc(&f.description),
                end - start
            );
        }
        out.push_str("</table>\n");
    }

    // Graphs.
    for (heading, file, alt) in [
        ("Latency", s.latency_svg_file, "latency of every operation over time, with the fault windows"),
        ("Throughput", s.throughput_svg_file, "operations completed per second, with the fault windows"),
    ] {
        let _ = writeln!(
            out,
            "<h2>{heading}</h2>\n<div class=\"graph\"><a href=\"{f}\"><img src=\"{f}\" alt=\"{alt}\"></a></div>",
            f = esc(file)
        );
    }

    // Verdict.
    out.push_str("<h2>Checker verdict</h2>\n");
    let json = serde_json::to_string_pretty(s.verdict).unwrap_or_else(|e| format!("(could not serialise the verdict: {e})"));
    let _ = writeln!(out, "<pre>{}</pre>", esc(&json));

    // Notes.
    out.push_str("<h2>Notes</h2>\n");
    if s.notes.is_empty() {
        out.push_str("<p class=\"muted\">None.</p>\n");
    } else {
        out.push_str("<ul>\n");
        for note in s.notes {
            let _ = writeln!(out, "<li>{}</li>", esc(note));
        }
        out.push_str("</ul>\n");
    }
    let _ = writeln!(out, "<footer>rushes-jepsen · seed {} · exit code {code}</footer>", s.seed);
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: u64, action: Action, outcome: Outcome, start_ms: f64, latency_ms: f64) -> Op {
        let start_ns = (start_ms * 1e6) as u64;
        Op {
            index,
            process: index % 8,
            node: index % 3,
            action,
            outcome,
            start_ns,
            end_ns: start_ns + (latency_ms * 1e6) as u64,
            error: (outcome != Outcome::Ok).then(|| "timeout".to_string()),
        }
    }

    fn write(value: u64) -> Action {
        Action::Write { key: format!("reg-{}", value % 4), value }
    }

    fn read() -> Action {
        Action::RegisterRead { key: "reg-1".into(), value: Some(1) }
    }

    fn fault(kind: &str, description: &str, start_s: f64, end_s: f64) -> FaultWindow {
        FaultWindow { kind: kind.into(), description: description.into(), start_ns: (start_s * 1e9) as u64, end_ns: (end_s * 1e9) as u64 }
    }

    /// Checks that every tag is closed in order (enough XML for our output: no CDATA, `>` never
    /// unescaped in attributes), and that there is exactly one root element.
    fn assert_well_formed(doc: &str) {
        let mut stack: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut rest = doc;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            assert!(!text.contains('>'), "stray '>' in text: {text:?}");
            rest = &rest[open..];
            if let Some(after) = rest.strip_prefix("<!--") {
                let end = after.find("-->").expect("unterminated comment");
                rest = &after[end + 3..];
                continue;
            }
            let close = rest.find('>').expect("unterminated tag");
            let tag = &rest[1..close];
            rest = &rest[close + 1..];
            assert!(!tag.contains('<'), "'<' inside tag {tag:?}");
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in {tag:?}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                if stack.is_empty() {
                    roots += 1;
                }
                let name = tag.split_whitespace().next().expect("empty tag");
                stack.push(name);
            } else if stack.is_empty() {
                roots += 1;
            }
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert!(!rest.contains('>'), "stray '>' at the end");
        assert_eq!(roots, 1, "one root element");
        assert!(doc.starts_with("<svg "));
    }

    /// The markup between `<g id="points">` and the end marker: how many points were drawn.
    fn count_points(svg: &str) -> usize {
        let start = svg.find(r#"<g id="points">"#).expect("points group");
        let end = svg.find("<!-- end points -->").expect("end of points");
        let section = &svg[start..end];
        section.matches("<circle").count() + section.matches("<rect").count() + section.matches("<path").count()
    }

    #[test]
    fn op_kind_is_the_serde_tag() {
        let actions = [
            Action::Add { elements: vec![] },
            Action::Read { asset: "a".into(), strong: true, seen: vec![] },
            Action::Lookup { via: "search".into(), strong: false, elements: vec!["a/1".into()], seen: vec![] },
            write(1),
            read(),
            Action::Version { asset: "a".into(), model: "m".into(), version: 2 },
        ];
        for action in actions {
            let json = serde_json::to_value(&action).unwrap();
            assert_eq!(json["f"], op_kind(&action));
        }
    }

    #[test]
    fn latency_svg_is_well_formed_with_a_point_per_op_and_a_band_per_fault() {
        let mut ops = Vec::new();
        for i in 0..300u64 {
            let outcome = match i % 10 {
                3 => Outcome::Fail,
                7 => Outcome::Info,
                _ => Outcome::Ok,
            };
            let action = if i % 2 == 0 { write(i) } else { read() };
            ops.push(op(i, action, outcome, i as f64 * 50.0, 0.05 + (i % 17) as f64 * 30.0));
        }
        let faults =
            [fault("partition", "isolate node 2", 3.0, 6.0), fault("kill", "kill node 1", 8.0, 9.5), fault("pause", "pause 0", 12.0, 13.0)];
        let svg = latency_svg(&ops, &faults, "register <test> & \"more\"");
        assert_well_formed(&svg);
        assert_eq!(count_points(&svg), ops.len());
        assert_eq!(svg.matches(r#"class="fault""#).count(), faults.len());
        assert!(svg.contains("register &lt;test&gt; &amp; &quot;more&quot;"));
        for label in ["0.1", ">1<", ">10<", ">100<", "1,000", "10,000", "latency (ms)", "time since start (s)"] {
            assert!(svg.contains(label), "missing {label}");
        }
        // Each fault kind gets its own colour.
        let palette = fault_palette(&faults);
        assert_eq!(palette.len(), 3);
        assert!(palette[0].1 != palette[1].1 && palette[1].1 != palette[2].1 && palette[0].1 != palette[2].1);

        let tput = throughput_svg(&ops, &faults, "throughput");
        assert_well_formed(&tput);
        assert_eq!(tput.matches(r#"class="fault""#).count(), faults.len());
        assert_eq!(tput.matches("<polyline").count(), 3);
    }

    #[test]
    fn log_scale_maps_decades_to_fixed_heights() {
        let scale = LogScale::for_max(250.0);
        assert_eq!((scale.lo_exp, scale.hi_exp), (-1, 4));
        // Five decades over the plot's height: 1 ms is one fifth up, 1000 ms four fifths.
        let height = PLOT_BOTTOM - PLOT_TOP;
        assert!((scale.y(1.0) - (PLOT_BOTTOM - height / 5.0)).abs() < 1e-9);
        assert!((scale.y(1000.0) - (PLOT_BOTTOM - height * 4.0 / 5.0)).abs() < 1e-9);
        assert!((scale.y(0.1) - PLOT_BOTTOM).abs() < 1e-9);
        assert!((scale.y(0.0) - PLOT_BOTTOM).abs() < 1e-9, "clamped to 0.1 ms");
        assert!((scale.y(10_000.0) - PLOT_TOP).abs() < 1e-9);
        // With PLOT_TOP 78 and PLOT_BOTTOM 440: 1 ms at 367.6, 1000 ms at 150.4.
        assert!((scale.y(1.0) - 367.6).abs() < 1e-9);
        assert!((scale.y(1000.0) - 150.4).abs() < 1e-9);
        // A 30 s timeout stretches the scale to 100 s.
        assert_eq!(LogScale::for_max(30_000.0).hi_exp, 5);
        assert_eq!(LogScale::for_max(10_000.0).hi_exp, 4);
    }

    #[test]
    fn nice_ticks() {
        assert_eq!(nice_step(6.0), 10.0);
        assert_eq!(nice_step(1.5), 2.0);
        assert_eq!(nice_step(0.3), 0.5);
        let axis = TimeAxis::new(&[op(0, write(1), Outcome::Ok, 59_000.0, 1000.0)], &[]);
        assert_eq!((axis.max_s, axis.step), (60.0, 10.0));
        assert_eq!(axis.ticks().count(), 7);
        assert_eq!(tick_label(0.5, 0.1), "0.5");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(ordinal(2), "2nd");
        assert_eq!(ordinal(12), "12th");
    }

    #[test]
    fn downsampling_keeps_every_fail_and_info_op() {
        let mut ops = Vec::new();
        for i in 0..50_000u64 {
            let outcome = if i % 50 == 0 {
                Outcome::Info
            } else if i % 101 == 0 {
                Outcome::Fail
            } else {
                Outcome::Ok
            };
            ops.push(op(i, write(i), outcome, i as f64, 2.0));
        }
        let (kept, every) = downsample(&ops, MAX_POINTS);
        assert!(every > 1);
        assert!(kept.len() <= MAX_POINTS);
        let not_ok = |o: &&Op| o.outcome != Outcome::Ok;
        assert_eq!(kept.iter().filter(|o| not_ok(o)).count(), ops.iter().filter(not_ok).count());
        let svg = latency_svg(&ops, &[], "big");
        assert_well_formed(&svg);
        assert_eq!(count_points(&svg), kept.len());
        assert!(svg.contains(&format!("showing {} of 50,000", thousands(kept.len() as u64))));
        // Under the limit nothing is dropped.
        assert_eq!(downsample(&ops[..MAX_POINTS], MAX_POINTS), (ops[..MAX_POINTS].iter().collect(), 1));
    }

    #[test]
    fn empty_history_gives_a_valid_svg_saying_so() {
        for svg in [latency_svg(&[], &[], "empty"), throughput_svg(&[], &[], "empty")] {
            assert_well_formed(&svg);
            assert!(svg.contains("no operations"));
        }
        let svg = latency_svg(&[], &[fault("kill", "k", 1.0, 2.0)], "faults only");
        assert_well_formed(&svg);
        assert_eq!(count_points(&svg), 0);
        assert_eq!(svg.matches(r#"class="fault""#).count(), 1);
        assert!(op_stats(&[]).is_empty());
    }

    #[test]
    fn op_stats_counts_and_percentiles() {
        let mut ops: Vec<Op> = (1..=100).map(|i| op(i, write(i), Outcome::Ok, i as f64, i as f64)).collect();
        ops.push(op(101, write(1), Outcome::Fail, 0.0, 500.0));
        ops.push(op(102, read(), Outcome::Info, 0.0, 500.0));
        let stats = op_stats(&ops);
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].kind, "write");
        assert_eq!((stats[0].ok, stats[0].fail, stats[0].info), (100, 1, 0));
        assert_eq!(stats[0].p50_ms, Some(50.0));
        assert_eq!(stats[0].p99_ms, Some(99.0));
        assert_eq!(stats[0].max_ms, Some(100.0));
        assert_eq!(stats[1].kind, "register_read");
        assert_eq!((stats[1].ok, stats[1].info, stats[1].p50_ms), (0, 1, None));
    }

    #[test]
    fn the_summary_shows_the_set_checkers_reads_by_kind() {
        let checker = crate::checker::set_full::check(
            &[
                op(0, Action::Add { elements: vec!["a/1".into()] }, Outcome::Ok, 0.0, 1.0),
                op(1, Action::Read { asset: "a".into(), strong: true, seen: vec!["a/1".into()] }, Outcome::Ok, 2.0, 1.0),
                op(
                    2,
                    Action::Lookup { via: "search".into(), strong: false, elements: vec!["a/1".into()], seen: vec!["a/1".into()] },
                    Outcome::Ok,
                    4.0,
                    1.0,
                ),
                op(
                    3,
                    Action::Lookup { via: "annotation".into(), strong: true, elements: vec!["a/1".into()], seen: vec!["a/1".into()] },
                    Outcome::Ok,
                    6.0,
                    1.0,
                ),
            ],
            &Default::default(),
        );
        let verdict = serde_json::json!({"valid": "valid", "checker": checker});
        let table = set_reads_table(&verdict).expect("a set verdict");
        assert!(
            table.contains("<td>read (fused buckets)</td><td class=\"n\">1</td><td class=\"n\">1</td><td class=\"n\">0</td>"),
            "{table}"
        );
        assert!(table.contains("<td>lookup: annotation GET</td><td class=\"n\">1</td><td class=\"n\">1</td>"), "{table}");
        assert!(table.contains("<td>lookup: search</td><td class=\"n\">1</td><td class=\"n\">0</td><td class=\"n\">1</td>"), "{table}");
        assert!(table.contains("1 acknowledged elements were looked up"), "{table}");
        assert!(set_reads_table(&serde_json::json!({"valid": true, "checker": {"linearizable": true}})).is_none());
        let stats = op_stats(&[op(
            0,
            Action::Lookup { via: "search".into(), strong: true, elements: vec![], seen: vec![] },
            Outcome::Fail,
            0.0,
            1.0,
        )]);
        assert_eq!((stats[0].kind.as_str(), stats[0].fail), ("lookup", 1));
    }

    #[test]
    fn html_escapes_everything() {
        let faults = [fault("partition", "<script>alert(1)</script>", 1.0, 2.5)];
        let verdict = serde_json::json!({"valid": false, "lost": ["<b>x</b> & y"]});
        let notes = vec!["note with <i>markup</i>".to_string()];
        let nemeses = vec!["partition".to_string(), "kill".to_string()];
        let stats = op_stats(&[op(0, write(1), Outcome::Ok, 0.0, 3.0)]);
        let summary = Summary {
            title: "run <1>",
            validity: Validity::Invalid,
            seed: 42,
            command: "JEPSEN_SEED=42 cargo test -p rushes-jepsen -- --exact a&b",
            started_at: "2024-01-01T00:00:00Z",
            duration_s: 75.4,
            nodes: 3,
            workload: "register",
            nemeses: &nemeses,
            faults: &faults,
            verdict: &verdict,
            op_stats: &stats,
            latency_svg_file: "latency.svg",
            throughput_svg_file: "throughput \"x\".svg",
            notes: &notes,
        };
        let html = html_summary(&summary);
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt; &amp; y"));
        assert!(html.contains("note with &lt;i&gt;markup&lt;/i&gt;"));
        assert!(html.contains("run &lt;1&gt;"));
        assert!(html.contains("a&amp;b"));
        assert!(html.contains(r#"<img src="latency.svg""#));
        assert!(html.contains(r#"src="throughput &quot;x&quot;.svg""#));
        assert!(html.contains("banner invalid") && html.contains("Exit code 1"));
        assert!(html.contains("75.4 s (1 min 15 s)"));
        assert!(!html.contains("http://") && !html.contains("https://"), "no external fetches");
        // A fault kind with markup is escaped in the SVG too.
        let svg = latency_svg(&[], &[fault("<script>", "<script>", 0.0, 1.0)], "t");
        assert!(!svg.contains("<script"));
        assert_well_formed(&svg);
    }

    /// A deterministic pseudo-random generator for the sample history (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Log-normal around `median`.
        fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
            let (u1, u2) = (self.next().max(1e-12), self.next());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            median * (sigma * z).exp()
        }
    }

    /// A register run of 60 s with 8 clients on 3 nodes and three faults: a partition of node 2,
    /// a kill of node 1 and a pause of node 0.
    fn sample_history() -> (Vec<Op>, Vec<FaultWindow>) {
        let faults = vec![
            fault("partition", "isolate node 2 (leader of shard 1) from 0 and 1", 10.0, 20.0),
            fault("kill", "SIGKILL node 1, restart on the same data", 30.0, 36.0),
            fault("pause", "SIGSTOP node 0 for 5 s, then SIGCONT", 45.0, 50.0),
        ];
        let within = |t: f64, f: &FaultWindow| t >= f.start_ns as f64 / 1e6 && t < f.end_ns as f64 / 1e6;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut ops = Vec::new();
        for process in 0..8u64 {
            let node = process % 3;
            let mut t = rng.next() * 100.0;
            while t < 60_000.0 {
                let is_write = rng.next() < 0.6;
                let mut latency = if is_write { rng.lognormal(4.0, 0.6) } else { rng.lognormal(1.2, 0.5) };
                let mut outcome = Outcome::Ok;
                if within(t, &faults[0]) && node == 2 {
                    if rng.next() < 0.5 {
                        outcome = Outcome::Info;
                        latency = 2000.0 + rng.next() * 20.0;
                    } else {
                        outcome = Outcome::Fail;
                        latency = rng.lognormal(0.4, 0.3);
                    }
                } else if within(t, &faults[0]) {
                    latency *= 3.0 + rng.next() * 40.0 * (rng.next() < 0.1) as u8 as f64;
                } else if within(t, &faults[1]) && node == 1 {
                    outcome = Outcome::Fail;
                    latency = rng.lognormal(0.2, 0.3);
                } else if (36_000.0..38_000.0).contains(&t) {
                    latency *= 4.0;
                } else if (within(t, &faults[2]) && node == 0) || rng.next() < 0.002 {
                    outcome = Outcome::Info;
                    latency = 5000.0;
                }
                let action = if is_write { write(ops.len() as u64) } else { read() };
                let mut o = op(0, action, outcome, t, latency);
                o.process = process;
                o.node = node;
                t += latency + rng.lognormal(80.0, 0.4);
                ops.push(o);
            }
        }
        ops.sort_by_key(|o| o.end_ns);
        for (i, o) in ops.iter_mut().enumerate() {
            o.index = i as u64;
        }
        (ops, faults)
    }

    #[test]
    fn renders_a_sample_run() {
        let (ops, faults) = sample_history();
        assert!(ops.len() > 2000, "{}", ops.len());
        let latency = latency_svg(&ops, &faults, "register · 3 nodes · partition, kill, pause · seed 42");
        let throughput = throughput_svg(&ops, &faults, "register · 3 nodes · partition, kill, pause · seed 42");
        assert_well_formed(&latency);
        assert_well_formed(&throughput);
        assert_eq!(count_points(&latency), ops.len());
        let stats = op_stats(&ops);
        let verdict = serde_json::json!({"valid": true, "register": {"valid": true, "linearizable": true, "ops": ops.len()}});
        let nemeses = vec!["partition".to_string(), "kill".to_string(), "pause".to_string()];
        let notes = vec!["Synthetic history for the report's own test.".to_string()];
        let html = html_summary(&Summary {
            title: "register · 3 nodes · partition, kill, pause",
            validity: Validity::Valid,
            seed: 42,
            command: "JEPSEN_SEED=42 cargo test --release -p rushes-jepsen register_under_faults",
            started_at: "2025-01-01T12:00:00Z",
            duration_s: 60.0,
            nodes: 3,
            workload: "register",
            nemeses: &nemeses,
            faults: &faults,
            verdict: &verdict,
            op_stats: &stats,
            latency_svg_file: "sample.svg",
            throughput_svg_file: "sample-throughput.svg",
            notes: &notes,
        });
        // Written next to the scratch crate that compiles this module when there is one, to look at.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        if dir.ends_with("scratch-report") {
            std::fs::write(dir.join("sample.svg"), &latency).unwrap();
            std::fs::write(dir.join("sample-throughput.svg"), &throughput).unwrap();
            std::fs::write(dir.join("sample.html"), &html).unwrap();
        }
    }
}
