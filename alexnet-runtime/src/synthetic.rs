//! A generated, learnable image data set, so that training needs no download.
//!
//! Each class is a kind of shape (disk, square, triangle, ...) drawn in a random colour, at
//! a random position and size, on a low-contrast textured background of another random
//! colour. Colours carry no information about the class; only the shape does.
//!
//! Every image is a pure function of `(seed, index)`: image `index` is drawn from its own
//! [`StdRng`] seeded with a splitmix64 mix of the two, so images can be generated
//! independently, in any order and in parallel ([`Synthetic::batch`] uses rayon).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The shape kinds, in class order: class `i` is kind `i`.
const KINDS: [&str; 12] = [
    "disk", "square", "triangle", "plus", "ring", "hbar", "vbar", "diamond", "x", "checker",
    "frame", "corner",
];

/// The largest image, in values (`c * h * w`), that [`Synthetic::new`] accepts: 1 GiB of f32.
const MAX_IMAGE_VALUES: usize = 1 << 28;

/// Smallest and largest shape size, as a fraction of the image's short side.
const SIZE_RANGE: (f32, f32) = (0.35, 0.70);

/// A deterministic, generated data set of coloured shapes on textured backgrounds.
///
/// `classes` shape kinds (at most [`Synthetic::MAX_CLASSES`]), images of shape
/// `[channels, height, width]` with values in `[-1, 1]` (pixel intensity in `[0, 1]`,
/// minus 0.5, times 2). Image `index` has label `index % classes`, so every run of
/// `classes` consecutive indices holds each class once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synthetic {
    classes: usize,
    channels: usize,
    height: usize,
    width: usize,
    seed: u64,
}

/// The splitmix64 finaliser: a bijection on `u64` that mixes every bit into every other.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The per-image seed: distinct indices give distinct seeds for a given data set seed.
fn mix(seed: u64, index: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ index)
}

/// Whether the point `(u, v)` of the shape's box, both in `(-1, 1)` with `v` growing
/// downwards, belongs to shape `kind`.
fn inside(kind: usize, u: f32, v: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    match kind {
        // disk
        0 => u * u + v * v < 1.0,
        // square
        1 => au < 0.8 && av < 0.8,
        // triangle, apex up
        2 => au < (v + 1.0) * 0.5,
        // plus
        3 => au < 0.3 || av < 0.3,
        // ring
        4 => {
            let r2 = u * u + v * v;
            (0.3..1.0).contains(&r2)
        }
        // horizontal bar
        5 => av < 0.3,
        // vertical bar
        6 => au < 0.3,
        // diamond
        7 => au + av < 1.0,
        // x
        8 => (u - v).abs() < 0.4 || (u + v).abs() < 0.4,
        // checker patch, 4 x 4 cells
        9 => {
            let cu = ((u + 1.0) * 2.0) as i32;
            let cv = ((v + 1.0) * 2.0) as i32;
            (cu + cv) % 2 == 0
        }
        // frame (hollow square)
        10 => au.max(av) >= 0.55,
        // corner (an L: left column and bottom row)
        11 => u < -0.4 || v > 0.4,
        _ => false,
    }
}

/// The background's low-contrast texture, a value in `[-1, 1]` per pixel.
#[derive(Clone, Copy, Debug)]
enum Texture {
    /// Per-pixel hashed noise.
    Noise { seed: u64 },
    /// A triangle wave along a random direction.
    Stripes { fx: f32, fy: f32, phase: f32 },
    /// A linear ramp across the image.
    Gradient { gx: f32, gy: f32 },
}

impl Texture {
    fn random(rng: &mut StdRng, h: usize, w: usize) -> Self {
        match rng.random_range(0..3u32) {
            0 => Texture::Noise { seed: rng.random() },
            1 => {
                let angle = rng.random_range(0.0..std::f32::consts::PI);
                let period = rng.random_range(3.0f32..12.0);
                Texture::Stripes {
                    fx: angle.cos() / period,
                    fy: angle.sin() / period,
                    phase: rng.random(),
                }
            }
            _ => {
                let angle = rng.random_range(0.0..std::f32::consts::TAU);
                Texture::Gradient {
                    gx: 2.0 * angle.cos() / w.max(1) as f32,
                    gy: 2.0 * angle.sin() / h.max(1) as f32,
                }
            }
        }
    }

