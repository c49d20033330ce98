//! Minimal SVG charts, so the report needs no plotting library and no JavaScript.

const W: f64 = 420.0;
const H: f64 = 260.0;
const PAD_L: f64 = 52.0;
const PAD_R: f64 = 12.0;
const PAD_T: f64 = 28.0;
const PAD_B: f64 = 36.0;
const COLOURS: [&str; 5] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];

/// Tick positions at a round step (1, 2 or 5 times a power of ten) covering `[lo, hi]` in about
/// four intervals, and the decimals their labels need.
pub fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, usize) {
    let raw = (hi - lo) / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let first = (lo / step + 1e-9).floor() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    let ticks = (first..=last).map(|i| i as f64 * step).collect();
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    (ticks, decimals)
}

/// A horizontal reference line: a bound or a target the reader compares the data with.
#[derive(Debug, Clone, Copy)]
pub struct Guide<'a> {
    pub label: &'a str,
    pub y: f64,
}

/// Lines over a shared x axis; `y_range` fixes the y axis (otherwise it fits the data).
pub fn line_chart(
    title: &str,
    x_label: &str,
    lines: &[(&str, Vec<(f64, f64)>)],
    y_range: Option<(f64, f64)>,
) -> String {
    line_chart_with_guides(title, x_label, lines, y_range, &[])
}

/// [`line_chart`] with dashed reference lines; the y axis stretches to show them.
pub fn line_chart_with_guides(
    title: &str,
    x_label: &str,
    lines: &[(&str, Vec<(f64, f64)>)],
    y_range: Option<(f64, f64)>,
    guides: &[Guide<'_>],
) -> String {
    let points: Vec<(f64, f64)> =
        lines.iter().flat_map(|(_, p)| p.iter().copied()).filter(|p| p.1.is_finite()).collect();
    let mut out = format!("<svg width={W} height={H} xmlns='http://www.w3.org/2000/svg'>");
    out.push_str(&format!("<text x={} y=18 font-size=13 text-anchor=middle>{title}</text>", W / 2.0));
    if points.is_empty() {
        out.push_str(&format!(
            "<text x={} y={} font-size=12 text-anchor=middle fill=#888>no data yet</text></svg>",
            W / 2.0,
            H / 2.0
        ));
        return out;
    }
    let (x0, x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = y_range.unwrap_or_else(|| {
        let ys = points.iter().map(|p| p.1).chain(guides.iter().map(|g| g.y).filter(|y| y.is_finite()));
        ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)))
    });
    if (y1 - y0).abs() < 1e-9 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let (y_ticks, decimals) = nice_ticks(y0, y1);
    if y_range.is_none() {
        (y0, y1) = (y_ticks[0], y_ticks[y_ticks.len() - 1]);
    }
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let sx = |x: f64| PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R);
    let sy = |y: f64| H - PAD_B - (y - y0) / (y1 - y0) * (H - PAD_T - PAD_B);
    for t in y_ticks.iter().filter(|t| **t >= y0 - 1e-9 && **t <= y1 + 1e-9) {
        out.push_str(&format!(
            "<line x1={PAD_L} x2={} y1={y:.1} y2={y:.1} stroke=#eee /><text x={} y={:.1} font-size=10 text-anchor=end>{t:.decimals$}</text>",
            W - PAD_R,
            PAD_L - 4.0,
            sy(*t) + 3.0,
            y = sy(*t)
        ));
    }
    let (x_ticks, x_decimals) = nice_ticks(x0, x1);
    for t in x_ticks.iter().filter(|t| **t >= x0 - 1e-9 && **t <= x1 + 1e-9) {
        out.push_str(&format!(
            "<text x={:.1} y={} font-size=10 text-anchor=middle>{t:.x_decimals$}</text>",
            sx(*t),
            H - PAD_B + 14.0
        ));
    }
    for guide in guides.iter().filter(|g| g.y.is_finite() && g.y >= y0 && g.y <= y1) {
        out.push_str(&format!(
            "<line x1={PAD_L} x2={} y1={y:.1} y2={y:.1} stroke=#b00 stroke-dasharray='5,4' /><text x={} y={:.1} font-size=10 text-anchor=end fill=#b00>{}</text>",
            W - PAD_R,
            W - PAD_R - 2.0,
            sy(guide.y) - 3.0,
            guide.label,
            y = sy(guide.y)
        ));
    }
    out.push_str(&format!("<text x={} y={} font-size=11 text-anchor=middle>{x_label}</text>", W / 2.0, H - 6.0));
    let mut legend_x = PAD_L + 8.0;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> =
            pts.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        out.push_str(&format!("<polyline fill=none stroke={colour} stroke-width=1.8 points='{}' />", path.join(" ")));
        if pts.len() <= 20 {
            for &(x, y) in pts.iter().filter(|p| p.1.is_finite()) {
                out.push_str(&format!("<circle cx={:.1} cy={:.1} r=2.5 fill={colour} />", sx(x), sy(y)));
            }
        }
        out.push_str(&format!(
            "<rect x={legend_x} y={} width=10 height=3 fill={colour} /><text x={} y={} font-size=10>{name}</text>",
            PAD_T + 2.0,
            legend_x + 14.0,
            PAD_T + 6.0
        ));
        legend_x += 24.0 + 6.0 * name.len() as f64;
    }
    out.push_str("</svg>");
    out
}

