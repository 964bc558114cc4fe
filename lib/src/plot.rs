//! Figures: training curves (raw and smoothed, log axis, validation points, several
//! runs overlaid), heatmaps with labelled axes and a colour bar (one attention head
//! with token labels, layers × heads scores, the logit lens), a layers × heads grid
//! of attention maps, and parallel coordinates (a sweep's hyperparameters and scores). Each figure is rendered twice from the same drawing code: a PNG at 2×
//! pixel density and an SVG.
//!
//! Pure Rust through `plotters`, with DejaVu Sans embedded so that no system font is
//! needed. PNGs are encoded with fast compression: a 10,000-point loss plot renders
//! and encodes in a few milliseconds.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

use crate::error::{invalid, Error, Result};

/// A rendered figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// PNG bytes, `2 × width` by `2 × height` pixels.
    pub png: Vec<u8>,
    /// The same figure as SVG.
    pub svg: String,
    /// Width in CSS pixels.
    pub width: u32,
    /// Height in CSS pixels.
    pub height: u32,
    /// A heatmap's cells and labels, for front ends that draw it as text.
    pub cells: Option<HeatmapCells>,
}

/// A heatmap as text front ends draw it (a terminal without inline images): each
/// cell's colour and every label, as the figure has them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeatmapCells {
    /// The figure's title.
    pub title: String,
    /// What the rows are (`query`, `layer`).
    pub row_axis: String,
    /// What the columns are (`key`, `position`).
    pub column_axis: String,
    /// One label per row.
    pub rows: Vec<String>,
    /// One label per column.
    pub columns: Vec<String>,
    /// `[row][column]` colours as `#rrggbb`; empty for a blank cell.
    pub colours: Vec<Vec<String>>,
    /// `[row][column]` how strongly each cell is coloured, 0 to 1 (the value's place on
    /// a sequential scale, its magnitude on a diverging one), for drawing without
    /// colour; `None` for a blank cell.
    pub intensity: Vec<Vec<Option<f64>>>,
    /// What the colours mean: a few values of the colour bar, highest first, with
    /// their colours.
    pub key: Vec<(String, String)>,
    /// The colour bar's caption.
    pub legend: String,
}

/// One line on a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points in x order.
    pub points: Vec<(f64, f64)>,
    /// Drawn as markers rather than a line (validation points).
    pub markers: bool,
    /// Drawn pale, as raw values behind a smoothed line of the same name.
    pub faint: bool,
}

/// What a line chart shows.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// Title above the chart.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// The lines, one colour per name, each named in the legend: `NAME (raw)` for faint
    /// ones, `NAME (smoothed)` for the line over them, `NAME (validation)` for markers.
    pub series: Vec<Series>,
}

const WIDTH: u32 = 800;
const HEIGHT: u32 = 400;
const PIXEL_DENSITY: u32 = 2;
const FONT: &str = "sans-serif";

fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        let regular = plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf"));
        let bold = plotters::style::register_font(FONT, FontStyle::Bold, include_bytes!("../assets/DejaVuSans-Bold.ttf"));
        assert!(regular.is_ok() && bold.is_ok(), "the embedded fonts parse");
    });
}

/// Colours that stay distinct for the first runs (matplotlib's tab10).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Something drawn the same way on any backend; `scale` (2 for the PNG, 1 for the
/// SVG) sizes fonts and strokes.
trait Drawing {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, scale: f64) -> std::result::Result<(), String>;
}

/// Renders a drawing to PNG and SVG.
fn render(width: u32, height: u32, drawing: &impl Drawing) -> Result<Figure> {
    register_fonts();
    let (pw, ph) = (width * PIXEL_DENSITY, height * PIXEL_DENSITY);
    let mut pixels = vec![255u8; (pw * ph * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (pw, ph)).into_drawing_area();
        drawing.draw(&root, f64::from(PIXEL_DENSITY)).map_err(|e| Error::Invalid(format!("drawing the figure: {e}")))?;
        root.present().map_err(|e| Error::Invalid(format!("drawing the figure: {e}")))?;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        drawing.draw(&root, 1.0).map_err(|e| Error::Invalid(format!("drawing the figure: {e}")))?;
        root.present().map_err(|e| Error::Invalid(format!("drawing the figure: {e}")))?;
    }
    Ok(Figure { png: encode_png(&pixels, pw, ph)?, svg, width, height, cells: None })
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(rgb.len() / 8);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Fast compression: a few times larger than the best, and an order of magnitude quicker.
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(|e| Error::Invalid(format!("PNG: {e}")))?;
    writer.write_image_data(rgb).map_err(|e| Error::Invalid(format!("PNG: {e}")))?;
    writer.finish().map_err(|e| Error::Invalid(format!("PNG: {e}")))?;
    Ok(out)
}