    /// Fills `row` with the texture along row `y` of an image `w` pixels wide; `(cx, cy)`
    /// is the image's centre.
    fn fill_row(&self, row: &mut [f32], y: usize, w: usize, cx: f32, cy: f32) {
        match *self {
            Texture::Noise { seed } => {
                let base = seed ^ (y as u64).wrapping_mul(w as u64);
                for (x, t) in row.iter_mut().enumerate() {
                    let bits = splitmix64(base.wrapping_add(x as u64));
                    *t = (bits >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                }
            }
            Texture::Stripes { fx, fy, phase } => {
                let start = y as f32 * fy + phase;
                for (x, t) in row.iter_mut().enumerate() {
                    let p = x as f32 * fx + start;
                    let p = p - p.floor();
                    *t = (2.0 * p - 1.0).abs() * 2.0 - 1.0;
                }
            }
            Texture::Gradient { gx, gy } => {
                let start = (y as f32 - cy) * gy;
                for (x, t) in row.iter_mut().enumerate() {
                    *t = ((x as f32 - cx) * gx + start).clamp(-1.0, 1.0);
                }
            }
        }
    }
}

/// Luminance of an RGB colour (or the grey value itself).
fn luminance(c: &[f32; 3], channels: usize) -> f32 {
    if channels == 1 {
        c[0]
    } else {
        0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
    }
}

/// Everything random about one image.
struct Drawing {
    kind: usize,
    /// The shape's box: top-left corner and side, in pixels.
    x0: usize,
    y0: usize,
    side: usize,
    background: [f32; 3],
    foreground: [f32; 3],
    texture: Texture,
    /// Texture amplitude per channel.
    amplitude: [f32; 3],
}

impl Synthetic {
    /// The number of distinct shape kinds, and so the most classes a data set can have.
    pub const MAX_CLASSES: usize = KINDS.len();

