//! A small log-log line chart in SVG (no font or image dependencies): panels side by side, one
//! line per series with point markers, decade grid lines, a legend under the panels.

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub color: String,
    pub dashed: bool,
    /// (x, y) with x, y > 0; other points are left out.
    pub points: Vec<(f64, f64)>,
}

pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const W: f64 = 460.0;
const H: f64 = 340.0;
const ML: f64 = 70.0;
const MR: f64 = 20.0;
const MT: f64 = 50.0;
const MB: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Tick label: 512, 2k, 32k, 0.1, 1, 10 …
fn tick_label(v: f64) -> String {
    if v >= 1000.0 && (v / 1024.0).fract() == 0.0 {
        format!("{}k", v / 1024.0)
    } else if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// Log range padded to whole decades (or powers of two for the x axis).
fn range(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| *v > 0.0 && v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    (lo <= hi).then(|| if hi / lo < 1.5 { (lo / 1.5, hi * 1.5) } else { (lo, hi) })
}

pub fn loglog_svg(title: &str, panels: &[Panel]) -> String {
    let legend_rows = panels.first().map_or(0, |p| p.series.len().div_ceil(3));
    let total_w = W * panels.len() as f64;
    let total_h = H + 24.0 * legend_rows as f64 + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" viewBox="0 0 {total_w} {total_h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#, total_w / 2.0, esc(title));
    for (pi, p) in panels.iter().enumerate() {
        let ox = W * pi as f64;
        let (x0, x1) = (ox + ML, ox + W - MR);
        let (y0, y1) = (H - MB, MT);
        let pts = || p.series.iter().flat_map(|s| s.points.iter().copied());
        let (Some((xlo, xhi)), Some((ylo, yhi))) = (range(pts().filter(|q| q.1 > 0.0).map(|q| q.0)), range(pts().filter(|q| q.0 > 0.0).map(|q| q.1))) else {
            let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}: no data</text>"#, ox + W / 2.0, H / 2.0, esc(&p.title));
            continue;
        };
        let (ylo, yhi) = (10f64.powf(ylo.log10().floor()), 10f64.powf(yhi.log10().ceil()));
        let (xlo, xhi) = (2f64.powf(xlo.log2().floor()), 2f64.powf(xhi.log2().ceil()));
        let px = |x: f64| x0 + (x.ln() - xlo.ln()) / (xhi.ln() - xlo.ln()) * (x1 - x0);
        let py = |y: f64| y0 - (y.ln() - ylo.ln()) / (yhi.ln() - ylo.ln()) * (y0 - y1);
        let _ = writeln!(s, r#"<text x="{}" y="40" text-anchor="middle" font-size="13">{}</text>"#, (x0 + x1) / 2.0, esc(&p.title));
        // grid and ticks: powers of two on x, decades on y
        let mut x = xlo;
        let step = if (xhi / xlo).log2() > 8.0 { 4.0 } else { 2.0 };
        while x <= xhi * 1.0001 {
            let _ = writeln!(s, r##"<line x1="{0:.1}" y1="{y0}" x2="{0:.1}" y2="{y1}" stroke="#ddd"/>"##, px(x));
            let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#, px(x), y0 + 16.0, tick_label(x));
            x *= step;
        }
        let mut y = ylo;
        while y <= yhi * 1.0001 {
            let _ = writeln!(s, r##"<line x1="{x0}" y1="{0:.1}" x2="{x1}" y2="{0:.1}" stroke="#ddd"/>"##, py(y));
            let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, x0 - 6.0, py(y) + 4.0, tick_label(y));
            y *= 10.0;
        }
        let _ = writeln!(s, r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#444"/>"##, x1 - x0, y0 - y1);
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">tokens</text>"#, (x0 + x1) / 2.0, y0 + 34.0);
        let _ = writeln!(
            s,
            r#"<text x="{0}" y="{1}" text-anchor="middle" transform="rotate(-90 {0} {1})">{2}</text>"#,
            ox + 18.0,
            (y0 + y1) / 2.0,
            esc(&p.y_label)
        );
        for se in &p.series {
            let v: Vec<(f64, f64)> = se.points.iter().copied().filter(|(a, b)| *a > 0.0 && *b > 0.0 && b.is_finite()).collect();
            if v.is_empty() {
                continue;
            }
            let path: Vec<String> = v.iter().map(|&(a, b)| format!("{:.1},{:.1}", px(a), py(b))).collect();
            let dash = if se.dashed { r#" stroke-dasharray="6 4""# } else { "" };
            let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#, path.join(" "), se.color);
            for &(a, b) in &v {
                let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#, px(a), py(b), se.color);
            }
        }
    }
    if let Some(p) = panels.first() {
        for (i, se) in p.series.iter().enumerate() {
            let (col, row) = (i % 3, i / 3);
            let lx = 40.0 + col as f64 * (total_w - 80.0) / 3.0;
            let ly = H + 10.0 + 24.0 * row as f64;
            let dash = if se.dashed { r#" stroke-dasharray="6 4""# } else { "" };
            let _ = writeln!(s, r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/>"#, lx + 30.0, se.color);
            let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, lx + 36.0, ly + 4.0, esc(&se.name));
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_line_per_series_and_escapes_names() {
        let p = Panel {
            title: "t".into(),
            y_label: "s".into(),
            series: vec![
                Series { name: "a<b".into(), color: "#000".into(), dashed: false, points: vec![(512.0, 1.0), (1024.0, 2.0), (2048.0, 4.5)] },
                Series { name: "empty".into(), color: "#f00".into(), dashed: true, points: vec![] },
            ],
        };
        let svg = loglog_svg("x & y", &[p]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("a&lt;b") && svg.contains("x &amp; y"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn tick_labels() {
        assert_eq!(tick_label(512.0), "512");
        assert_eq!(tick_label(32768.0), "32k");
        assert_eq!(tick_label(0.1), "0.1");
        assert_eq!(tick_label(10.0), "10");
    }
}