/// Keeps about `max` points, evenly spaced, always with the last: wide strokes over
/// more points than pixel columns only blur.
fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let stride = points.len().div_ceil(max);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(stride).copied().collect();
    if out.last() != points.last() {
        out.push(*points.last().expect("not empty"));
    }
    out
}

/// Exponential moving average with bias correction (as TensorBoard and Adam's
/// moments do), so the first points are not pulled towards zero.
pub fn ema(values: &[f64], alpha: f64) -> Vec<f64> {
    let mut average = 0.0;
    let mut weight = 1.0;
    values
        .iter()
        .map(|&v| {
            average = alpha * average + (1.0 - alpha) * v;
            weight *= alpha;
            average / (1.0 - weight)
        })
        .collect()
}

/// Draws a line chart.
pub fn line_chart(chart: &LineChart) -> Result<Figure> {
    let all: Vec<(f64, f64)> =
        chart.series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.log_y || *y > 0.0)).collect();
    if all.is_empty() {
        return invalid!("nothing to plot yet: train a few steps first");
    }
    let transform = |y: f64| if chart.log_y { y.log10() } else { y };
    let transform_x = |x: f64| if chart.log_x { x.log10() } else { x };
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(transform_x(*x)), b.max(transform_x(*x))));
    let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(transform(*y)), b.max(transform(*y))));
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    if y1 <= y0 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let names: Vec<&str> = {
        let mut n: Vec<&str> = chart.series.iter().map(|s| s.name.as_str()).collect();
        n.dedup();
        n
    };
    let series: Vec<(usize, Series)> = chart
        .series
        .iter()
        .map(|s| {
            let color = names.iter().position(|n| *n == s.name).unwrap_or(0);
            let points = thin(&s.points, (WIDTH * PIXEL_DENSITY) as usize)
                .into_iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.log_y || *y > 0.0))
                .map(|(x, y)| (x, transform(y)))
                .collect();
            (color, Series { points, ..s.clone() })
        })
        .collect();
    render(WIDTH, HEIGHT, &LineDrawing { chart, series, x: x0..x1, y: y0..y1 })
}

struct LineDrawing<'a> {
    chart: &'a LineChart,
    series: Vec<(usize, Series)>,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
}

impl Drawing for LineDrawing<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, scale: f64) -> std::result::Result<(), String> {
        let (chart, log_x, log_y) = (self.chart, self.chart.log_x, self.chart.log_y);
        let has_raw = |name: &str| self.series.iter().any(|(_, s)| s.faint && s.name == name);
        let px = |v: f64| (v * scale) as u32;
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut c = ChartBuilder::on(root)
            .caption(&chart.title, (FONT, 16.0 * scale, FontStyle::Bold).into_font())
            .margin(px(10.0))
            .x_label_area_size(px(36.0))
            .y_label_area_size(px(60.0))
            .build_cartesian_2d(self.x.clone(), self.y.clone())
            .map_err(|e| e.to_string())?;
        let label_font = (FONT, 12.0 * scale).into_font();
        c.configure_mesh()
            .x_desc(&chart.x_label)
            .y_desc(&chart.y_label)
            .label_style(label_font.clone())
            .axis_desc_style(label_font.clone())
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(210, 210, 210))
            .y_label_formatter(&|v| if log_y { format_number(10f64.powf(*v)) } else { format_number(*v) })
            .x_label_formatter(&|v| if log_x { format_number(10f64.powf(*v)) } else { format_number(*v) })
            .draw()
            .map_err(|e| e.to_string())?;
        let mut named_raw = vec![];
        for (color, s) in &self.series {
            let base = PALETTE[color % PALETTE.len()];
            if s.markers {
                let drawn = c.draw_series(s.points.iter().map(|p| Circle::new(*p, px(3.0), base.filled()))).map_err(|e| e.to_string())?;
                drawn.label(format!("{} (validation)", s.name)).legend(move |(x, y)| Circle::new((x + 8, y), 3, base.filled()));
            } else if s.faint {
                let style = ShapeStyle { color: base.mix(0.25), filled: false, stroke_width: px(1.0) };
                let drawn = c.draw_series(LineSeries::new(s.points.iter().copied(), style)).map_err(|e| e.to_string())?;
                // Raw values may come in several pieces; the legend names them once.
                if !named_raw.contains(&s.name) {
                    named_raw.push(s.name.clone());
                    drawn.label(format!("{} (raw)", s.name)).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], base.mix(0.25).stroke_width(2)));
                }
            } else {
                let style = ShapeStyle { color: base.to_rgba(), filled: false, stroke_width: px(1.5) };
                let drawn = c.draw_series(LineSeries::new(s.points.iter().copied(), style)).map_err(|e| e.to_string())?;
                let label = if has_raw(&s.name) { format!("{} (smoothed)", s.name) } else { s.name.clone() };
                drawn.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], base.stroke_width(2)));
            }
        }
        c.configure_series_labels()
            .label_font(label_font)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// A number for an axis label: few digits, scientific when small or large.
