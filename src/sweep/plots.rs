//! Loss curves per condition as SVG: training loss of every run (one line per lr / seed) and held-out loss at
//! each evaluation (points in the same colour).

use super::report::{by_condition, curves};
use super::run::RunSummary;
use super::scores::Delta;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Writes `plots/<condition>.svg` for every condition with finished runs (each read from its own folder, `r.dir`);
/// returns (condition, path relative to `dir`).
pub fn write(dir: &Path, runs: &[RunSummary]) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for (condition, group) in by_condition(runs) {
        let series: Vec<(String, Vec<(f64, f64)>, Vec<(f64, f64)>)> = group
            .iter()
            .map(|r| {
                let (train, heldout) = curves(&r.dir.join(&r.run));
                let label = if group.iter().any(|o| o.seed != r.seed) { format!("lr {:e}, seed {}", r.lr, r.seed) } else { format!("lr {:e}", r.lr) };
                (label, train, heldout)
            })
            .filter(|(_, t, _)| !t.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let rel = PathBuf::from("plots").join(format!("{condition}.svg"));
        let path = dir.join(&rel);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let tmp = crate::fsutil::temp_path(&path)?;
        draw(&tmp, &condition, &series).map_err(|e| anyhow!("plot {}: {e}", path.display()))?;
        std::fs::rename(&tmp, &path)?;
        out.push((condition, rel));
    }
    Ok(out)
}

type Series = (String, Vec<(f64, f64)>, Vec<(f64, f64)>);

fn draw(path: &Path, title: &str, series: &[Series]) -> Result<(), Box<dyn std::error::Error>> {
    let points = || series.iter().flat_map(|(_, t, h)| t.iter().chain(h));
    let max_step = points().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..max_step, (lo - pad)..(hi + pad))?;
    chart.configure_mesh().x_desc("step").y_desc("loss").x_label_formatter(&|x| format!("{x:.0}")).draw()?;
    for (i, (label, train, heldout)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(train.iter().copied(), color.stroke_width(2)))?
            .label(format!("{label} train"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        if !heldout.is_empty() {
            chart
                .draw_series(heldout.iter().map(|&p| Circle::new(p, 4, color.filled())))?
                .label(format!("{label} held-out"))
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::UpperRight).draw()?;
    root.present()?;
    Ok(())
}

/// Writes `plots/delta-<benchmark>.svg` for every benchmark with ΔS: ΔS against S(native) on the benchmark's
/// headline metric ([`super::scores::headline_metric`]), one colour per origin compared with native, one point per
/// model × lr × seed × language. Returns (benchmark, path relative to `dir`).
pub fn write_deltas(dir: &Path, deltas: &[Delta]) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&str> = deltas.iter().map(|d| d.other.benchmark.as_str()).collect();
    for name in names {
        let Some(metric) = super::scores::headline_metric(deltas, name) else { continue };
        let mut series: std::collections::BTreeMap<&str, Vec<(f64, f64)>> = Default::default();
        for d in deltas.iter().filter(|d| d.other.benchmark == name && d.other.metric == metric && d.other.language != "all") {
            series.entry(d.other.origin_label.as_str()).or_default().push((d.native.score, d.delta));
        }
        let rel = PathBuf::from("plots").join(format!("delta-{name}.svg"));
        let path = dir.join(&rel);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let tmp = crate::fsutil::temp_path(&path)?;
        draw_deltas(&tmp, &format!("{name}: ΔS against S(native), {metric}"), &metric, &series).map_err(|e| anyhow!("plot {}: {e}", path.display()))?;
        std::fs::rename(&tmp, &path)?;
        out.push((name.to_string(), rel));
    }
    Ok(out)
}

/// A range around the values with some margin (never empty).
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let pad = ((hi - lo) * 0.1).max(0.05);
    (lo - pad)..(hi + pad)
}

fn draw_deltas(path: &Path, title: &str, metric: &str, series: &std::collections::BTreeMap<&str, Vec<(f64, f64)>>) -> Result<(), Box<dyn std::error::Error>> {
    let points = || series.values().flatten();
    let (xlo, xhi) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let (ylo, yhi) = points().fold((0f64, 0f64), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (xr, yr) = (padded(xlo, xhi), padded(ylo, yhi));
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root).caption(title, ("sans-serif", 18)).margin(12).x_label_area_size(40).y_label_area_size(56).build_cartesian_2d(xr.clone(), yr)?;
    chart.configure_mesh().x_desc(format!("S(native), {metric}")).y_desc("ΔS = S(condition) − S(native)").draw()?;
    chart.draw_series(LineSeries::new([(xr.start, 0.0), (xr.end, 0.0)], BLACK.mix(0.5)))?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))?
            .label(label.to_string())
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::UpperRight).draw()?;
    root.present()?;
    Ok(())
}
