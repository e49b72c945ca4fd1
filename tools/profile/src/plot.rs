//! Plots of a profile as PNG and SVG (plotters): latency histogram, expert
//! activation heat map (task/modality x expert), per-op time breakdown.
//!
//! Text is drawn with a vendored DejaVu Sans Mono through ab_glyph, so the
//! plots render the same offline and without fontconfig.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

static FONT: &[u8] = include_bytes!("../fonts/DejaVuSansMono.ttf");
static REGISTER: Once = Once::new();
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 560);

fn font_ready() {
    REGISTER.call_once(|| {
        // The font is a checked-in file; a failure here would be a build bug,
        // and plotters then reports it at the first text draw.
        let _ = register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

type Draw<'a, DB> = DrawingArea<DB, Shift>;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Draws with `f` into `dir/stem.png` and `dir/stem.svg`; returns both paths.
/// The files are written to temporaries and renamed into place.
fn both(
    dir: &Path,
    stem: &str,
    f: &dyn Fn(&Draw<'_, BitMapBackend<'_>>) -> Result<()>,
    g: &dyn Fn(&Draw<'_, SVGBackend<'_>>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    font_ready();
    std::fs::create_dir_all(dir)?;
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    // Drawn in memory and written like every other output (exclusive,
    // unpredictable temporary name, renamed into place): the bitmap
    // backend's own file writing would follow a symlink at a fixed name.
    let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        f(&root)?;
        root.present().map_err(err)?;
    }
    taskpath_checkpoint::write_atomic_with(&png, &mut |file| {
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), SIZE.0, SIZE.1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(std::io::Error::other)?;
        w.write_image_data(&rgb).map_err(std::io::Error::other)?;
        w.finish().map_err(std::io::Error::other)
    })?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        g(&root)?;
        root.present().map_err(err)?;
    }
    taskpath_checkpoint::write_atomic(&svg, text.as_bytes())?;
    Ok(vec![png, svg])
}

fn color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

/// Latency histograms of each task (µs), overlaid.
pub fn latency_histogram(dir: &Path, series: &[(String, Vec<f64>)]) -> Result<Vec<PathBuf>> {
    fn draw<DB: DrawingBackend>(root: &Draw<'_, DB>, series: &[(String, Vec<f64>)]) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let all: Vec<f64> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
        let lo = crate::stats::percentile(&all, 0.0).unwrap_or(0.0);
        // A shared machine's scheduler adds a far tail that would squash
        // the bulk into one bin: show up to twice the largest task p90 and
        // say how many runs lie beyond.
        let p90 = series
            .iter()
            .filter_map(|s| crate::stats::percentile(&s.1, 90.0))
            .fold(lo, f64::max);
        let top = all.iter().copied().fold(lo, f64::max);
        let hi = (2.0 * p90).min(top).max(lo + 1.0);
        let beyond = all.iter().filter(|&&x| x > hi).count();
        const BINS: usize = 60;
        let w = (hi - lo) / BINS as f64;
        let counts: Vec<Vec<u32>> = series
            .iter()
            .map(|(_, v)| {
                let mut c = vec![0u32; BINS];
                for &x in v.iter().filter(|&&x| x <= hi) {
                    c[(((x - lo) / w) as usize).min(BINS - 1)] += 1;
                }
                c
            })
            .collect();
        let ymax = counts.iter().flatten().copied().max().unwrap_or(1).max(1);
        let caption = format!(
            "Latency per inference (timed runs; {beyond} of {} above {hi:.0} µs not shown)",
            all.len()
        );
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0u32..ymax + ymax / 10 + 1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("latency (µs)")
            .y_desc("runs")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(err)?;
        for (i, ((name, _), c)) in series.iter().zip(&counts).enumerate() {
            let col = color(i);
            chart
                .draw_series(c.iter().enumerate().filter(|(_, &n)| n > 0).map(|(b, &n)| {
                    let x0 = lo + b as f64 * w;
                    Rectangle::new([(x0, 0), (x0 + w, n)], col.mix(0.6).filled())
                }))
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], col.filled()));
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    }
    both(dir, "latency", &|r| draw(r, series), &|r| draw(r, series))
}

/// Heat map of expert activation shares: rows `(label, counts, routes)`.
pub fn activation_heatmap(dir: &Path, rows: &[(String, Vec<u64>, u64)]) -> Result<Vec<PathBuf>> {
    heatmap(
        dir,
        "experts",
        "Expert activations: share of router decisions",
        rows,
    )
}