fn format_number(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// How a heatmap maps values to colours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColourScale {
    /// Viridis from `lo` to `hi` (probabilities, scores).
    Sequential {
        /// The value drawn darkest.
        lo: f64,
        /// The value drawn brightest.
        hi: f64,
    },
    /// Blue through white to red, white at zero, saturated at `±limit` (effects that can
    /// go either way).
    Diverging {
        /// The magnitude drawn fully saturated.
        limit: f64,
    },
}

impl ColourScale {
    /// A diverging scale saturating at the largest magnitude in `values`.
    pub fn diverging_for(values: &[Vec<f64>]) -> Self {
        let limit = values.iter().flatten().filter(|v| v.is_finite()).fold(0.0f64, |m, v| m.max(v.abs()));
        ColourScale::Diverging { limit: if limit > 0.0 { limit } else { 1.0 } }
    }

    /// A sequential scale over the range of `values`.
    pub fn sequential_for(values: &[Vec<f64>]) -> Self {
        let finite = values.iter().flatten().copied().filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo < hi {
            ColourScale::Sequential { lo, hi }
        } else {
            ColourScale::Sequential { lo: lo.min(0.0), hi: lo.max(0.0) + 1.0 }
        }
    }

    fn colour(self, v: f64) -> RGBColor {
        match self {
            ColourScale::Sequential { lo, hi } => ViridisRGB::get_color_normalized(v as f32, lo as f32, hi as f32),
            ColourScale::Diverging { limit } => {
                let t = (v / limit).clamp(-1.0, 1.0);
                let fade = |c: u8| (255.0 - (255.0 - f64::from(c)) * t.abs()) as u8;
                let (r, g, b) = if t >= 0.0 { (178, 24, 43) } else { (33, 102, 172) };
                RGBColor(fade(r), fade(g), fade(b))
            }
        }
    }

    fn range(self) -> (f64, f64) {
        match self {
            ColourScale::Sequential { lo, hi } => (lo, hi),
            ColourScale::Diverging { limit } => (-limit, limit),
        }
    }
}

/// What a heatmap shows: a matrix with labelled rows and columns, a colour bar, and
/// optionally a short text in each cell (the logit lens's top tokens).
#[derive(Debug, Clone)]
pub struct Heatmap<'a> {
    /// Title above the map.
    pub title: &'a str,
    /// `[row][column]`; NaN cells are left blank (grey under a cell text).
    pub values: &'a [Vec<f64>],
    /// One label per row (drawn left).
    pub rows: &'a [String],
    /// One label per column (drawn above, upright).
    pub columns: &'a [String],
    /// What the rows are (`layer`, `query`).
    pub row_axis: &'a str,
    /// What the columns are (`head`, `key`, `position`).
    pub column_axis: &'a str,
    /// Colours.
    pub scale: ColourScale,
    /// The colour bar's caption (`probability`, `Δ loss`).
    pub legend: &'a str,
    /// Text written in each cell, when the cells are large enough.
    pub cell_text: Option<&'a [Vec<String>]>,
}

/// Draws a heatmap; the error says what does not fit together.
pub fn heatmap(map: &Heatmap) -> Result<Figure> {
    let (n_rows, n_cols) = (map.values.len(), map.values.first().map_or(0, Vec::len));
    if n_rows == 0 || n_cols == 0 || map.values.iter().any(|r| r.len() != n_cols) || map.rows.len() != n_rows || map.columns.len() != n_cols {
        return invalid!("a heatmap needs a non-empty rectangular matrix with one label per row and per column");
    }
    if map.cell_text.is_some_and(|t| t.len() != n_rows || t.iter().any(|r| r.len() != n_cols)) {
        return invalid!("a heatmap's cell texts must match its matrix");
    }
    let longest = |labels: &[String]| 7 * labels.iter().map(|t| t.chars().count().min(LABEL_CHARS)).max().unwrap_or(1) as u32;
    let cell = if map.cell_text.is_some() { 56 } else { (560 / n_rows.max(n_cols) as u32).clamp(10, 40) };
    let (cell_w, cell_h) = (cell, if map.cell_text.is_some() { 22 } else { cell });
    let left = 24 + longest(map.rows);
    let top = 34 + longest(map.columns) + 16;
    let title_width = 16 + 9 * map.title.chars().count() as u32;
    let width = (left + cell_w * n_cols as u32 + 110).max(title_width);
    let height = (top + cell_h * n_rows as u32 + 30).max(top + 160);
    let mut figure = render(width, height, &HeatmapDrawing { map, cell_w, cell_h, left, top })?;
    figure.cells = Some(heatmap_cells(map));
    Ok(figure)
}

