//! Plots as PNG and SVG: the fine-tuning loss curve, and the learning curves of transfer.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use super::finetune::Epoch;

/// Fonts tried in order; `SKILLGRAFT_FONT` (a .ttf or .otf file) comes first.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Why a plot could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlotError {
    /// No usable font; the message says which to install.
    #[error("{0}")]
    Font(String),
    /// Drawing or writing the file failed.
    #[error("cannot draw {}: {message}", path.display())]
    Draw {
        /// The image file.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
}

fn drawn(path: &Path) -> impl FnOnce(String) -> PlotError + '_ {
    move |message| PlotError::Draw { path: path.to_path_buf(), message }
}

/// Registers a system font with plotters once: it draws text with ab_glyph and ships none.
fn font() -> Result<(), String> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> =
            std::env::var_os("SKILLGRAFT_FONT").map(PathBuf::from).into_iter().chain(FONTS.iter().map(PathBuf::from)).collect();
        let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            format!(
                "no font to label the plot with (looked for {}); install fonts-dejavu-core or set SKILLGRAFT_FONT to a .ttf file",
                FONTS[0]
            )
        })?;
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read font {}: {e}", path.display()))?;
        // plotters keeps the font for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a font plotters can read", path.display()))
    })
    .clone()
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    curve: &[Epoch],
    title: &str,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let values =
        curve.iter().flat_map(|e| std::iter::once(e.train).chain(e.held_out)).filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo / 1.2, hi * 1.2) } else { (1e-6, 1.0) };
    let last = curve.last().map_or(1, |e| e.epoch).max(2);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(1usize..last, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("mean squared error (policy units)")
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .draw()
        .map_err(err)?;
    let train = curve.iter().map(|e| (e.epoch, e.train));
    chart
        .draw_series(LineSeries::new(train, BLUE.stroke_width(2)))
        .map_err(err)?
        .label("training")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    if curve.iter().any(|e| e.held_out.is_some()) {
        let held = curve.iter().filter_map(|e| e.held_out.map(|h| (e.epoch, h)));
        chart
            .draw_series(LineSeries::new(held, RED.stroke_width(2)))
            .map_err(err)?
            .label("held-out episode")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)
}

/// `stem.png` and `stem.svg`.
fn paths(stem: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut name = stem.as_os_str().to_os_string();
        name.push(ext);
        PathBuf::from(name)
    };
    (with(".png"), with(".svg"))
}

/// Writes the loss curve to `stem.png` and `stem.svg`; returns the two paths.
pub fn loss_curve(curve: &[Epoch], stem: &Path, title: &str) -> Result<(PathBuf, PathBuf), PlotError> {
    font().map_err(PlotError::Font)?;
    let (png, svg) = paths(stem);
    draw(BitMapBackend::new(&png, (800, 500)).into_drawing_area(), curve, title).map_err(drawn(&png))?;
    draw(SVGBackend::new(&svg, (800, 500)).into_drawing_area(), curve, title).map_err(drawn(&svg))?;
    Ok((png, svg))
}

/// One line of a learning-curve panel: a label and (x, mean, spread) points.
pub type Series = (String, Vec<(f64, f64, f64)>);

const COLOURS: [RGBColor; 6] = [BLACK, BLUE, RED, GREEN, MAGENTA, CYAN];

fn draw_panels<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    panels: &[(String, Vec<Series>)],
    x_desc: &str,
    y_desc: &str,
    y_max: f64,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for ((title, series), area) in panels.iter().zip(areas) {
        let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
        let (lo, hi) = if lo.is_finite() { (lo - 0.5, hi + 0.5) } else { (0.0, 1.0) };
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi, 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-9 { format!("{v:.0}") } else { String::new() })
            .y_label_formatter(&|v| if y_max < 20.0 { format!("{v:.1}") } else { format!("{v:.0}") })
            .draw()
            .map_err(err)?;
        for (k, (label, points)) in series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), colour.stroke_width(2)))
                .map_err(err)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            chart
                .draw_series(points.iter().map(|&(x, m, s)| {
                    ErrorBar::new_vertical(x, (m - s).max(0.0), m, (m + s).min(y_max), colour.filled(), 6)
                }))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// Writes side-by-side panels of lines with error bars (y from 0 to `y_max`)
/// to `stem.png` and `stem.svg`; returns the two paths.
pub fn curves(
    panels: &[(String, Vec<Series>)],
    stem: &Path,
    x_desc: &str,
    y_desc: &str,
    y_max: f64,
) -> Result<(PathBuf, PathBuf), PlotError> {
    font().map_err(PlotError::Font)?;
    let (png, svg) = paths(stem);
    let size = (560 * panels.len().max(1) as u32, 460);
    draw_panels(BitMapBackend::new(&png, size).into_drawing_area(), panels, x_desc, y_desc, y_max)
        .map_err(drawn(&png))?;
    draw_panels(SVGBackend::new(&svg, size).into_drawing_area(), panels, x_desc, y_desc, y_max).map_err(drawn(&svg))?;
    Ok((png, svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let curve: Vec<Epoch> = (1..=12)
            .map(|e| Epoch { epoch: e, train: 1.0 / e as f64, held_out: Some(1.2 / e as f64 + 0.01) })
            .collect();
        let (png, svg) = loss_curve(&curve, &dir.path().join("loss"), "test").unwrap();
        let png = std::fs::read(png).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(svg.contains("<svg") && svg.contains("held-out episode"));
    }
}
