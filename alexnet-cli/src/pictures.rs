//! Pictures: the training curves (loss and error per epoch) and the first layer's
//! filters as a grid of colour patches, the paper's Figure 3.

use std::path::Path;
use std::sync::OnceLock;

use alexnet::runtime::train::BatchStats;
use image::RgbImage;
use plotters::prelude::*;

use crate::AnyError;

/// One epoch of a run's history.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Epoch {
    pub epoch: u64,
    /// Training loss and top-1, top-5 error (NaN when unknown).
    pub train: [f64; 3],
    /// Validation loss and top-1, top-5 error (NaN without a validation set).
    pub val: [f64; 3],
    pub lr: f32,
}

impl Epoch {
    pub fn new(epoch: u64, train: Option<&BatchStats>, val: Option<&BatchStats>, lr: f32) -> Self {
        let row = |s: Option<&BatchStats>| {
            s.map_or([f64::NAN; 3], |s| [s.loss, s.top1_error(), s.top5_error()])
        };
        Epoch {
            epoch,
            train: row(train),
            val: row(val),
            lr,
        }
    }
}

/// The history as one line per epoch (kept in the training state's metadata).
pub fn format_history(h: &[Epoch]) -> String {
    h.iter()
        .map(|e| {
            let v: Vec<String> = e
                .train
                .iter()
                .chain(&e.val)
                .map(|x| format!("{x:?}"))
                .collect();
            format!("{} {} {:?}", e.epoch, v.join(" "), e.lr)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads [`format_history`] back; lines that do not parse are dropped.
pub fn parse_history(s: &str) -> Vec<Epoch> {
    s.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 8 {
                return None;
            }
            let n = |i: usize| f[i].parse::<f64>().ok();
            Some(Epoch {
                epoch: f[0].parse().ok()?,
                train: [n(1)?, n(2)?, n(3)?],
                val: [n(4)?, n(5)?, n(6)?],
                lr: f[7].parse().ok()?,
            })
        })
        .collect()
}

/// Registers a system sans-serif font with plotters, once; false when none is found (the
/// pictures are then drawn without text). `ALEXNET_FONT` names a TrueType file to use.
fn font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = std::env::var("ALEXNET_FONT").into_iter().chain(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
                "/System/Library/Fonts/Supplemental/Arial.ttf",
                "/Library/Fonts/Arial.ttf",
                "C:\\Windows\\Fonts\\arial.ttf",
            ]
            .map(String::from),
        );
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // Registered fonts live as long as the program.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// A curve: its name, colour, column (loss, top-1, top-5) and whether it is validation.
type Series = (&'static str, RGBColor, usize, bool);

/// Writes `path` (PNG, atomically): loss on the left, top-1 and top-5 error on the right,
/// per epoch, training and validation.
pub fn curves(history: &[Epoch], title: &str, path: &Path) -> Result<(), AnyError> {
    let (w, h) = (1100u32, 460u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let text = font();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = if text {
            root.titled(title, ("sans-serif", 22))?
        } else {
            root
        };
        let (left, right) = root.split_horizontally(w / 2);
        let last = history.last().map_or(1, |e| e.epoch).max(1) as f64;
        let x_range = 0.5..last + 0.5;
        let finite = |v: f64| v.is_finite().then_some(v);
        let max_loss = history
            .iter()
            .flat_map(|e| [e.train[0], e.val[0]])
            .filter_map(finite)
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.1;
        // Area, axis label, top of the axis, factor on the values, curves.
        let panels: [(_, _, _, f64, Vec<Series>); 2] = [
            (
                &left,
                "loss (cross-entropy)",
                max_loss,
                1.0,
                vec![("training", BLUE, 0, false), ("validation", RED, 0, true)],
            ),
            (
                &right,
                "error (%)",
                100.0,
                100.0,
                vec![
                    ("training top-1", BLUE, 1, false),
                    ("validation top-1", RED, 1, true),
                    ("validation top-5", RGBColor(0, 140, 0), 2, true),
                ],
            ),
        ];
        for (area, label, top, scale, series) in panels {
            let mut builder = ChartBuilder::on(area);
            builder.margin(12);
            if text {
                builder.x_label_area_size(40).y_label_area_size(56);
            }
            let mut chart = builder.build_cartesian_2d(x_range.clone(), 0.0..top)?;
            let mut mesh = chart.configure_mesh();
            let epoch_label = |x: &f64| format!("{x:.0}");
            if text {
                mesh.x_desc("epoch")
                    .y_desc(label)
                    .x_labels((last as usize).clamp(1, 12))
                    .x_label_formatter(&epoch_label)
                    .label_style(("sans-serif", 14));
            } else {
                mesh.x_labels(0).y_labels(0);
            }
            mesh.draw()?;
            for (name, colour, column, val) in series {
                let points: Vec<(f64, f64)> = history
                    .iter()
                    .filter_map(|e| {
                        let v = if val { e.val[column] } else { e.train[column] };
                        finite(v).map(|v| (e.epoch as f64, v * scale))
                    })
                    .collect();
                if points.is_empty() {
                    continue;
                }
                let style = colour.stroke_width(2);
                let drawn = chart.draw_series(LineSeries::new(points.clone(), style))?;
                if text {
                    drawn.label(name).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                    });
                }
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
            }
            if text {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 14))
                    .draw()?;
            }
        }
        root.present()?;
    }
    let img = RgbImage::from_raw(w, h, buf).ok_or("plot buffer has the wrong size")?;
    save_png(&img, path)
}