fn heatmap_cells(map: &Heatmap) -> HeatmapCells {
    let hex = |c: RGBColor| format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2);
    let colours = map.values.iter().map(|row| row.iter().map(|&v| if v.is_finite() { hex(map.scale.colour(v)) } else { String::new() }).collect()).collect();
    let (lo, hi) = map.scale.range();
    let strength = |v: f64| match map.scale {
        ColourScale::Sequential { .. } if hi > lo => ((v - lo) / (hi - lo)).clamp(0.0, 1.0),
        ColourScale::Sequential { .. } => 0.5,
        ColourScale::Diverging { limit } => (v.abs() / limit).clamp(0.0, 1.0),
    };
    let intensity = map.values.iter().map(|row| row.iter().map(|&v| v.is_finite().then(|| strength(v))).collect()).collect();
    let key = (0..5).map(|k| hi - (hi - lo) * f64::from(k) / 4.0).map(|v| (format_number(v), hex(map.scale.colour(v)))).collect();
    HeatmapCells {
        title: map.title.to_string(),
        row_axis: map.row_axis.to_string(),
        column_axis: map.column_axis.to_string(),
        rows: map.rows.to_vec(),
        columns: map.columns.to_vec(),
        colours,
        intensity,
        key,
        legend: map.legend.to_string(),
    }
}

/// Labels longer than this many characters are cut.
const LABEL_CHARS: usize = 12;

struct HeatmapDrawing<'a> {
    map: &'a Heatmap<'a>,
    cell_w: u32,
    cell_h: u32,
    left: u32,
    top: u32,
}

impl Drawing for HeatmapDrawing<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, scale: f64) -> std::result::Result<(), String> {
        let m = self.map;
        let short = |t: &String| t.chars().take(LABEL_CHARS).collect::<String>();
        let px = |v: f64| (v * scale) as i32;
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let font = (FONT, 11.0 * scale).into_font();
        root.draw(&Text::new(m.title.to_string(), (px(8.0), px(6.0)), (FONT, 14.0 * scale, FontStyle::Bold).into_font())).map_err(e)?;
        let (left, top) = (px(f64::from(self.left)), px(f64::from(self.top)));
        let (cw, ch) = (px(f64::from(self.cell_w)), px(f64::from(self.cell_h)));
        let axes = format!("{} ↓   {} →", m.row_axis, m.column_axis);
        root.draw(&Text::new(axes, (px(8.0), px(24.0)), font.clone())).map_err(e)?;
        for (i, row) in m.values.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                // A cell without a value is blank, or pale grey under its text (the logit
                // lens's last position, which has no next token to score).
                if !v.is_finite() && m.cell_text.is_none() {
                    continue;
                }
                let (x, y) = (left + j as i32 * cw, top + i as i32 * ch);
                let colour = if v.is_finite() { m.scale.colour(v) } else { RGBColor(235, 235, 235) };
                root.draw(&Rectangle::new([(x, y), (x + cw, y + ch)], colour.filled())).map_err(e)?;
                if let Some(text) = m.cell_text {
                    let dark = f64::from(colour.0) * 0.299 + f64::from(colour.1) * 0.587 + f64::from(colour.2) * 0.114 < 140.0;
                    let ink = if dark { WHITE } else { BLACK };
                    let word: String = text[i][j].chars().take(7).collect();
                    root.draw(&Text::new(word, (x + px(3.0), y + px(5.0)), font.clone().color(&ink))).map_err(e)?;
                }
            }
        }
        for (i, t) in m.rows.iter().enumerate() {
            let y = top + i as i32 * ch + ch / 2 - px(6.0);
            root.draw(&Text::new(short(t), (px(8.0), y), font.clone())).map_err(e)?;
        }
        let upright = font.clone().transform(FontTransform::Rotate270);
        for (j, t) in m.columns.iter().enumerate() {
            let x = left + j as i32 * cw + cw / 2 - px(6.0);
            root.draw(&Text::new(short(t), (x, top - px(4.0)), upright.clone())).map_err(e)?;
        }
        colour_bar(root, m.scale, m.legend, (left + cw * m.values[0].len() as i32 + px(16.0), top), scale)
    }
}

