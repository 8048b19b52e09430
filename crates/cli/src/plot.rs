//! Plots and text on images (plotters' bitmap backend with an embedded DejaVu Sans, so no
//! system fonts are needed): line charts of one or more panels stacked vertically, for schedules
//! and loss curves, and image grids with a label at the left of each row (class-conditional
//! samples).

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;

/// Registers DejaVu Sans as plotters' "sans-serif" font. Call before drawing any text.
pub fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and valid, so registration cannot fail on user input.
        if plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .is_err()
        {
            panic!("embedded DejaVu Sans failed to register");
        }
    });
}

/// One line of a chart: its legend label and its (x, y) points, in drawing order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry; legends are drawn only for charts with more than one series.
    pub label: String,
    /// The points. Non-finite ones (a NaN loss, the log of 0) leave a gap in the line.
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, axis labels and the series drawn in it.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    /// Drawn above the panel.
    pub title: &'a str,
    /// Below the x axis.
    pub x_label: &'a str,
    /// Beside the y axis.
    pub y_label: &'a str,
    /// The lines, coloured in order from a fixed palette.
    pub series: &'a [Series],
}

/// Width of a chart image, and height of each panel, in pixels.
const WIDTH: u32 = 960;
const PANEL_HEIGHT: u32 = 420;