/// Writes a PNG atomically (encoded in memory, then `weights::write_atomic`).
pub fn save_png(img: &RgbImage, path: &Path) -> Result<(), AnyError> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    alexnet::runtime::weights::write_atomic(path, &bytes)?;
    Ok(())
}

/// The first layer's filters (`[k, c, kh, kw]`, c = 3 or 1) as a grid of patches, each
/// scaled on its own so that 0 is mid-grey and its largest magnitude is black or full
/// colour, magnified `zoom` times. The filters of each of `towers` towers fill their own
/// block of rows, as in the paper's Figure 3 (GPU 1's above GPU 2's).
pub fn filter_grid(w: &[f32], shape: [usize; 4], towers: usize, zoom: usize) -> RgbImage {
    let [k, c, kh, kw] = shape;
    let towers = towers.max(1);
    let per_tower = k / towers;
    let cols = grid_columns(per_tower);
    let rows = per_tower.div_ceil(cols);
    let (gap, tower_gap) = (GAP, 10usize);
    let (pw, ph) = (kw * zoom, kh * zoom);
    let width = grid_width(per_tower, kw, zoom);
    let height = towers * (rows * (ph + gap) + gap) + (towers - 1) * tower_gap;
    let mut img = RgbImage::from_pixel(width as u32, height as u32, image::Rgb([255, 255, 255]));
    for f in 0..k {
        let (t, i) = (f / per_tower, f % per_tower);
        let (row, col) = (i / cols, i % cols);
        let x0 = gap + col * (pw + gap);
        let y0 = t * (rows * (ph + gap) + gap + tower_gap) + gap + row * (ph + gap);
        let filt = &w[f * c * kh * kw..(f + 1) * c * kh * kw];
        let max = filt.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let byte = |v: f32| ((0.5 + 0.5 * v / max) * 255.0).round().clamp(0.0, 255.0) as u8;
        for y in 0..ph {
            for x in 0..pw {
                let p = (y / zoom) * kw + x / zoom;
                let ch = |ci: usize| byte(filt[ci.min(c - 1) * kh * kw + p]);
                img.put_pixel(
                    (x0 + x) as u32,
                    (y0 + y) as u32,
                    image::Rgb([ch(0), ch(1), ch(2)]),
                );
            }
        }
    }
    img
}