/// A colour bar at `(x, top)`: what the colours of `scale` mean, its ends and middle
/// labelled, `legend` below.
fn colour_bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    colours: ColourScale,
    legend: &str,
    (x, top): (i32, i32),
    scale: f64,
) -> std::result::Result<(), String> {
    let px = |v: f64| (v * scale) as i32;
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let font = (FONT, 11.0 * scale).into_font();
    let height = px(120.0);
    let (lo, hi) = colours.range();
    let steps = 60;
    for k in 0..steps {
        let v = hi - (hi - lo) * f64::from(k) / f64::from(steps - 1);
        let y = top + height * k / steps;
        root.draw(&Rectangle::new([(x, y), (x + px(14.0), y + height / steps + 1)], colours.colour(v).filled())).map_err(e)?;
    }
    for (v, y) in [(hi, top), ((lo + hi) / 2.0, top + height / 2), (lo, top + height)] {
        root.draw(&Text::new(format_number(v), (x + px(18.0), y - px(6.0)), font.clone())).map_err(e)?;
    }
    root.draw(&Text::new(legend.to_string(), (x, top + height + px(10.0)), font)).map_err(e)?;
    Ok(())
}

/// One vertical axis of a parallel-coordinates plot.
#[derive(Debug, Clone)]
pub struct Axis {
    /// Its label.
    pub name: String,
    /// Spaced logarithmically (positive values only).
    pub log: bool,
}

/// What a parallel-coordinates plot shows: one vertical axis per coordinate and one line
/// per row across them, coloured by its last coordinate (a sweep's score: the lowest
/// brightest). Values that do not all read as numbers make a categorical axis.
#[derive(Debug, Clone)]
pub struct ParallelCoordinates {
    /// Title above the plot.
    pub title: String,
    /// The axes, left to right; the last colours the lines.
    pub axes: Vec<Axis>,
    /// One value per axis in each row.
    pub rows: Vec<Vec<String>>,
}

/// Where each value of one axis sits, from 0 (bottom) to 1 (top), and the labels of its
/// ends (or of each category).
fn axis_positions(axis: &Axis, values: &[&str]) -> (Vec<f64>, Vec<(f64, String)>) {
    let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite() && (!axis.log || *x > 0.0))).collect();
    match numbers {
        Some(xs) if !xs.is_empty() => {
            let t = |x: f64| if axis.log { x.log10() } else { x };
            let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(t(x)), b.max(t(x))));
            let width = if hi > lo { hi - lo } else { 1.0 };
            let at = xs.iter().map(|&x| if hi > lo { (t(x) - lo) / width } else { 0.5 }).collect();
            let back = |v: f64| if axis.log { 10f64.powf(v) } else { v };
            let ticks = if hi > lo { vec![(0.0, format_number(back(lo))), (1.0, format_number(back(hi)))] } else { vec![(0.5, format_number(back(lo)))] };
            (at, ticks)
        }
        _ => {
            let mut categories: Vec<&str> = values.to_vec();
            categories.sort_unstable();
            categories.dedup();
            let place = |i: usize| if categories.len() > 1 { i as f64 / (categories.len() - 1) as f64 } else { 0.5 };
            let at = values.iter().map(|v| place(categories.iter().position(|c| c == v).expect("listed"))).collect();
            (at, categories.iter().enumerate().map(|(i, c)| (place(i), c.to_string())).collect())
        }
    }
}

/// Hyperparameters against score: a line per trial across an axis per hyperparameter.
pub fn parallel_coordinates(plot: &ParallelCoordinates) -> Result<Figure> {
    if plot.axes.len() < 2 || plot.rows.is_empty() || plot.rows.iter().any(|r| r.len() != plot.axes.len()) {
        return invalid!("parallel coordinates need two axes or more and a value for each in every row");
    }
    let columns: Vec<(Vec<f64>, Vec<(f64, String)>)> =
        plot.axes.iter().enumerate().map(|(i, a)| axis_positions(a, &plot.rows.iter().map(|r| r[i].as_str()).collect::<Vec<_>>())).collect();
    let colour_by: Vec<f64> = plot.rows.iter().map(|r| r.last().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN)).collect();
    render(WIDTH, HEIGHT, &ParallelDrawing { plot, columns, colour_by })
}

