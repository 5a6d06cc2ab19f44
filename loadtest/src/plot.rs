//! The plot of a report (`--plot OUT.svg`): each backend's share of the tries and the share of
//! 2xx answers, second by second, with the timeline's events marked, so the weights can be seen
//! to shift. Hand-written SVG: a few lines of markup do not need a plotting crate.

use crate::report::Report;
use std::fmt::Write as _;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 380.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 44.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
];

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG of `r`.
pub fn svg(r: &Report) -> String {
    let seconds = r.success_per_second.len().max(1) as f64;
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + pw * t / seconds;
    let y = |share: f64| TOP + ph * (1.0 - share.clamp(0.0, 1.0));
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}{}: share of tries per backend, and 2xx, per second</text>"#,
        esc(&r.scenario),
        if r.quick { " (quick)" } else { "" }
    );
    // Grid and axes.
    for k in 0..=4 {
        let v = f64::from(k) / 4.0;
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{gy:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{pct}%</text>"##,
            x2 = LEFT + pw,
            gy = y(v),
            tx = LEFT - 6.0,
            ty = y(v) + 4.0,
            pct = k * 25
        );
    }
    let step = (seconds / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= seconds {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0}</text>"#,
            x(t),
            TOP + ph + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">seconds</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 8.0
    );
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    // Events.
    for e in &r.events {
        let ex = x(e.at);
        let _ = writeln!(
            o,
            r##"<line x1="{ex:.1}" x2="{ex:.1}" y1="{TOP}" y2="{}" stroke="#555" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" font-size="11" fill="#333">{} {}</text>"##,
            TOP + ph,
            ex + 3.0,
            TOP + 12.0,
            esc(&e.backend),
            esc(&e.fault)
        );
    }
    // Lines: one per backend, then 2xx.
    let polyline = |values: &[f64], colour: &str, dash: &str| -> String {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(k, v)| format!("{:.1},{:.1}", x(k as f64 + 0.5), y(*v)))
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" {dash} points="{}"/>"#,
            points.join(" ")
        )
    };
    let mut legend = Vec::new();
    for (i, b) in r.backends.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let _ = writeln!(o, "{}", polyline(&b.per_second, colour, ""));
        legend.push((
            format!("{} ({:.1}%)", b.backend, b.share * 100.0),
            colour,
            "",
        ));
    }
    let _ = writeln!(
        o,
        "{}",
        polyline(&r.success_per_second, "black", r#"stroke-dasharray="6 3""#)
    );
    legend.push((
        format!("2xx ({:.2}%)", r.success_ratio * 100.0),
        "black",
        r#"stroke-dasharray="6 3""#,
    ));
    for (k, (label, colour, dash)) in legend.iter().enumerate() {
        let ly = TOP + 10.0 + 20.0 * k as f64;
        let lx = WIDTH - RIGHT + 14.0;
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2" {dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            esc(label)
        );
    }
    let _ = writeln!(o, "</svg>");
    o
}