/// Line colours: the first six of matplotlib's "tab10", readable on white.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `charts` as panels stacked top to bottom into one image at `path` (960 pixels wide,
/// 420 high per panel). The format follows the extension; use `.png`.
///
/// # Errors
///
/// When a chart has no finite point to draw, or the file cannot be written; the message names
/// the chart or the file.
pub fn line_charts(path: &Path, charts: &[Chart<'_>]) -> Result<()> {
    if charts.is_empty() {
        bail!("no chart to draw into {}", path.display());
    }
    ensure_font();
    let n_panels = u32::try_from(charts.len()).context("too many panels")?;
    let root = BitMapBackend::new(path, (WIDTH, PANEL_HEIGHT * n_panels)).into_drawing_area();
    let draw_error = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw_error(&e))?;
    for (area, chart) in root.split_evenly((charts.len(), 1)).iter().zip(charts) {
        draw_panel(area, chart).map_err(|e| anyhow!("chart \"{}\": {e}", chart.title))?;
    }
    root.present().map_err(|e| draw_error(&e))?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    chart: &Chart<'_>,
) -> Result<()> {
    let finite = || {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let Some((x_range, y_range)) = bounds(finite()) else {
        bail!("nothing to plot: every point is missing or not finite");
    };
    let corner = legend_corner(chart.series, (&x_range, &y_range));
    let x_label = tick_formatter(x_range.end - x_range.start);
    let y_label = tick_formatter(y_range.end - y_range.start);
    let mut cc = ChartBuilder::on(area)
        .caption(chart.title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(78)
        .build_cartesian_2d(x_range, y_range)?;
    cc.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(235, 235, 235))
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .draw()?;
    for (idx, series) in chart.series.iter().enumerate() {
        let color = PALETTE[idx % PALETTE.len()];
        let style = color.stroke_width(2);
        // Split at non-finite points, so that a gap shows where values are missing.
        let runs = series
            .points
            .split(|(x, y)| !(x.is_finite() && y.is_finite()));
        let mut labelled = false;
        for run in runs.filter(|run| !run.is_empty()) {
            let drawn = cc.draw_series(LineSeries::new(run.iter().copied(), style))?;
            if !labelled {
                drawn
                    .label(series.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
                labelled = true;
            }
        }
    }
    if chart.series.len() > 1 {
        cc.configure_series_labels()
            .position(corner)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// The corner of the plot where the legend hides the least of the lines: the one whose box
/// (about the legend's size, in fractions of the plot) holds the fewest points of the lines,
/// sampled along each segment so that a line crossing a corner between two points counts.
/// Ties go to the upper right, then upper left, lower right, lower left.
fn legend_corner(
    series: &[Series],
    (x, y): (&std::ops::Range<f64>, &std::ops::Range<f64>),
) -> SeriesLabelPosition {
    let width = 0.35;
    let height = (0.06 * series.len() as f64 + 0.04).min(0.6);
    // A point in plot fractions, (0, 0) the lower left.
    let unit = |(px, py): (f64, f64)| {
        (
            (px - x.start) / (x.end - x.start),
            (py - y.start) / (y.end - y.start),
        )
    };
    let samples: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.windows(2))
        .filter(|w| w.iter().all(|(a, b)| a.is_finite() && b.is_finite()))
        .flat_map(|w| {
            let (a, b) = (unit(w[0]), unit(w[1]));
            (0..=16).map(move |k| {
                let f = f64::from(k) / 16.0;
                (a.0 + f * (b.0 - a.0), a.1 + f * (b.1 - a.1))
            })
        })
        .collect();
    let corners = [
        (SeriesLabelPosition::UpperRight, (1.0 - width, 1.0 - height)),
        (SeriesLabelPosition::UpperLeft, (0.0, 1.0 - height)),
        (SeriesLabelPosition::LowerRight, (1.0 - width, 0.0)),
        (SeriesLabelPosition::LowerLeft, (0.0, 0.0)),
    ];
    let covered = |(x0, y0): (f64, f64)| {
        samples
            .iter()
            .filter(|(px, py)| (x0..=x0 + width).contains(px) && (y0..=y0 + height).contains(py))
            .count()
    };
    corners
        .into_iter()
        .min_by_key(|&(_, origin)| covered(origin))
        .map_or(SeriesLabelPosition::UpperRight, |(corner, _)| corner)
}

/// The x and y ranges of `points`, y padded by 4% so that lines do not run along the frame;
/// `None` when there are no points.
#[allow(clippy::type_complexity)]
fn bounds<'a>(
    points: impl Iterator<Item = &'a (f64, f64)>,
) -> Option<(std::ops::Range<f64>, std::ops::Range<f64>)> {
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in points {
        (x_min, x_max, y_min, y_max) = (x_min.min(x), x_max.max(x), y_min.min(y), y_max.max(y));
    }
    let pad = |lo: f64, hi: f64, margin: f64| {
        if hi > lo {
            (lo - margin * (hi - lo))..(hi + margin * (hi - lo))
        } else {
            // A single value gets a band around it as wide as the value (at least 1).
            let half = 0.5 * lo.abs().max(1.0);
            (lo - half)..(hi + half)
        }
    };
    (x_min <= x_max).then(|| (pad(x_min, x_max, 0.0), pad(y_min, y_max, 0.04)))
}

/// Tick labels for an axis spanning `span`, without float noise: "100" rather than "100.0",
/// "0.3" rather than "0.30000000000000004", "0" for a tick a rounding error away from zero, and
/// scientific notation for very small or very large spans.
fn tick_formatter(span: f64) -> impl Fn(&f64) -> String {
    move |&value| {
        if value.abs() <= span * 1e-9 {
            return "0".to_string();
        }
        if !(1e-3..1e6).contains(&span) {
            return format!("{value:.2e}");
        }
        // Three significant digits of the span are enough to tell ticks apart.
        let decimals = (3 - span.log10().floor() as i32).max(0) as usize;
        let text = format!("{value:.decimals$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    }
}

/// Widest label column of [`label_rows`], in pixels: longer names are shortened with "…".
const MAX_LABEL_WIDTH: u32 = 160;

/// `grid` (see [`data::images::make_grid`]) as RGB with a white column on its left holding
/// `labels[r]` beside row `r` of tiles, vertically centred; `(width, height, RGB pixels)`.
///
/// # Errors
/// When the text cannot be drawn.
pub fn label_rows(grid: &data::images::Grid, labels: &[String]) -> Result<(u32, u32, Vec<u8>)> {
    ensure_font();
    let rows_y: Vec<(usize, usize)> = {
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for cell in &grid.cells {
            if rows.last().is_none_or(|&(y, _)| y != cell.y) {
                rows.push((cell.y, cell.height));
            }
        }
        rows
    };
    let tile_h = rows_y.first().map_or(16, |&(_, h)| h) as u32;
    let font_px = tile_h.clamp(8, 14);
    let style = TextStyle::from(("sans-serif", font_px).into_font()).color(&BLACK);
    let draw_err = |e: &dyn std::fmt::Display| anyhow!("cannot draw the row labels: {e}");
    // Measure on a scratch canvas, then draw on the real one.
    let mut scratch = vec![0u8; 3];
    let widest = {
        let probe = BitMapBackend::with_buffer(&mut scratch, (1, 1)).into_drawing_area();
        let mut widest = 0u32;
        for label in labels.iter().take(rows_y.len()) {
            let (w, _) = probe
                .estimate_text_size(label, &style)
                .map_err(|e| draw_err(&e))?;
            widest = widest.max(w);
        }
        widest
    };
    let label_w = (widest + 8).min(MAX_LABEL_WIDTH);
    let (grid_w, height) = (u32::try_from(grid.width)?, u32::try_from(grid.height)?);
    let width = label_w + grid_w;
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    let src = grid.to_rgb();
    let (row_bytes, offset) = (grid.width * 3, label_w as usize * 3);
    for y in 0..grid.height {
        let dst = y * width as usize * 3 + offset;
        rgb[dst..dst + row_bytes].copy_from_slice(&src[y * row_bytes..(y + 1) * row_bytes]);
    }
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        for (&(y, h), label) in rows_y.iter().zip(labels) {
            let text = fit_text(label, label_w - 6, |t| {
                root.estimate_text_size(t, &style).map(|(w, _)| w)
            })
            .map_err(|e| draw_err(&e))?;
            let top = (y + h / 2) as i32 - font_px as i32 / 2;
            root.draw_text(&text, &style, (3, top))
                .map_err(|e| draw_err(&e))?;
        }
        root.present().map_err(|e| draw_err(&e))?;
    }
    Ok((width, height, rgb))
}

/// `text`, or its longest prefix followed by "…" whose width fits `max_width`.
pub(crate) fn fit_text<E>(
    text: &str,
    max_width: u32,
    width_of: impl Fn(&str) -> Result<u32, E>,
) -> Result<String, E> {
    if width_of(text)? <= max_width {
        return Ok(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (0..chars.len()).rev() {
        let candidate: String = chars[..keep].iter().chain(std::iter::once(&'…')).collect();
        if width_of(&candidate)? <= max_width {
            return Ok(candidate);
        }
    }
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_goes_to_the_corner_the_lines_leave_free() {
        let line = |label: &str, points: Vec<(f64, f64)>| Series {
            label: label.into(),
            points,
        };
        let ranges = (&(0.0..10.0), &(0.0..10.0));
        let corner = |series: &[Series]| format!("{:?}", legend_corner(series, ranges));
        // Falling lines from the upper left to the lower right leave the upper right free.
        let falling = [
            line("a", vec![(0.0, 10.0), (10.0, 0.0)]),
            line("b", vec![(0.0, 9.0), (10.0, 1.0)]),
        ];
        assert_eq!(corner(&falling), "UpperRight");
        // Rising ones fill it (between their two points only) and leave the upper left free.
        let rising = [
            line("a", vec![(0.0, 0.0), (10.0, 10.0)]),
            line("b", vec![(0.0, 1.0), (10.0, 9.5)]),
        ];
        assert_eq!(corner(&rising), "UpperLeft");
        // Lines along the top leave the bottom; the lower right before the lower left.
        let high = [
            line("a", vec![(0.0, 9.5), (10.0, 9.5)]),
            line("b", vec![(0.0, 8.0), (10.0, 8.0)]),
        ];
        assert_eq!(corner(&high), "LowerRight");
    }

    fn non_white_rows(path: &Path) -> (u32, u32, Vec<u32>) {
        let image = image::open(path).unwrap().to_rgb8();
        let rows = (0..image.height())
            .map(|y| {
                (0..image.width())
                    .filter(|&x| image.get_pixel(x, y).0 != [255, 255, 255])
                    .count() as u32
            })
            .collect();
        (image.width(), image.height(), rows)
    }

    #[test]
    fn two_panels_are_drawn_one_above_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let up = [Series {
            label: "up".into(),
            points: (0..50).map(|i| (i as f64, i as f64)).collect(),
        }];
        let down = [
            Series {
                label: "down".into(),
                points: (0..50).map(|i| (i as f64, -(i as f64))).collect(),
            },
            Series {
                label: "gap".into(),
                points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (3.0, 2.0)],
            },
        ];
        let charts = [
            Chart {
                title: "up",
                x_label: "step",
                y_label: "value",
                series: &up,
            },
            Chart {
                title: "down",
                x_label: "step",
                y_label: "value",
                series: &down,
            },
        ];
        line_charts(&path, &charts).unwrap();
        let (width, height, rows) = non_white_rows(&path);
        assert_eq!((width, height), (WIDTH, 2 * PANEL_HEIGHT));
        let half = rows.len() / 2;
        assert!(
            rows[..half].iter().sum::<u32>() > 1000,
            "the top panel is blank"
        );
        assert!(
            rows[half..].iter().sum::<u32>() > 1000,
            "the bottom panel is blank"
        );
    }

    #[test]
    fn a_chart_without_finite_points_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let empty = [Series {
            label: "nan".into(),
            points: vec![(0.0, f64::NAN)],
        }];
        let charts = [Chart {
            title: "loss",
            x_label: "step",
            y_label: "loss",
            series: &empty,
        }];
        let err = line_charts(&dir.path().join("x.png"), &charts).unwrap_err();
        assert!(err.to_string().contains("chart \"loss\""), "{err}");
    }

    #[test]
    fn tick_labels_hide_float_noise() {
        let unit = tick_formatter(1.0);
        assert_eq!(
            [unit(&0.30000000000000004), unit(&1.0), unit(&-1e-17)],
            ["0.3", "1", "0"]
        );
        assert_eq!(tick_formatter(1000.0)(&100.0), "100");
        assert_eq!(tick_formatter(0.02)(&0.0125), "0.0125");
        assert_eq!(tick_formatter(1e-5)(&2e-6), "2.00e-6");
    }

    #[test]
    fn flat_and_single_point_series_get_a_visible_range() {
        let (x, y) = bounds([(3.0, 5.0)].iter()).unwrap();
        assert!(x.start < 3.0 && x.end > 3.0 && y.start < 5.0 && y.end > 5.0);
        assert!(bounds(std::iter::empty()).is_none());
    }

    #[test]
    fn row_labels_sit_left_of_their_rows() {
        // Two rows of two 4x4 white tiles (black padding).
        let images = vec![255u8; 4 * 16];
        let spec = data::images::GridSpec {
            nrow: 2,
            scale: 4,
            ..Default::default()
        };
        let grid = data::images::make_grid(&images, [4, 1, 4, 4], &spec).unwrap();
        let (w, h, rgb) = label_rows(
            &grid,
            &["cat".into(), "a very long class name indeed".into()],
        )
        .unwrap();
        assert_eq!(h as usize, grid.height);
        let label_w = w as usize - grid.width;
        assert!(
            label_w > 10 && label_w <= MAX_LABEL_WIDTH as usize,
            "{label_w}"
        );
        // The grid is copied beside the labels: its first pixel is padding (black).
        assert_eq!(&rgb[label_w * 3..label_w * 3 + 3], &[0, 0, 0]);
        // Each row's label puts dark pixels in the label column of that row only.
        let dark_rows: Vec<usize> = (0..h as usize)
            .filter(|&y| (0..label_w).any(|x| rgb[(y * w as usize + x) * 3] < 128))
            .collect();
        let cell_h = grid.cells[2].y - grid.cells[0].y;
        assert!(
            dark_rows.iter().any(|&y| y < grid.cells[0].y + cell_h),
            "{dark_rows:?}"
        );
        assert!(
            dark_rows.iter().any(|&y| y >= grid.cells[2].y),
            "{dark_rows:?}"
        );
    }

    #[test]
    fn fit_text_shortens_with_an_ellipsis() {
        let width = |t: &str| Ok::<u32, ()>(t.chars().count() as u32 * 10);
        assert_eq!(fit_text("cat", 30, width).unwrap(), "cat");
        assert_eq!(fit_text("aquarium_fish", 50, width).unwrap(), "aqua…");
        assert_eq!(fit_text("x", 0, width).unwrap(), "");
    }
}