struct ParallelDrawing<'a> {
    plot: &'a ParallelCoordinates,
    /// Each axis's positions of the rows' values, and its tick labels.
    columns: Vec<(Vec<f64>, Vec<(f64, String)>)>,
    colour_by: Vec<f64>,
}

impl Drawing for ParallelDrawing<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, scale: f64) -> std::result::Result<(), String> {
        let px = |v: f64| (v * scale) as i32;
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let (w, h) = root.dim_in_pixel();
        let (w, h) = (w as i32, h as i32);
        root.draw(&Text::new(self.plot.title.clone(), (px(12.0), px(8.0)), (FONT, 16.0 * scale, FontStyle::Bold).into_font())).map_err(e)?;
        let (left, right, top, bottom) = (px(70.0), w - px(70.0), px(44.0), h - px(44.0));
        let n = self.plot.axes.len() as i32;
        let x_of = |i: usize| left + (right - left) * i as i32 / (n - 1).max(1);
        let y_of = |at: f64| bottom - ((bottom - top) as f64 * at) as i32;
        // The lowest (best) score brightest, drawn last so that it lies on top.
        let finite: Vec<f64> = self.colour_by.iter().copied().filter(|v| v.is_finite()).collect();
        let (lo, hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let mut order: Vec<usize> = (0..self.colour_by.len()).collect();
        order.sort_by(|&a, &b| self.colour_by[b].total_cmp(&self.colour_by[a]));
        for row in order {
            let v = self.colour_by[row];
            let colour =
                if v.is_finite() && hi > lo { ViridisRGB::get_color_normalized((hi - v) as f32, 0.0, (hi - lo) as f32) } else { ViridisRGB::get_color(0.5) };
            let points: Vec<(i32, i32)> = self.columns.iter().enumerate().map(|(i, (at, _))| (x_of(i), y_of(at[row]))).collect();
            root.draw(&PathElement::new(points, ShapeStyle { color: colour.to_rgba(), filled: false, stroke_width: px(1.5) as u32 })).map_err(e)?;
        }
        let font = (FONT, 11.0 * scale).into_font();
        for (i, (axis, (_, ticks))) in self.plot.axes.iter().zip(&self.columns).enumerate() {
            let x = x_of(i);
            root.draw(&PathElement::new(
                vec![(x, top), (x, bottom)],
                ShapeStyle { color: RGBColor(90, 90, 90).to_rgba(), filled: false, stroke_width: px(1.0) as u32 },
            ))
            .map_err(e)?;
            let name = if axis.log { format!("{} (log)", axis.name) } else { axis.name.clone() };
            root.draw(&Text::new(name, (x - px(30.0), bottom + px(14.0)), (FONT, 12.0 * scale, FontStyle::Bold).into_font())).map_err(e)?;
            for (at, label) in ticks {
                root.draw(&Text::new(label.clone(), (x + px(4.0), y_of(*at) - px(6.0)), font.clone())).map_err(e)?;
            }
        }
        Ok(())
    }
}

/// One head's attention `(queries, keys)` as a heatmap with the tokens on both axes.
pub fn attention_map(probs: &[Vec<f64>], queries: &[String], keys: &[String], title: &str) -> Result<Figure> {
    if probs.len() != queries.len() || probs.iter().any(|row| row.len() != keys.len()) {
        return invalid!("an attention map needs one row per query token and one column per key token");
    }
    heatmap(&Heatmap {
        title,
        values: probs,
        rows: queries,
        columns: keys,
        row_axis: "query",
        column_axis: "key",
        scale: ColourScale::Sequential { lo: 0.0, hi: 1.0 },
        legend: "attention",
        cell_text: None,
    })
}

/// Every layer's and head's attention `[layer][head][query][key]` as a grid of small
/// maps, with a colour bar; up to 32 tokens a side, each layer's first map has the query
/// tokens beside it and the first layer's maps have the key tokens above them (the same
/// tokens for self-attention; a target's and a source's for cross-attention).
pub fn attention_grid(maps: &[Vec<Vec<Vec<f64>>>], queries: &[String], keys: &[String], title: &str) -> Result<Figure> {
    let layers = maps.len();
    let heads = maps.first().map_or(0, Vec::len);
    let (nq, nk) = (queries.len(), keys.len());
    let fits = maps.iter().flatten().all(|map| map.len() == nq && map.iter().all(|row| row.len() == nk));
    if layers == 0 || heads == 0 || nq == 0 || nk == 0 || !fits {
        return invalid!("no attention to draw, or not one row per query token and one column per key token");
    }
    let n = nq.max(nk);
    let labelled = n <= 32;
    let cell = if labelled { (96 / n as u32).max(12) } else { (96 / n as u32).max(1) };
    let tile = (cell * nk as u32, cell * nq as u32);
    let gap = 8;
    let longest = |tokens: &[String]| tokens.iter().map(|t| t.chars().count().min(LABEL_CHARS)).max().unwrap_or(1) as u32;
    let (row_labels, column_labels) = if labelled { (10 + 7 * longest(queries), 10 + 7 * longest(keys)) } else { (0, 0) };
    let (left, top) = (34 + row_labels, 40 + column_labels + 16);
    let width = (left + heads as u32 * (tile.0 + gap) + 90).max(16 + 9 * title.chars().count() as u32);
    let height = (top + layers as u32 * (tile.1 + gap) + 10).max(top + 170);
    render(width, height, &GridDrawing { maps, queries, keys, title, cell, tile, gap, left, top, labelled })
}