/// Horizontal bars of values in `[0, max]`.
pub fn bar_chart(title: &str, bars: &[(String, f64)], max: f64) -> String {
    let h = 40.0 + 26.0 * bars.len() as f64;
    let mut out = format!("<svg width={W} height={h} xmlns='http://www.w3.org/2000/svg'>");
    out.push_str(&format!("<text x={} y=18 font-size=13 text-anchor=middle>{title}</text>", W / 2.0));
    for (i, (name, v)) in bars.iter().enumerate() {
        let y = 30.0 + 26.0 * i as f64;
        let w = (v / max).clamp(0.0, 1.0) * (W - 200.0);
        out.push_str(&format!(
            "<text x=110 y={} font-size=11 text-anchor=end>{name}</text><rect x=116 y={y} width={w:.1} height=18 fill={} /><text x={} y={} font-size=11>{v:.3}</text>",
            y + 13.0,
            COLOURS[i % COLOURS.len()],
            122.0 + w,
            y + 13.0
        ));
    }
    out.push_str("</svg>");
    out
}

/// Groups of bars (for example answer types, SFT beside PPO), values in `[0, 1]`.
pub fn grouped_bars(title: &str, groups: &[(String, Vec<(String, f64)>)]) -> String {
    let width = 80.0 + 110.0 * groups.len() as f64;
    let mut out = format!("<svg width={width} height={H} xmlns='http://www.w3.org/2000/svg'>");
    out.push_str(&format!("<text x={} y=18 font-size=13 text-anchor=middle>{title}</text>", width / 2.0));
    let plot_h = H - PAD_T - PAD_B;
    for (g, (name, bars)) in groups.iter().enumerate() {
        let gx = 50.0 + 110.0 * g as f64;
        for (b, (label, v)) in bars.iter().enumerate() {
            let bh = v.clamp(0.0, 1.0) * plot_h;
            let x = gx + 34.0 * b as f64;
            out.push_str(&format!(
                "<rect x={x} y={:.1} width=30 height={bh:.1} fill={} ><title>{label}: {v:.3}</title></rect><text x={} y={:.1} font-size=9 text-anchor=middle>{:.0}%</text>",
                H - PAD_B - bh,
                COLOURS[b % COLOURS.len()],
                x + 15.0,
                H - PAD_B - bh - 3.0,
                v * 100.0
            ));
        }
        out.push_str(&format!(
            "<text x={} y={} font-size=11 text-anchor=middle>{name}</text>",
            gx + 32.0,
            H - PAD_B + 16.0
        ));
    }
    if let Some((_, bars)) = groups.first() {
        for (b, (label, _)) in bars.iter().enumerate() {
            out.push_str(&format!(
                "<rect x={} y=26 width=10 height=10 fill={} /><text x={} y=35 font-size=10>{label}</text>",
                width - 150.0 + 70.0 * b as f64,
                COLOURS[b % COLOURS.len()],
                width - 136.0 + 70.0 * b as f64
            ));
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_round_numbers_and_cover_the_range() {
        let (t, d) = nice_ticks(0.0, 1.0);
        assert_eq!((t.clone(), d), (vec![0.0, 0.5, 1.0], 1));
        let (t, d) = nice_ticks(0.13, 0.91);
        assert_eq!(d, 1);
        assert!(t.first().unwrap() <= &0.13 && t.last().unwrap() >= &0.91, "{t:?}");
        assert!(t.iter().all(|x| ((x * 10.0).round() - x * 10.0).abs() < 1e-9), "{t:?}");
        let (t, d) = nice_ticks(0.0, 60.0);
        assert_eq!((t, d), (vec![0.0, 20.0, 40.0, 60.0], 0));
        let (t, d) = nice_ticks(1.2, 1.45);
        assert_eq!(d, 1);
        assert_eq!(t.len(), 4, "{t:?}");
    }

    #[test]
    fn guides_are_drawn_and_stretch_the_axis() {
        let svg = line_chart_with_guides(
            "KL",
            "step",
            &[("kl", vec![(0.0, 0.5), (10.0, 1.0)])],
            None,
            &[Guide { label: "band 6", y: 6.0 }],
        );
        assert!(svg.contains("band 6") && svg.contains("stroke-dasharray"), "{svg}");
        assert!(svg.contains(">6<"), "the axis reaches the guide: {svg}");
    }
}