    /// A data set of `classes` shape kinds (1 to [`Synthetic::MAX_CLASSES`]) and images of
    /// `c` channels (1 for grey, 3 for RGB) by `h` by `w` pixels (at least 8 x 8), drawn
    /// from `seed`. Anything else is an [`Error::Invalid`] naming the bad argument.
    pub fn new(classes: usize, c: usize, h: usize, w: usize, seed: u64) -> Result<Self> {
        if classes == 0 || classes > Self::MAX_CLASSES {
            return Err(Error::Invalid(format!(
                "synthetic data set: {classes} classes asked for; 1 to {} are supported",
                Self::MAX_CLASSES
            )));
        }
        if c != 1 && c != 3 {
            return Err(Error::Invalid(format!(
                "synthetic data set: {c} channels asked for; 1 (grey) or 3 (RGB) are supported"
            )));
        }
        if h < 8 || w < 8 {
            return Err(Error::Invalid(format!(
                "synthetic data set: images of {h} x {w} pixels asked for; at least 8 x 8 are needed"
            )));
        }
        match c.checked_mul(h).and_then(|ch| ch.checked_mul(w)) {
            Some(n) if n <= MAX_IMAGE_VALUES => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "synthetic data set: images of {c} x {h} x {w} values are too large; \
                     at most {MAX_IMAGE_VALUES} values are supported"
                )))
            }
        }
        Ok(Synthetic {
            classes,
            channels: c,
            height: h,
            width: w,
            seed,
        })
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The per-image shape `(channels, height, width)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    /// The classes' names, in label order: `"disk"`, `"square"`, `"triangle"`, ...
    pub fn class_names(&self) -> Vec<String> {
        KINDS[..self.classes]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// The label of image `index`: `index % classes`.
    pub fn label(&self, index: u64) -> u32 {
        // classes <= MAX_CLASSES, so both conversions are exact.
        (index % self.classes as u64) as u32
    }

    /// Values per image, `c * h * w`.
    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `index` (`c * h * w` values, CHW) and its label. The same data set and index
    /// always give the same bits.
    pub fn sample(&self, index: u64) -> (Vec<f32>, u32) {
        let mut image = vec![0.0; self.image_len()];
        let label = self.render(index, &mut image, None);
        (image, label)
    }

    /// Images `indices` as one `[n, c, h, w]` tensor, generated in parallel, and their
    /// labels. `batch(&[i])` holds the same values as `sample(i)`.
    pub fn batch(&self, indices: &[u64]) -> (Tensor, Vec<u32>) {
        let len = self.image_len();
        let mut tensor = Tensor::zeros(vec![indices.len(), self.channels, self.height, self.width]);
        let labels = tensor
            .data_mut()
            .par_chunks_mut(len)
            .zip(indices.par_iter())
            .map(|(image, &index)| self.render(index, image, None))
            .collect();
        (tensor, labels)
    }

    /// Draws the random choices of image `index`.
    fn drawing(&self, index: u64) -> Drawing {
        let mut rng = StdRng::seed_from_u64(mix(self.seed, index));
        let kind = self.label(index) as usize;
        let (h, w) = (self.height, self.width);
        let short = h.min(w) as f32;
        let side = (rng.random_range(SIZE_RANGE.0..SIZE_RANGE.1) * short).round() as usize;
        let side = side.clamp(1, h.min(w));
        let x0 = rng.random_range(0..=w - side);
        let y0 = rng.random_range(0..=h - side);

        let colour = |rng: &mut StdRng| -> [f32; 3] {
            if self.channels == 1 {
                let g = rng.random_range(0.1..0.9);
                [g, g, g]
            } else {
                [
                    rng.random_range(0.1..0.9),
                    rng.random_range(0.1..0.9),
                    rng.random_range(0.1..0.9),
                ]
            }
        };
        let background = colour(&mut rng);
        let bl = luminance(&background, self.channels);
        // A foreground whose luminance differs clearly from the background's, so the shape
        // is visible in grey as in colour; after a bounded number of tries, a fixed shift.
        let mut foreground = None;
        for _ in 0..16 {
            let f = colour(&mut rng);
            if (luminance(&f, self.channels) - bl).abs() >= 0.3 {
                foreground = Some(f);
                break;
            }
        }
        let foreground = foreground.unwrap_or_else(|| {
            let shift = if bl < 0.5 { 0.45 } else { -0.45 };
            background.map(|b| (b + shift).clamp(0.0, 1.0))
        });

        let texture = Texture::random(&mut rng, h, w);
        let strength = rng.random_range(0.04f32..0.10);
        let amplitude = [
            strength * rng.random_range(0.5f32..1.0),
            strength * rng.random_range(0.5f32..1.0),
            strength * rng.random_range(0.5f32..1.0),
        ];
        Drawing {
            kind,
            x0,
            y0,
            side,
            background,
            foreground,
            texture,
            amplitude,
        }
    }

    /// Renders image `index` into `out` (`c * h * w` values) and returns its label; `mask`,
    /// when given (`h * w` values), receives the shape's pixels.
    fn render(&self, index: u64, out: &mut [f32], mask: Option<&mut [bool]>) -> u32 {
        let d = self.drawing(index);
        let (h, w) = (self.height, self.width);
        let (cx, cy) = (w as f32 * 0.5, h as f32 * 0.5);
        let to_value = |p: f32| (p.clamp(0.0, 1.0) - 0.5) * 2.0;

        // The background: one texture row, shared by the channels.
        let mut texture = vec![0.0f32; w];
        for y in 0..h {
            d.texture.fill_row(&mut texture, y, w, cx, cy);
            for (c, plane) in out.chunks_exact_mut(h * w).take(self.channels).enumerate() {
                let (b, a) = (d.background[c], d.amplitude[c]);
                if let Some(row) = plane.get_mut(y * w..(y + 1) * w) {
                    for (o, &t) in row.iter_mut().zip(&texture) {
                        *o = to_value(b + a * t);
                    }
                }
            }
        }

        // The shape, over its box only.
        let fg = d.foreground.map(to_value);
        let scale = 2.0 / d.side as f32;
        let mut inside_row = vec![false; d.side];
        let mut mask = mask;
        if let Some(m) = mask.as_deref_mut() {
            m.fill(false);
        }
        for dy in 0..d.side {
            let v = (dy as f32 + 0.5) * scale - 1.0;
            for (dx, on) in inside_row.iter_mut().enumerate() {
                *on = inside(d.kind, (dx as f32 + 0.5) * scale - 1.0, v);
            }
            let start = (d.y0 + dy) * w + d.x0;
            let span = start..start + d.side;
            for (c, plane) in out.chunks_exact_mut(h * w).take(self.channels).enumerate() {
                if let Some(row) = plane.get_mut(span.clone()) {
                    for (o, &on) in row.iter_mut().zip(&inside_row) {
                        if on {
                            *o = fg[c];
                        }
                    }
                }
            }
            if let Some(row) = mask.as_deref_mut().and_then(|m| m.get_mut(span)) {
                row.copy_from_slice(&inside_row);
            }
        }
        self.label(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_mask(s: &Synthetic, index: u64) -> (Vec<f32>, Vec<bool>, u32) {
        let (c, h, w) = s.shape();
        let mut image = vec![0.0; c * h * w];
        let mut mask = vec![false; h * w];
        let label = s.render(index, &mut image, Some(&mut mask));
        (image, mask, label)
    }

    #[test]
    fn deterministic() {
        let s = Synthetic::new(10, 3, 32, 32, 7).unwrap();
        let t = Synthetic::new(10, 3, 32, 32, 7).unwrap();
        for i in [0u64, 1, 5, 999, u64::MAX] {
            let (a, la) = s.sample(i);
            let (b, lb) = t.sample(i);
            assert_eq!(la, lb);
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        assert_ne!(s.sample(0).0, s.sample(10).0, "same class, different index");
        assert_ne!(s.sample(0).0, s.sample(1).0);
        let other = Synthetic::new(10, 3, 32, 32, 8).unwrap();
        assert_ne!(s.sample(3).0, other.sample(3).0, "different seed");
    }

    #[test]
    fn batch_matches_sample() {
        let s = Synthetic::new(12, 3, 20, 24, 1).unwrap();
        let indices = [4u64, 17, 0, 4, 123_456];
        let (t, labels) = s.batch(&indices);
        assert_eq!(t.shape(), &[5, 3, 20, 24]);
        for (k, &i) in indices.iter().enumerate() {
            let (image, label) = s.sample(i);
            assert_eq!(labels[k], label);
            assert_eq!(
                &t.data()[k * image.len()..(k + 1) * image.len()],
                &image[..]
            );
        }
        let (empty, none) = s.batch(&[]);
        assert!(empty.is_empty() && none.is_empty());
    }

    #[test]
    fn labels_balanced() {
        let s = Synthetic::new(10, 3, 8, 8, 3).unwrap();
        let mut counts = [0usize; 10];
        for i in 0..1000 {
            counts[s.label(i) as usize] += 1;
        }
        assert!(counts.iter().all(|&n| n == 100), "{counts:?}");
        assert_eq!(s.sample(37).1, s.label(37));
    }

    #[test]
    fn values_bounded_and_zero_mean_ish() {
        for c in [1, 3] {
            let s = Synthetic::new(12, c, 32, 32, 11).unwrap();
            let (t, _) = s.batch(&(0..240).collect::<Vec<_>>());
            assert!(t
                .data()
                .iter()
                .all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
            let mean = t.data().iter().sum::<f32>() / t.len() as f32;
            assert!(mean.abs() < 0.2, "mean {mean}");
        }
    }

    #[test]
    fn every_class_has_a_visible_shape() {
        for c in [1, 3] {
            let s = Synthetic::new(Synthetic::MAX_CLASSES, c, 32, 32, 5).unwrap();
            for i in 0..(4 * Synthetic::MAX_CLASSES as u64) {
                let (image, mask, label) = with_mask(&s, i);
                let on = mask.iter().filter(|&&m| m).count();
                assert!(
                    on > 0 && on < mask.len(),
                    "class {label}: {on} shape pixels"
                );
                // The shape's luminance differs clearly from the background's.
                let plane = 32 * 32;
                let lum = |p: usize| {
                    let mut rgb = [0.0; 3];
                    for (k, v) in rgb.iter_mut().enumerate().take(c) {
                        *v = image[k * plane + p];
                    }
                    luminance(&rgb, c)
                };
                let (mut fg, mut bg) = (0.0, 0.0);
                for (p, &m) in mask.iter().enumerate() {
                    if m {
                        fg += lum(p);
                    } else {
                        bg += lum(p);
                    }
                }
                let (fg, bg) = (fg / on as f32, bg / (mask.len() - on) as f32);
                assert!((fg - bg).abs() > 0.4, "class {label}: {fg} vs {bg}");
            }
        }
    }

    #[test]
    fn classes_have_different_masks() {
        // On the same box, every pair of kinds differs in a good share of its pixels.
        let n = 24;
        let masks: Vec<Vec<bool>> = (0..Synthetic::MAX_CLASSES)
            .map(|k| {
                (0..n * n)
                    .map(|p| {
                        let u = ((p % n) as f32 + 0.5) * 2.0 / n as f32 - 1.0;
                        let v = ((p / n) as f32 + 0.5) * 2.0 / n as f32 - 1.0;
                        inside(k, u, v)
                    })
                    .collect()
            })
            .collect();
        for a in 0..masks.len() {
            let area = masks[a].iter().filter(|&&m| m).count();
            assert!(area > n * n / 5, "{} covers {area} pixels", KINDS[a]);
            for b in a + 1..masks.len() {
                let diff = masks[a]
                    .iter()
                    .zip(&masks[b])
                    .filter(|(x, y)| x != y)
                    .count();
                assert!(diff > n * n / 8, "{} vs {}: {diff}", KINDS[a], KINDS[b]);
            }
        }
        // And rendered images of different classes do too.
        let s = Synthetic::new(Synthetic::MAX_CLASSES, 3, 32, 32, 9).unwrap();
        let (_, m0, _) = with_mask(&s, 0);
        let (_, m1, _) = with_mask(&s, 1);
        assert_ne!(m0, m1);
    }

    #[test]
    fn smallest_and_oblong_images() {
        for (h, w) in [(8, 8), (8, 300), (300, 8)] {
            let s = Synthetic::new(12, 3, h, w, 0).unwrap();
            for i in 0..24 {
                let (image, mask, _) = with_mask(&s, i);
                assert_eq!(image.len(), 3 * h * w);
                assert!(mask.iter().any(|&m| m));
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(Synthetic::new(0, 3, 32, 32, 0).is_err());
        assert!(Synthetic::new(Synthetic::MAX_CLASSES + 1, 3, 32, 32, 0).is_err());
        assert!(Synthetic::new(10, 2, 32, 32, 0).is_err());
        assert!(Synthetic::new(10, 0, 32, 32, 0).is_err());
        assert!(Synthetic::new(10, 3, 7, 32, 0).is_err());
        assert!(Synthetic::new(10, 3, 32, 7, 0).is_err());
        assert!(Synthetic::new(10, 3, usize::MAX, usize::MAX, 0).is_err());
        let e = Synthetic::new(13, 3, 32, 32, 0).unwrap_err().to_string();
        assert!(e.contains("13 classes"), "{e}");
        let s = Synthetic::new(10, 1, 8, 8, 0).unwrap();
        assert_eq!(s.classes(), 10);
        assert_eq!(s.shape(), (1, 8, 8));
        assert_eq!(s.class_names()[..3], ["disk", "square", "triangle"]);
        assert_eq!(s.class_names().len(), 10);
    }
}