struct GridDrawing<'a> {
    maps: &'a [Vec<Vec<Vec<f64>>>],
    queries: &'a [String],
    keys: &'a [String],
    title: &'a str,
    cell: u32,
    /// A map's width and height.
    tile: (u32, u32),
    gap: u32,
    left: u32,
    top: u32,
    labelled: bool,
}

impl Drawing for GridDrawing<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, scale: f64) -> std::result::Result<(), String> {
        let ((tile_w, tile_h), gap) = ((f64::from(self.tile.0), f64::from(self.tile.1)), f64::from(self.gap));
        let px = |v: f64| (v * scale) as i32;
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let short = |t: &String| t.chars().take(LABEL_CHARS).collect::<String>();
        root.fill(&WHITE).map_err(e)?;
        let font = (FONT, 11.0 * scale).into_font();
        let upright = font.clone().transform(FontTransform::Rotate270);
        root.draw(&Text::new(self.title.to_string(), (px(8.0), px(4.0)), (FONT, 14.0 * scale, FontStyle::Bold).into_font())).map_err(e)?;
        root.draw(&Text::new("rows: queries, columns: keys".to_string(), (px(8.0), px(22.0)), font.clone())).map_err(e)?;
        let (left, top) = (f64::from(self.left), f64::from(self.top));
        let c = px(f64::from(self.cell));
        let colours = ColourScale::Sequential { lo: 0.0, hi: 1.0 };
        for (l, layer) in self.maps.iter().enumerate() {
            let y0 = px(top + l as f64 * (tile_h + gap));
            root.draw(&Text::new(format!("L{l}"), (px(4.0), y0 + px(tile_h / 2.0 - 6.0)), font.clone())).map_err(e)?;
            if self.labelled {
                for (i, t) in self.queries.iter().enumerate() {
                    root.draw(&Text::new(short(t), (px(30.0), y0 + i as i32 * c + c / 2 - px(6.0)), font.clone())).map_err(e)?;
                }
            }
            for (h, head) in layer.iter().enumerate() {
                let x0 = px(left + h as f64 * (tile_w + gap));
                if l == 0 {
                    root.draw(&Text::new(format!("H{h}"), (x0 + px(tile_w / 2.0 - 8.0), px(38.0)), font.clone())).map_err(e)?;
                    if self.labelled {
                        for (j, t) in self.keys.iter().enumerate() {
                            root.draw(&Text::new(short(t), (x0 + j as i32 * c + c / 2 - px(6.0), y0 - px(4.0)), upright.clone())).map_err(e)?;
                        }
                    }
                }
                for (i, row) in head.iter().enumerate() {
                    for (j, &p) in row.iter().enumerate() {
                        let (x, y) = (x0 + j as i32 * c, y0 + i as i32 * c);
                        root.draw(&Rectangle::new([(x, y), (x + c, y + c)], colours.colour(p).filled())).map_err(e)?;
                    }
                }
            }
        }
        let bar_x = px(left + self.maps[0].len() as f64 * (tile_w + gap) + 8.0);
        colour_bar(root, colours, "attention", (bar_x, px(top)), scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(png: &[u8]) -> (u32, u32) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let reader = decoder.read_info().expect("a valid PNG");
        let info = reader.info();
        (info.width, info.height)
    }

