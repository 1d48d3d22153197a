//! The report as one self-contained HTML page with inline SVG plots: the
//! latency distribution per tier, the score distribution by label, and the
//! cost-versus-quality curve over thresholds. No scripts, no downloads.

use std::fmt::Write;

use crate::outcome::Outcome;
use crate::report::{render_text, Report};

const W: f64 = 560.0;
const H: f64 = 300.0;
const PAD: f64 = 48.0;
const COLORS: [&str; 4] = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart of named series; axes from the data.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return format!("<p><em>{}: no data</em></p>", esc(title));
    }
    y0 = y0.min(0.0);
    if (x1 - x0).abs() < 1e-12 {
        x1 = x0 + 1.0;
    }
    if (y1 - y0).abs() < 1e-12 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);
    let mut svg = frame(title, x_label, y_label, (x0, x1), (y0, y1));
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" fill="{color}" font-size="12">{}</text>"#,
            W - PAD - 150.0,
            PAD + 14.0 * i as f64,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Side-by-side histogram bars of named series over `[lo, hi]`.
fn histogram(
    title: &str,
    x_label: &str,
    series: &[(String, Vec<f64>)],
    lo: f64,
    hi: f64,
    bins: usize,
) -> String {
    let counts: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, v)| {
            let mut c = vec![0.0; bins];
            for &x in v {
                let b = (((x - lo) / (hi - lo)) * bins as f64)
                    .floor()
                    .clamp(0.0, bins as f64 - 1.0) as usize;
                c[b] += 1.0;
            }
            // As shares, so classes of different size compare.
            let n = v.len().max(1) as f64;
            c.iter().map(|k| k / n).collect()
        })
        .collect();
    let ymax = counts
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(1e-9);
    let mut svg = frame(title, x_label, "share", (lo, hi), (0.0, ymax));
    let bw = (W - 2.0 * PAD) / bins as f64;
    let k = series.len().max(1) as f64;
    for (i, c) in counts.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (b, share) in c.iter().enumerate() {
            let h = share / ymax * (H - 2.0 * PAD);
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}" opacity="0.8"/>"#,
                PAD + b as f64 * bw + i as f64 * bw / k,
                H - PAD - h,
                bw / k - 1.0,
                h
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" fill="{color}" font-size="12">{}</text>"#,
            W - PAD - 150.0,
            PAD + 14.0 * i as f64,
            esc(&series[i].0)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn frame(
    title: &str,
    x_label: &str,
    y_label: &str,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> String {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">
<text x="{PAD}" y="20" font-size="14" font-weight="bold">{t}</text>
<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#444"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="#444"/>
<text x="{PAD}" y="{lb}" font-size="11">{x0:.2}</text><text x="{r}" y="{lb}" font-size="11" text-anchor="end">{x1:.2}</text>
<text x="{mx}" y="{xl}" font-size="12" text-anchor="middle">{xlab}</text>
<text x="4" y="{b}" font-size="11">{y0:.2}</text><text x="4" y="{PAD}" font-size="11">{y1:.2}</text>
<text x="12" y="{my}" font-size="12" transform="rotate(-90 12 {my})" text-anchor="middle">{ylab}</text>
"##,
        t = esc(title),
        b = H - PAD,
        r = W - PAD,
        lb = H - PAD + 14.0,
        mx = W / 2.0,
        xl = H - 8.0,
        my = H / 2.0,
        xlab = esc(x_label),
        ylab = esc(y_label),
    )
}

/// The empirical CDF of `v` as points.
fn cdf(v: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, &x)| (x, (i + 1) as f64 / n))
        .collect()
}

/// The whole page.
pub fn render(report: &Report, runs: &[(String, Vec<Outcome>)]) -> String {
    let mut body = String::new();
    let mut latency = Vec::new();
    for (name, outcomes) in runs {
        for tier in [Some(1u8), Some(2), None] {
            let v: Vec<f64> = outcomes
                .iter()
                .filter(|o| o.ok() && o.tier == tier)
                .filter_map(|o| o.total_ms)
                .collect();
            if !v.is_empty() {
                let which = tier.map_or("no tier".to_string(), |t| format!("tier {t}"));
                latency.push((format!("{name}, {which} (n={})", v.len()), cdf(&v)));
            }
        }
    }
    body.push_str(&line_chart(
        "Latency distribution per tier (time to completion)",
        "ms",
        "share of requests ≤ x",
        &latency,
    ));
    if let Some((_, routed)) = runs.first() {
        let by_label: Vec<(String, Vec<f64>)> = [1u8, 2]
            .iter()
            .map(|&l| {
                (
                    format!("label tier {l}"),
                    routed
                        .iter()
                        .filter(|o| o.label_tier == Some(l))
                        .filter_map(|o| o.score)
                        .collect::<Vec<f64>>(),
                )
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if !by_label.is_empty() {
            body.push_str(&histogram(
                "Router score by label",
                "score",
                &by_label,
                0.0,
                1.0,
                20,
            ));
        }
    }
    if !report.sweep.is_empty() {
        let pgr: Vec<(f64, f64)> = report
            .sweep
            .iter()
            .filter_map(|r| r.pgr.map(|p| (r.relative_cost, p)))
            .collect();
        let acc: Vec<(f64, f64)> = report
            .sweep
            .iter()
            .map(|r| (r.relative_cost, r.accuracy))
            .collect();
        body.push_str(&line_chart(
            "Cost versus quality over thresholds",
            "cost relative to all tier 2",
            "PGR / accuracy",
            &[
                ("performance gap recovered".into(), pgr),
                ("routing accuracy".into(), acc),
            ],
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Triage replay report</title>\
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}svg{{margin:0.5em;border:1px solid #ddd}}</style>\
</head><body><h1>Triage replay report</h1><pre>{}</pre><div>{}</div></body></html>\n",
        esc(&render_text(report)),
        body
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_the_three_plots_and_escapes_text() {
        let outcomes: Vec<Outcome> = (0..10)
            .map(|i| Outcome {
                id: format!("<{i}>"),
                tier: Some(if i % 2 == 0 { 1 } else { 2 }),
                label_tier: Some(if i < 5 { 1 } else { 2 }),
                small_ok: Some(true),
                large_ok: Some(true),
                score: Some(f64::from(i) / 10.0),
                total_ms: Some(f64::from(i * 10)),
                ..Outcome::default()
            })
            .collect();
        let report = Report {
            dataset: "a<b".into(),
            sweep: crate::report::sweep(&outcomes, 8.0),
            ..Report::default()
        };
        let html = render(&report, &[("routed".into(), outcomes)]);
        assert!(html.contains("Latency distribution per tier"));
        assert!(html.contains("Router score by label"));
        assert!(html.contains("Cost versus quality"));
        assert!(html.contains("a&lt;b") && !html.contains("a<b"));
        assert_eq!(html.matches("<svg").count(), 3);
    }

    #[test]
    fn cdf_ends_at_one() {
        let c = cdf(&[3.0, 1.0, 2.0]);
        assert_eq!(c, vec![(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]);
    }
}