/// Pixels between the filters of [`filter_grid`].
const GAP: usize = 2;

/// The columns of [`filter_grid`]: up to 16 filters a row.
fn grid_columns(per_tower: usize) -> usize {
    per_tower.clamp(1, 16)
}

/// The width of [`filter_grid`]'s image of `per_tower` filters `kw` weights wide.
fn grid_width(per_tower: usize, kw: usize, zoom: usize) -> usize {
    grid_columns(per_tower) * (kw * zoom + GAP) + GAP
}

/// The image width [`filter_zoom`] aims at: large enough to see the filters.
const MIN_FILTERS_WIDTH: usize = 800;

/// The zoom (pixels per weight) `filters` draws at unless told: the smallest that makes
/// [`filter_grid`]'s image of filters `[k, c, kh, kw]` in `towers` towers at least
/// [`MIN_FILTERS_WIDTH`] pixels wide and each filter at least 40 pixels tall, at most 64.
pub fn filter_zoom(shape: [usize; 4], towers: usize) -> usize {
    let [k, _, kh, kw] = shape;
    let per_tower = k / towers.max(1);
    let tall = 40usize.div_ceil(kh.max(1));
    (tall..64)
        .find(|&z| grid_width(per_tower, kw.max(1), z) >= MIN_FILTERS_WIDTH)
        .unwrap_or(64)
        .clamp(1, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_zoom_makes_filter_grids_800_pixels_wide() {
        // The small net's 16 5x5 filters in two towers: 8 a row, 20 pixels per weight.
        assert_eq!(filter_zoom([16, 3, 5, 5], 2), 20);
        assert_eq!(grid_width(8, 5, 20), 818);
        assert_eq!(grid_width(8, 5, 19), 778);
        // The paper's 96 11x11 filters in two towers (16 a row) and torchvision's 64.
        for (shape, towers) in [([96, 3, 11, 11], 2), ([64, 3, 11, 11], 1)] {
            let z = filter_zoom(shape, towers);
            assert_eq!(z, 5, "{shape:?}");
            assert!(grid_width(16, 11, z) >= 800 && grid_width(16, 11, z - 1) < 800);
        }
        // One 1x1 filter cannot reach 800 pixels under the largest zoom.
        assert_eq!(filter_zoom([1, 3, 1, 1], 1), 64);
    }

    #[test]
    fn history_round_trips() {
        let h = vec![
            Epoch {
                epoch: 1,
                train: [2.0, 0.5, 0.25],
                val: [f64::NAN; 3],
                lr: 0.01,
            },
            Epoch {
                epoch: 2,
                train: [1.5, 0.4, 0.2],
                val: [1.25, 0.375, 0.125],
                lr: 0.001,
            },
        ];
        let back = parse_history(&format_history(&h));
        assert_eq!(back.len(), 2);
        assert_eq!(back[1], h[1]);
        assert!(back[0].val[0].is_nan());
    }

    #[test]
    fn filter_grid_places_and_scales_each_filter() {
        // Two towers of two 1x1 RGB filters each: per-filter scaling maps the largest
        // magnitude to 0 or 255, zero to mid-grey.
        let w = [1.0, 0.0, -1.0, 0.5, 0.5, 0.0, 2.0, -2.0, 1.0, 0.0, 0.0, 0.0];
        let img = filter_grid(&w, [4, 3, 1, 1], 2, 3);
        assert_eq!(img.dimensions(), (2 * 5 + 2, 2 * (5 + 2) + 10));
        assert_eq!(img.get_pixel(2, 2).0, [255, 128, 0]);
        assert_eq!(img.get_pixel(7, 4).0, [255, 255, 128]);
        assert_eq!(img.get_pixel(2 + 2, 7 + 10 + 2).0, [255, 0, 191]);
        assert_eq!(img.get_pixel(7, 19).0, [128, 128, 128]);
    }
}