    #[test]
    fn line_chart_renders_png_at_twice_the_svg_size() {
        let points: Vec<(f64, f64)> = (1..=10_000).map(|i| (f64::from(i), 3.0 / f64::from(i).sqrt())).collect();
        let chart = LineChart {
            title: "loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            log_x: false,
            log_y: true,
            series: vec![
                Series { name: "main".into(), points: points.clone(), markers: false, faint: true },
                Series {
                    name: "main".into(),
                    points: ema(&points.iter().map(|p| p.1).collect::<Vec<_>>(), 0.9).into_iter().enumerate().map(|(i, y)| (i as f64 + 1.0, y)).collect(),
                    markers: false,
                    faint: false,
                },
                Series { name: "fork".into(), points: thin(&points, 50), markers: true, faint: false },
            ],
        };
        let f = line_chart(&chart).unwrap();
        assert_eq!(png_size(&f.png), (2 * f.width, 2 * f.height));
        let text = |t: &str| f.svg.contains(&format!("\n{t}\n</text>"));
        assert!(f.svg.starts_with("<svg") && text("fork (validation)"), "the legend names the runs");
        assert!(text("main (raw)") && text("main (smoothed)"), "and what each line is");
    }

    #[test]
    fn parallel_coordinates_place_numbers_logs_and_categories() {
        let log = Axis { name: "lr".into(), log: true };
        let (at, ticks) = axis_positions(&log, &["1e-4", "1e-3", "1e-2"]);
        assert!((at[1] - 0.5).abs() < 1e-12 && at[0] == 0.0 && at[2] == 1.0, "{at:?}");
        assert_eq!(ticks.len(), 2);
        let (at, ticks) = axis_positions(&Axis { name: "schedule".into(), log: false }, &["linear", "cosine", "linear"]);
        assert_eq!(at, vec![1.0, 0.0, 1.0]);
        assert_eq!(ticks.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(), ["cosine", "linear"]);
        let plot = ParallelCoordinates {
            title: "t".into(),
            axes: vec![log, Axis { name: "score".into(), log: false }],
            rows: vec![vec!["1e-4".into(), "0.5".into()], vec!["1e-2".into(), "0.2".into()]],
        };
        let figure = parallel_coordinates(&plot).unwrap();
        assert_eq!(png_size(&figure.png), (2 * WIDTH, 2 * HEIGHT));
        assert!(figure.svg.contains("lr (log)"));
        assert!(parallel_coordinates(&ParallelCoordinates { rows: vec![vec!["1".into()]], ..plot }).is_err());
    }

    #[test]
    fn ema_is_debiased() {
        let s = ema(&[2.0, 2.0, 2.0], 0.9);
        assert!(s.iter().all(|v| (v - 2.0).abs() < 1e-12), "{s:?}");
    }

    #[test]
    fn empty_chart_says_what_to_do() {
        let chart = LineChart { title: "t".into(), x_label: "x".into(), y_label: "y".into(), log_x: false, log_y: false, series: vec![] };
        assert!(line_chart(&chart).unwrap_err().to_string().contains("train a few steps"));
    }

    #[test]
    fn attention_figures_have_the_expected_size() {
        let probs = vec![vec![1.0, 0.0, 0.0], vec![0.5, 0.5, 0.0], vec![0.2, 0.3, 0.5]];
        let tokens: Vec<String> = ["the", "cat", "sat"].iter().map(|s| s.to_string()).collect();
        let f = attention_map(&probs, &tokens, &tokens, "layer 0, head 0").unwrap();
        assert_eq!(png_size(&f.png), (2 * f.width, 2 * f.height));
        let grid = attention_grid(&vec![vec![probs.clone(); 4]; 2], &tokens, &tokens, "all heads").unwrap();
        assert_eq!(png_size(&grid.png), (2 * grid.width, 2 * grid.height));
        assert!(grid.width > grid.height, "4 heads across, 2 layers down");
        let text = |svg: &str, t: &str| svg.contains(&format!("\n{t}\n</text>"));
        assert!(text(&grid.svg, "cat") && text(&grid.svg, "attention") && text(&grid.svg, "H3"), "token labels, the colour bar's caption, head labels");
        assert!(text(&f.svg, "attention"), "the single map has the colour bar too");
        // Cross-attention: 2 target tokens (rows) over the 3 source tokens (columns).
        let source = tokens.clone();
        let target: Vec<String> = ["=", "a"].iter().map(|s| s.to_string()).collect();
        let cross = vec![vec![0.2, 0.3, 0.5], vec![0.9, 0.05, 0.05]];
        let f = attention_map(&cross, &target, &source, "cross").unwrap();
        assert!(text(&f.svg, "cat") && text(&f.svg, "="), "source tokens label the columns, target tokens the rows");
        let grid = attention_grid(&vec![vec![cross.clone(); 2]], &target, &source, "cross").unwrap();
        assert!(text(&grid.svg, "sat") && text(&grid.svg, "="));
        assert!(attention_map(&cross, &source, &target, "swapped").is_err(), "rows and columns must match the tokens");
    }
}
