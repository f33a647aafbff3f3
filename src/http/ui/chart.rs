//! Charts drawn on the server as inline SVG (no script, no style
//! attribute: the page's CSP allows neither inline).
//!
//! A chart is a JSON spec: `{"title": …, "labels": ["00:00", …],
//! "series": [{"name": "opens", "values": [3, 5, …]}, …], "kind":
//! "lines" | "bars"}`. Series colours come from a fixed palette; the
//! legend names them. Text is escaped.

use std::fmt::Write as _;

use serde_json::Value;

const PALETTE: [&str; 6] = [
    "#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2",
];
const W: f64 = 720.0;
const H: f64 = 220.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 24.0;

fn esc(s: &str) -> String {
    html_escape::encode_safe(s).into_owned()
}

/// The largest value, rounded up to a readable axis top.
fn axis_top(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if max <= step * mag {
            return step * mag;
        }
    }
    10.0 * mag
}

/// Renders a chart spec as an `<svg>` element.
pub fn render(spec: &Value) -> String {
    let labels: Vec<String> = spec["labels"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let series: Vec<(String, Vec<f64>)> = spec["series"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let name = s["name"].as_str().unwrap_or("").to_string();
                    let values = s["values"]
                        .as_array()
                        .map(|v| v.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect())
                        .unwrap_or_default();
                    (name, values)
                })
                .collect()
        })
        .unwrap_or_default();
    let bars = spec["kind"].as_str() == Some("bars");
    let title = spec["title"].as_str().unwrap_or("");
    let n = labels
        .len()
        .max(series.iter().map(|s| s.1.len()).max().unwrap_or(0));
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0, f64::max);
    let top = axis_top(max);
    let plot_w = W - LEFT - 8.0;
    let plot_h = H - TOP - BOTTOM;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(title)
    );
    let _ = write!(out, "<title>{}</title>", esc(title));
    // Grid and axis labels.
    for i in 0..=4 {
        let v = top * f64::from(i) / 4.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e7eb"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#6b7280">{}</text>"##,
            W - 8.0,
            LEFT - 4.0,
            y + 3.0,
            short(v)
        );
    }
    if n == 0 {
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#6b7280">no data yet</text></svg>"##,
            W / 2.0,
            H / 2.0
        );
        return out;
    }
    let step = plot_w / n as f64;
    let every = n.div_ceil(12).max(1);
    for (i, l) in labels.iter().enumerate() {
        if i % every == 0 {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#6b7280">{}</text>"##,
                LEFT + step * (i as f64 + 0.5),
                H - 10.0,
                esc(l)
            );
        }
    }
    let k = series.len().max(1) as f64;
    for (si, (name, values)) in series.iter().enumerate() {
        let colour = PALETTE[si % PALETTE.len()];
        let y_of = |v: f64| TOP + plot_h - plot_h * (v / top);
        if bars {
            let bw = (step * 0.8 / k).max(1.0);
            for (i, v) in values.iter().enumerate() {
                let x = LEFT + step * i as f64 + step * 0.1 + bw * si as f64;
                let y = y_of(*v);
                let _ = write!(
                    out,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{:.1}" fill="{colour}"><title>{}: {}</title></rect>"#,
                    (TOP + plot_h - y).max(0.0),
                    esc(name),
                    short(*v)
                );
            }
        } else {
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", LEFT + step * (i as f64 + 0.5), y_of(*v)))
                .collect();
            let _ = write!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"><title>{}</title></polyline>"#,
                points.join(" "),
                esc(name)
            );
            // Dots too, so that a single hour (or a few) still shows.
            if values.len() <= 48 {
                for (i, v) in values.iter().enumerate() {
                    let _ = write!(
                        out,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{}: {}</title></circle>"#,
                        LEFT + step * (i as f64 + 0.5),
                        y_of(*v),
                        esc(name),
                        short(*v)
                    );
                }
            }
        }
        // Legend.
        let lx = LEFT + 110.0 * si as f64;
        let _ = write!(
            out,
            r##"<rect x="{lx:.1}" y="6" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="15" font-size="11" fill="#111827">{}</text>"##,
            lx + 14.0,
            esc(name)
        );
    }
    out.push_str("</svg>");
    out
}

fn short(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_chart_has_its_series_and_escapes_text() {
        let svg = render(&json!({
            "title": "<b>opens</b>",
            "labels": ["00", "01", "02"],
            "series": [{"name": "opens", "values": [1, 5, 2]}, {"name": "clicks", "values": [0, 2, 1]}],
        }));
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 6, "a dot per point");
        assert!(svg.contains("&lt;b&gt;opens"));
        assert!(!svg.contains("<b>"));
        assert!(!svg.contains("style="));
        let bars = render(
            &json!({"kind": "bars", "labels": ["a"], "series": [{"name": "x", "values": [3]}]}),
        );
        assert_eq!(
            bars.matches("<rect x=").count(),
            2,
            "a bar and the legend's swatch"
        );
        assert!(render(&json!({})).contains("no data yet"));
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(axis_top(0.0), 1.0);
        assert_eq!(axis_top(7.0), 10.0);
        assert_eq!(axis_top(130.0), 200.0);
        assert_eq!(axis_top(2400.0), 2500.0);
    }
}