/// Heat map of expert shares into `dir/stem.{png,svg}` under `caption`:
/// one row per `(label, counts, total)`, each cell `count / total`, coloured
/// from white (0) to dark blue (the largest share of the map).
pub fn heatmap(
    dir: &Path,
    stem: &str,
    caption: &str,
    rows: &[(String, Vec<u64>, u64)],
) -> Result<Vec<PathBuf>> {
    fn draw<DB: DrawingBackend>(
        root: &Draw<'_, DB>,
        caption: &str,
        rows: &[(String, Vec<u64>, u64)],
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let n = rows.iter().map(|r| r.1.len()).max().unwrap_or(1) as i32;
        let m = rows.len().max(1) as i32;
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FAMILY, 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(200)
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..m - 1).into_segmented())
            .map_err(err)?;
        let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("expert")
            .x_labels(n as usize)
            .y_labels(m as usize)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(e) => format!("{e}"),
                _ => String::new(),
            })
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(r) => labels
                    .get((m - 1 - r) as usize)
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(err)?;
        let share = |c: u64, total: u64| c as f64 / total.max(1) as f64;
        // The colour scale runs from white (0) to dark blue (the largest share).
        let top = rows
            .iter()
            .flat_map(|(_, counts, total)| counts.iter().map(|&c| share(c, *total)))
            .fold(0.0, f64::max);
        for (ri, (_, counts, routes)) in rows.iter().enumerate() {
            let y = m - 1 - ri as i32;
            for (e, &c) in counts.iter().enumerate() {
                let share = share(c, *routes);
                let t = (share / top.max(1e-12)).clamp(0.0, 1.0);
                let fill = RGBColor(
                    (255.0 - t * 222.0) as u8,
                    (255.0 - t * 173.0) as u8,
                    (255.0 - t * 100.0) as u8,
                );
                let e = e as i32;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [
                            (SegmentValue::Exact(e), SegmentValue::Exact(y)),
                            (SegmentValue::Exact(e + 1), SegmentValue::Exact(y + 1)),
                        ],
                        fill.filled(),
                    )))
                    .map_err(err)?;
                let ink = if t > 0.5 { WHITE } else { BLACK };
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{share:.2}"),
                        (SegmentValue::CenterOf(e), SegmentValue::CenterOf(y)),
                        (FAMILY, 13).into_font().color(&ink),
                    )))
                    .map_err(err)?;
            }
        }
        Ok(())
    }
    both(dir, stem, &|r| draw(r, caption, rows), &|r| {
        draw(r, caption, rows)
    })
}

/// Stacked bars of median time per op kind, one bar per task (µs per inference).
pub fn op_breakdown(dir: &Path, tasks: &[(String, BTreeMap<String, f64>)]) -> Result<Vec<PathBuf>> {
    fn draw<DB: DrawingBackend>(
        root: &Draw<'_, DB>,
        tasks: &[(String, BTreeMap<String, f64>)],
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let ops: Vec<String> = {
            let mut v: Vec<String> = tasks.iter().flat_map(|t| t.1.keys().cloned()).collect();
            v.sort();
            v.dedup();
            v
        };
        let total = |m: &BTreeMap<String, f64>| m.values().sum::<f64>() / 1000.0;
        let xmax = tasks.iter().map(|t| total(&t.1)).fold(1.0, f64::max) * 1.25;
        let m = tasks.len().max(1) as i32;
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Time per op kind (traced runs, median per inference)",
                (FAMILY, 22),
            )
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(140)
            .build_cartesian_2d(0.0..xmax, (0..m - 1).into_segmented())
            .map_err(err)?;
        let names: Vec<String> = tasks.iter().map(|t| t.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("µs per inference")
            .y_labels(m as usize)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(r) => {
                    names.get((m - 1 - r) as usize).cloned().unwrap_or_default()
                }
                _ => String::new(),
            })
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(err)?;
        let mut offsets = vec![0.0f64; tasks.len()];
        for (k, op) in ops.iter().enumerate() {
            let col = color(k);
            let rects: Vec<_> = tasks
                .iter()
                .enumerate()
                .filter_map(|(i, (_, m))| m.get(op).map(|&ns| (i, ns / 1000.0)))
                .map(|(i, us)| {
                    let y = m - 1 - i as i32;
                    let x0 = offsets[i];
                    offsets[i] += us;
                    Rectangle::new(
                        [
                            (x0, SegmentValue::Exact(y)),
                            (x0 + us, SegmentValue::Exact(y + 1)),
                        ],
                        col.filled(),
                    )
                })
                .collect();
            chart
                .draw_series(rects)
                .map_err(err)?
                .label(op.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], col.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    }
    both(dir, "ops", &|r| draw(r, tasks), &|r| draw(r, tasks))
}
