//! The paper's data augmentation (Krizhevsky, Sutskever and Hinton 2012, section 4.1).
//!
//! Images are `f32` slices in CHW order (channel planes, then rows, then columns) whose
//! [`Shape`] is given alongside. Nothing here cares about the value range: the images may
//! be raw `[0, 255]` pixels or already mean-subtracted.
//!
//! * Training: a random `ch x cw` patch ([`random_crop`]), mirrored with probability 1/2
//!   ([`hflip`]), with a random colour shift along the principal components of the
//!   training set's RGB covariance ([`PcaColour`]). [`Augment::train`] does all three.
//! * Testing: the centre patch ([`center_crop`], [`Augment::eval`]) or the paper's ten
//!   patches ([`ten_crops`]), whose predictions are averaged.
//!
//! Every random choice comes from the caller's `rng`, so a seeded generator
//! (`rand::rngs::StdRng::seed_from_u64`) makes the whole pipeline reproducible.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::ir::Shape;

/// Checks that `src` holds one image of `shape` and that a `ch x cw` crop fits in it.
fn check_crop(src: &[f32], shape: Shape, ch: usize, cw: usize) -> Result<()> {
    if shape.c == 0 || shape.h == 0 || shape.w == 0 {
        return Err(Error::Invalid(format!(
            "crop: image shape {}x{}x{} has a zero dimension",
            shape.c, shape.h, shape.w
        )));
    }
    check_len(src, shape, "crop")?;
    if ch == 0 || cw == 0 {
        return Err(Error::Invalid(format!(
            "crop: crop size {ch}x{cw} has a zero dimension"
        )));
    }
    if ch > shape.h || cw > shape.w {
        return Err(Error::Invalid(format!(
            "crop: crop size {ch}x{cw} is larger than the image ({}x{})",
            shape.h, shape.w
        )));
    }
    Ok(())
}

/// Copies the `ch x cw` patch whose top-left corner is at row `y`, column `x` out of every
/// channel of `src` (CHW, `shape`). The result has shape `[shape.c, ch, cw]`.
///
/// Errors when `src.len() != shape.len()`, when any size is zero, or when the patch does
/// not lie entirely inside the image.
pub fn crop(
    src: &[f32],
    shape: Shape,
    y: usize,
    x: usize,
    ch: usize,
    cw: usize,
) -> Result<Vec<f32>> {
    check_crop(src, shape, ch, cw)?;
    if y > shape.h - ch || x > shape.w - cw {
        return Err(Error::Invalid(format!(
            "crop: a {ch}x{cw} patch at (y {y}, x {x}) leaves the {}x{} image",
            shape.h, shape.w
        )));
    }
    let plane = shape.h * shape.w;
    let mut out = Vec::with_capacity(shape.c * ch * cw);
    for c in 0..shape.c {
        for r in y..y + ch {
            let start = c * plane + r * shape.w + x;
            out.extend_from_slice(&src[start..start + cw]);
        }
    }
    Ok(out)
}

/// A `ch x cw` patch at an offset drawn uniformly over every valid position: row offset in
/// `0..=shape.h - ch`, column offset in `0..=shape.w - cw` (both ends included). Returns the
/// patch and its offset `(y, x)`. Draws the row offset first, then the column offset.
///
/// Errors as [`crop`] does.
pub fn random_crop(
    src: &[f32],
    shape: Shape,
    ch: usize,
    cw: usize,
    rng: &mut impl Rng,
) -> Result<(Vec<f32>, (usize, usize))> {
    check_crop(src, shape, ch, cw)?;
    let y = rng.random_range(0..=shape.h - ch);
    let x = rng.random_range(0..=shape.w - cw);
    Ok((crop(src, shape, y, x, ch, cw)?, (y, x)))
}

/// The centre `ch x cw` patch, at offset `((shape.h - ch) / 2, (shape.w - cw) / 2)`
/// (rounded down). Errors as [`crop`] does.
pub fn center_crop(src: &[f32], shape: Shape, ch: usize, cw: usize) -> Result<Vec<f32>> {
    check_crop(src, shape, ch, cw)?;
    crop(src, shape, (shape.h - ch) / 2, (shape.w - cw) / 2, ch, cw)
}

/// Mirrors an image left to right in place: every row of `shape.w` values is reversed, in
/// every channel. Only `shape.w` is used, so a slice holding several images of the same
/// width is mirrored image by image; a trailing partial row (a length that is not a
/// multiple of `shape.w`) is left alone, as is everything when `shape.w == 0`.
pub fn hflip(img: &mut [f32], shape: Shape) {
    if shape.w == 0 {
        return;
    }
    for row in img.chunks_exact_mut(shape.w) {
        row.reverse();
    }
}

/// The paper's ten test-time patches of size `ch x cw`, each of shape `[shape.c, ch, cw]`,
/// in this order: top-left, top-right, bottom-left, bottom-right and centre (as
/// [`center_crop`]), then the same five mirrored by [`hflip`].
///
/// Errors as [`crop`] does.
pub fn ten_crops(src: &[f32], shape: Shape, ch: usize, cw: usize) -> Result<Vec<Vec<f32>>> {
    check_crop(src, shape, ch, cw)?;
    let (dy, dx) = (shape.h - ch, shape.w - cw);
    let offsets = [(0, 0), (0, dx), (dy, 0), (dy, dx), (dy / 2, dx / 2)];
    let mut out = Vec::with_capacity(10);
    for &(y, x) in &offsets {
        out.push(crop(src, shape, y, x, ch, cw)?);
    }
    let out_shape = Shape::new(shape.c, ch, cw);
    for i in 0..5 {
        let mut flipped = out[i].clone();
        hflip(&mut flipped, out_shape);
        out.push(flipped);
    }
    Ok(out)
}

/// The principal components of the RGB colour of a training set, for the paper's colour
/// augmentation: every pixel `[R, G, B]` of an image gets
/// `sum_i p_i * alpha_i * lambda_i` added, with `p_i`, `lambda_i` the eigenvectors and
/// eigenvalues of the 3x3 RGB covariance and `alpha_i ~ N(0, 0.1)` drawn once per image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PcaColour {
    /// The covariance's eigenvalues `lambda_i`, sorted in descending order (never negative).
    pub eigenvalues: [f32; 3],
    /// The unit eigenvectors as **rows**: `eigenvectors[i]` is `p_i = [r, g, b]`, the
    /// eigenvector of `eigenvalues[i]`. Each is signed so that its largest-magnitude
    /// component is positive.
    pub eigenvectors: [[f32; 3]; 3],
}

/// Eigen-decomposition of a symmetric 3x3 matrix by the cyclic Jacobi method. Returns the
/// eigenvalues (unsorted) and the eigenvectors as the columns of the second matrix.
fn jacobi3(mut a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let scale: f64 = a.iter().flatten().map(|x| x * x).sum();
    for _sweep in 0..64 {
        let off = a[0][1] * a[0][1] + a[0][2] * a[0][2] + a[1][2] * a[1][2];
        if off == 0.0 || off <= scale * 1e-32 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            let apq = a[p][q];
            if apq == 0.0 {
                continue;
            }
            // Rotation angle that zeroes a[p][q] (Numerical Recipes, section 11.1).
            let theta = (a[q][q] - a[p][p]) / (2.0 * apq);
            let t = if theta.abs() > 1e150 {
                0.5 / theta
            } else {
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                sign / (theta.abs() + (theta * theta + 1.0).sqrt())
            };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // J: identity with J[p][p] = J[q][q] = c, J[p][q] = s, J[q][p] = -s.
            let mut j = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
            j[p][p] = c;
            j[q][q] = c;
            j[p][q] = s;
            j[q][p] = -s;
            // a = J^T a J, v = v J.
            let aj = matmul(&a, &j);
            a = matmul(&transpose(&j), &aj);
            a[p][q] = 0.0;
            a[q][p] = 0.0;
            v = matmul(&v, &j);
        }
    }
    ([a[0][0], a[1][1], a[2][2]], v)
}

fn matmul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

fn transpose(a: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x = a[j][i];
        }
    }
    out
}

/// Checks that `img` is one 3-channel image of `shape`.
fn check_rgb(img: &[f32], shape: Shape, what: &str) -> Result<()> {
    if shape.c != 3 {
        return Err(Error::Invalid(format!(
            "{what}: colour augmentation needs 3 channels (RGB), the shape has {}",
            shape.c
        )));
    }
    check_len(img, shape, what)
}

/// Checks that `img` holds exactly one image of `shape`.
fn check_len(img: &[f32], shape: Shape, what: &str) -> Result<()> {
    if img.len() != shape.len() {
        return Err(Error::Invalid(format!(
            "{what}: image of shape {}x{}x{} needs {} values, got {}",
            shape.c,
            shape.h,
            shape.w,
            shape.len(),
            img.len()
        )));
    }
    Ok(())
}

impl PcaColour {
    /// The principal components of the colours `pixels` (`[R, G, B]` each): their sample
    /// covariance (accumulated in `f64`, divided by `n - 1`), decomposed by the Jacobi
    /// method. Errors on fewer than 2 pixels or non-finite values.
    pub fn from_pixels(pixels: impl Iterator<Item = [f32; 3]>) -> Result<Self> {
        let mut m = ColourMoments::default();
        pixels.for_each(|px| m.add(px));
        Self::from_moments(&m)
    }

    /// The principal components of the colours whose moments `m` holds (see
    /// [`PcaColour::from_pixels`]).
    pub fn from_moments(m: &ColourMoments) -> Result<Self> {
        let (n, m2) = (m.n, m.m2);
        if n < 2 {
            return Err(Error::Invalid(format!(
                "PcaColour: need at least 2 pixels for a covariance, got {n}"
            )));
        }
        let mut cov = [[0.0f64; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                // Symmetrise against rounding.
                cov[i][j] = 0.5 * (m2[i][j] + m2[j][i]) / (n - 1) as f64;
            }
        }
        if cov.iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::Invalid(
                "PcaColour: the pixels' covariance is not finite (NaN or infinite values?)".into(),
            ));
        }
        let (vals, vecs) = jacobi3(cov);
        let mut order = [0usize, 1, 2];
        order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
        let mut eigenvalues = [0.0f32; 3];
        let mut eigenvectors = [[0.0f32; 3]; 3];
        for (i, &k) in order.iter().enumerate() {
            eigenvalues[i] = vals[k].max(0.0) as f32;
            let mut p = [vecs[0][k], vecs[1][k], vecs[2][k]];
            let big = (0..3)
                .max_by(|&a, &b| p[a].abs().total_cmp(&p[b].abs()).then(b.cmp(&a)))
                .unwrap_or(0);
            if p[big] < 0.0 {
                p = p.map(|x| -x);
            }
            eigenvectors[i] = p.map(|x| x as f32);
        }
        Ok(PcaColour {
            eigenvalues,
            eigenvectors,
        })
    }

    /// [`PcaColour::from_pixels`] over every pixel of `images`, each a 3-channel CHW image
    /// of `shape`. Errors when `shape.c != 3`, an image has the wrong length, or there are
    /// fewer than 2 pixels in all.
    pub fn from_images(images: &[&[f32]], shape: Shape) -> Result<Self> {
        for img in images {
            check_rgb(img, shape, "PcaColour::from_images")?;
        }
        let plane = shape.h * shape.w;
        Self::from_pixels(
            images.iter().flat_map(|img| {
                (0..plane).map(move |p| [img[p], img[plane + p], img[2 * plane + p]])
            }),
        )
    }

    /// The colour shift `sum_i p_i * alpha_i * lambda_i` (`[R, G, B]`) added to every pixel
    /// of an image for the draw `alpha`.
    pub fn shift(&self, alpha: [f32; 3]) -> [f32; 3] {
        let mut out = [0.0f32; 3];
        for (i, p) in self.eigenvectors.iter().enumerate() {
            let a = alpha[i] * self.eigenvalues[i];
            for (o, &pk) in out.iter_mut().zip(p) {
                *o += pk * a;
            }
        }
        out
    }

    /// Adds [`PcaColour::shift`]`(alpha)` to every pixel of `img` (3-channel CHW, `shape`):
    /// channel `k`'s plane gets `shift[k]`. Errors when `shape.c != 3` or
    /// `img.len() != shape.len()`, leaving `img` untouched.
    pub fn apply(&self, img: &mut [f32], shape: Shape, alpha: [f32; 3]) -> Result<()> {
        check_rgb(img, shape, "PcaColour::apply")?;
        let plane = shape.h * shape.w;
        if plane == 0 {
            return Ok(());
        }
        let s = self.shift(alpha);
        for (channel, &sk) in img.chunks_exact_mut(plane).zip(&s) {
            for x in channel {
                *x += sk;
            }
        }
        Ok(())
    }

    /// Draws `alpha` for one image: three independent `N(0, std)` values (`std` is the
    /// standard deviation; the paper uses 0.1), in order `alpha_0, alpha_1, alpha_2`.
    pub fn sample_alpha(rng: &mut impl Rng, std: f32) -> [f32; 3] {
        let mut alpha = [0.0f32; 3];
        for a in &mut alpha {
            let z: f32 = StandardNormal.sample(rng);
            *a = z * std;
        }
        alpha
    }
}

/// The count, mean and co-moment of a set of colours, accumulated one pixel at a time
/// (Welford's method, in `f64`) and merged (Chan, Golub and LeVeque's formula), so that
/// parts of a set can be summed in parallel and combined in a fixed order.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ColourMoments {
    n: u64,
    mean: [f64; 3],
    m2: [[f64; 3]; 3],
}

impl ColourMoments {
    /// Adds one pixel `[R, G, B]`.
    #[allow(clippy::needless_range_loop)] // the formulas index three arrays alike
    pub fn add(&mut self, px: [f32; 3]) {
        self.n += 1;
        let x = px.map(f64::from);
        let mut d_old = [0.0; 3];
        for k in 0..3 {
            d_old[k] = x[k] - self.mean[k];
            self.mean[k] += d_old[k] / self.n as f64;
        }
        for i in 0..3 {
            let d_new = x[i] - self.mean[i];
            for j in 0..3 {
                self.m2[i][j] += d_new * d_old[j];
            }
        }
    }

    /// The moments of both sets together.
    pub fn merge(&self, other: &ColourMoments) -> ColourMoments {
        if other.n == 0 {
            return *self;
        }
        if self.n == 0 {
            return *other;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let delta: [f64; 3] = std::array::from_fn(|k| other.mean[k] - self.mean[k]);
        ColourMoments {
            n: self.n + other.n,
            mean: std::array::from_fn(|k| self.mean[k] + delta[k] * nb / n),
            m2: std::array::from_fn(|i| {
                std::array::from_fn(|j| {
                    self.m2[i][j] + other.m2[i][j] + delta[i] * delta[j] * na * nb / n
                })
            }),
        }
    }
}

/// The paper's training-time augmentation, and the matching evaluation crop.
#[derive(Clone, Debug, PartialEq)]
pub struct Augment {
    /// Patch size `(height, width)`: 224x224 in the paper (227x227 for this crate's
    /// `AlexNet`, whose first convolution needs it).
    pub crop: (usize, usize),
    /// Mirror each training patch with probability 1/2.
    pub flip: bool,
    /// Colour augmentation from the training set's principal components, if any.
    pub pca: Option<PcaColour>,
    /// Standard deviation of each `alpha_i` (0.1 in the paper).
    pub pca_std: f32,
}

impl Augment {
    /// The paper's settings: `crop` patches, flips, and colour augmentation with
    /// `pca_std = 0.1` when `pca` is given.
    pub fn paper(crop: (usize, usize), pca: Option<PcaColour>) -> Self {
        Augment {
            crop,
            flip: true,
            pca,
            pca_std: 0.1,
        }
    }

    /// The shape of the patches [`Augment::train`] and [`Augment::eval`] make from an image
    /// of `shape`: `[shape.c, crop.0, crop.1]`.
    pub fn out_shape(&self, shape: Shape) -> Shape {
        Shape::new(shape.c, self.crop.0, self.crop.1)
    }

    /// One training patch from `src` (CHW, `shape`): a [`random_crop`], mirrored when
    /// `flip` is set and a fair coin says so, then shifted in colour by
    /// [`PcaColour::apply`] with a fresh [`PcaColour::sample_alpha`] when `pca` is set.
    /// The random draws happen in that order (offsets, coin, alpha), so a seeded `rng`
    /// gives the same patch every time.
    ///
    /// Errors as [`crop`] does, when `pca` is set and the image is not 3-channel, or when
    /// `pca_std` is negative or not finite.
    pub fn train(&self, src: &[f32], shape: Shape, rng: &mut impl Rng) -> Result<Vec<f32>> {
        if self.pca.is_some() && !(self.pca_std.is_finite() && self.pca_std >= 0.0) {
            return Err(Error::Invalid(format!(
                "Augment: pca_std must be finite and non-negative, got {}",
                self.pca_std
            )));
        }
        if self.pca.is_some() {
            check_rgb(src, shape, "Augment::train")?;
        }
        let (ch, cw) = self.crop;
        let (mut out, _) = random_crop(src, shape, ch, cw, rng)?;
        let out_shape = self.out_shape(shape);
        if self.flip && rng.random_bool(0.5) {
            hflip(&mut out, out_shape);
        }
        if let Some(pca) = &self.pca {
            let alpha = PcaColour::sample_alpha(rng, self.pca_std);
            pca.apply(&mut out, out_shape, alpha)?;
        }
        Ok(out)
    }

    /// The evaluation patch: the [`center_crop`] of size `crop`, nothing random.
    pub fn eval(&self, src: &[f32], shape: Shape) -> Result<Vec<f32>> {
        center_crop(src, shape, self.crop.0, self.crop.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ramp(shape: Shape) -> Vec<f32> {
        (0..shape.len()).map(|i| i as f32).collect()
    }

    fn at(src: &[f32], shape: Shape, c: usize, y: usize, x: usize) -> f32 {
        src[(c * shape.h + y) * shape.w + x]
    }

    #[test]
    fn merged_colour_moments_are_those_of_the_whole_set() {
        let mut rng = StdRng::seed_from_u64(3);
        let px: Vec<[f32; 3]> = (0..1000)
            .map(|_| std::array::from_fn(|c| rng.random::<f32>() * (c + 1) as f32))
            .collect();
        let mut whole = ColourMoments::default();
        px.iter().for_each(|&p| whole.add(p));
        let parts: Vec<ColourMoments> = px
            .chunks(137)
            .map(|c| {
                let mut m = ColourMoments::default();
                c.iter().for_each(|&p| m.add(p));
                m
            })
            .collect();
        let merged = parts
            .iter()
            .fold(ColourMoments::default(), |a, b| a.merge(b));
        assert_eq!(merged.n, 1000);
        for i in 0..3 {
            assert!((merged.mean[i] - whole.mean[i]).abs() < 1e-12);
            for j in 0..3 {
                let (a, b) = (merged.m2[i][j], whole.m2[i][j]);
                assert!((a - b).abs() <= 1e-10 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
        let (a, b) = (
            PcaColour::from_moments(&merged).unwrap(),
            PcaColour::from_moments(&whole).unwrap(),
        );
        for i in 0..3 {
            assert!((a.eigenvalues[i] - b.eigenvalues[i]).abs() < 1e-6);
        }
    }

    #[test]
    fn crop_matches_manual_indexing() {
        let shape = Shape::new(3, 6, 7);
        let src = ramp(shape);
        for (y, x, ch, cw) in [(0, 0, 6, 7), (1, 2, 3, 4), (3, 3, 3, 4), (5, 6, 1, 1)] {
            let out = crop(&src, shape, y, x, ch, cw).unwrap();
            assert_eq!(out.len(), 3 * ch * cw);
            for c in 0..3 {
                for r in 0..ch {
                    for q in 0..cw {
                        assert_eq!(out[(c * ch + r) * cw + q], at(&src, shape, c, y + r, x + q));
                    }
                }
            }
        }
    }

    #[test]
    fn random_crop_stays_in_bounds_and_reaches_both_ends() {
        let shape = Shape::new(1, 5, 6);
        let src = ramp(shape);
        let (ch, cw) = (3, 4);
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen_y = [false; 3];
        let mut seen_x = [false; 3];
        for _ in 0..2000 {
            let (out, (y, x)) = random_crop(&src, shape, ch, cw, &mut rng).unwrap();
            assert!(y <= shape.h - ch && x <= shape.w - cw, "offset ({y}, {x})");
            seen_y[y] = true;
            seen_x[x] = true;
            assert_eq!(out, crop(&src, shape, y, x, ch, cw).unwrap());
        }
        assert!(seen_y.iter().all(|&s| s), "{seen_y:?}");
        assert!(seen_x.iter().all(|&s| s), "{seen_x:?}");

        // A crop as large as the image has exactly one offset.
        let (out, off) = random_crop(&src, shape, 5, 6, &mut rng).unwrap();
        assert_eq!((out, off), (src.clone(), (0, 0)));
    }

    #[test]
    fn random_crop_is_deterministic_given_the_seed() {
        let shape = Shape::new(3, 9, 8);
        let src = ramp(shape);
        let a = random_crop(&src, shape, 4, 5, &mut StdRng::seed_from_u64(3)).unwrap();
        let b = random_crop(&src, shape, 4, 5, &mut StdRng::seed_from_u64(3)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn center_crop_offsets() {
        let shape = Shape::new(2, 7, 10);
        let src = ramp(shape);
        // (7 - 4) / 2 = 1, (10 - 5) / 2 = 2.
        assert_eq!(
            center_crop(&src, shape, 4, 5).unwrap(),
            crop(&src, shape, 1, 2, 4, 5).unwrap()
        );
        assert_eq!(
            center_crop(&src, shape, 3, 6).unwrap(),
            crop(&src, shape, 2, 2, 3, 6).unwrap()
        );
        assert_eq!(center_crop(&src, shape, 7, 10).unwrap(), src);
    }

    #[test]
    fn hflip_mirrors_and_twice_is_identity() {
        let shape = Shape::new(2, 2, 3);
        let src = ramp(shape);
        let mut img = src.clone();
        hflip(&mut img, shape);
        assert_eq!(img, [2., 1., 0., 5., 4., 3., 8., 7., 6., 11., 10., 9.]);
        for c in 0..2 {
            for y in 0..2 {
                for x in 0..3 {
                    assert_eq!(at(&img, shape, c, y, x), at(&src, shape, c, y, 2 - x));
                }
            }
        }
        hflip(&mut img, shape);
        assert_eq!(img, src);

        let shape = Shape::new(3, 5, 8);
        let src = ramp(shape);
        let mut img = src.clone();
        hflip(&mut img, shape);
        assert_ne!(img, src);
        hflip(&mut img, shape);
        assert_eq!(img, src);
    }

    #[test]
    fn ten_crops_by_hand() {
        // 1x4x5, value = 5 * row + column; 3x3 patches.
        let shape = Shape::new(1, 4, 5);
        let src = ramp(shape);
        let crops = ten_crops(&src, shape, 3, 3).unwrap();
        let expected: [[f32; 9]; 10] = [
            [0., 1., 2., 5., 6., 7., 10., 11., 12.],    // top-left
            [2., 3., 4., 7., 8., 9., 12., 13., 14.],    // top-right
            [5., 6., 7., 10., 11., 12., 15., 16., 17.], // bottom-left
            [7., 8., 9., 12., 13., 14., 17., 18., 19.], // bottom-right
            [1., 2., 3., 6., 7., 8., 11., 12., 13.],    // centre (0, 1)
            [2., 1., 0., 7., 6., 5., 12., 11., 10.],    // flipped top-left
            [4., 3., 2., 9., 8., 7., 14., 13., 12.],    // flipped top-right
            [7., 6., 5., 12., 11., 10., 17., 16., 15.], // flipped bottom-left
            [9., 8., 7., 14., 13., 12., 19., 18., 17.], // flipped bottom-right
            [3., 2., 1., 8., 7., 6., 13., 12., 11.],    // flipped centre
        ];
        assert_eq!(crops.len(), 10);
        for (i, (got, want)) in crops.iter().zip(&expected).enumerate() {
            assert_eq!(got.as_slice(), want.as_slice(), "patch {i}");
        }

        // Three channels: every channel is cropped the same way.
        let shape = Shape::new(3, 4, 5);
        let src = ramp(shape);
        let crops = ten_crops(&src, shape, 3, 3).unwrap();
        for (i, want) in expected.iter().enumerate() {
            for c in 0..3 {
                let plane: Vec<f32> = want.iter().map(|v| v + 20.0 * c as f32).collect();
                assert_eq!(&crops[i][c * 9..(c + 1) * 9], plane.as_slice(), "patch {i}");
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let shape = Shape::new(3, 4, 5);
        let src = ramp(shape);
        let mut rng = StdRng::seed_from_u64(1);
        // Crop larger than the image.
        assert!(crop(&src, shape, 0, 0, 5, 5).is_err());
        assert!(crop(&src, shape, 0, 0, 4, 6).is_err());
        assert!(center_crop(&src, shape, 5, 1).is_err());
        assert!(random_crop(&src, shape, 1, 6, &mut rng).is_err());
        assert!(ten_crops(&src, shape, 5, 5).is_err());
        // Patch leaving the image.
        assert!(crop(&src, shape, 2, 0, 3, 3).is_err());
        assert!(crop(&src, shape, 0, 3, 3, 3).is_err());
        assert!(crop(&src, shape, usize::MAX, 0, 3, 3).is_err());
        // Wrong source length.
        assert!(crop(&src[1..], shape, 0, 0, 2, 2).is_err());
        assert!(center_crop(&src[..10], shape, 2, 2).is_err());
        assert!(random_crop(&[], shape, 2, 2, &mut rng).is_err());
        assert!(ten_crops(&src[1..], shape, 2, 2).is_err());
        // Zero sizes.
        assert!(crop(&src, shape, 0, 0, 0, 2).is_err());
        assert!(center_crop(&src, shape, 2, 0).is_err());
        assert!(random_crop(&[], Shape::new(3, 0, 5), 0, 0, &mut rng).is_err());
        assert!(ten_crops(&[], Shape::new(0, 4, 5), 2, 2).is_err());
        // Colour augmentation needs RGB images of the right length.
        let pca = PcaColour {
            eigenvalues: [1.0, 0.5, 0.1],
            eigenvectors: [[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]],
        };
        let mut img = src.clone();
        assert!(pca.apply(&mut img[1..], shape, [1.0; 3]).is_err());
        assert!(pca.apply(&mut img, Shape::new(1, 12, 5), [1.0; 3]).is_err());
        assert_eq!(img, src);
        assert!(PcaColour::from_pixels(std::iter::empty()).is_err());
        assert!(PcaColour::from_pixels(std::iter::once([1.0, 2.0, 3.0])).is_err());
        assert!(PcaColour::from_pixels([[f32::NAN, 0., 0.], [1., 1., 1.]].into_iter()).is_err());
        assert!(PcaColour::from_images(&[], shape).is_err());
        assert!(PcaColour::from_images(&[&src[1..]], shape).is_err());
        assert!(PcaColour::from_images(&[&src], Shape::new(1, 12, 5)).is_err());
        let aug = Augment::paper((3, 3), Some(pca));
        assert!(aug
            .train(&src[..12], Shape::new(1, 3, 4), &mut rng)
            .is_err());
        assert!(aug.train(&src[1..], shape, &mut rng).is_err());
        let bad_std = Augment {
            pca_std: -1.0,
            ..aug.clone()
        };
        assert!(bad_std.train(&src, shape, &mut rng).is_err());
        let too_big = Augment {
            crop: (5, 5),
            ..aug
        };
        assert!(too_big.train(&src, shape, &mut rng).is_err());
        assert!(too_big.eval(&src, shape).is_err());
    }

    /// Correlated random colours: `x = M z + mean`, `z` standard normal.
    fn correlated_pixels(n: usize, seed: u64) -> Vec<[f32; 3]> {
        let m = [[0.9f32, 0.1, 0.0], [0.6, 0.4, 0.1], [0.3, 0.5, 0.35]];
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let z: [f32; 3] = std::array::from_fn(|_| StandardNormal.sample(&mut rng));
                std::array::from_fn(|i| 0.5 + (0..3).map(|k| m[i][k] * z[k]).sum::<f32>())
            })
            .collect()
    }

    fn covariance(xs: &[[f64; 3]]) -> [[f64; 3]; 3] {
        let n = xs.len() as f64;
        let mean: [f64; 3] = std::array::from_fn(|k| xs.iter().map(|x| x[k]).sum::<f64>() / n);
        std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                xs.iter()
                    .map(|x| (x[i] - mean[i]) * (x[j] - mean[j]))
                    .sum::<f64>()
                    / (n - 1.0)
            })
        })
    }

    #[test]
    fn pca_reconstructs_the_covariance() {
        let pixels = correlated_pixels(5000, 11);
        let pca = PcaColour::from_pixels(pixels.iter().copied()).unwrap();
        let xs: Vec<[f64; 3]> = pixels.iter().map(|p| p.map(f64::from)).collect();
        let cov = covariance(&xs);
        let l = pca.eigenvalues.map(f64::from);
        let v = pca.eigenvectors.map(|r| r.map(f64::from));
        assert!(l[0] >= l[1] && l[1] >= l[2] && l[2] > 0.0, "{l:?}");
        for i in 0..3 {
            for j in 0..3 {
                // Rows are eigenvectors: C = sum_k lambda_k p_k p_k^T.
                let rec: f64 = (0..3).map(|k| l[k] * v[k][i] * v[k][j]).sum();
                assert!(
                    (rec - cov[i][j]).abs() < 1e-5,
                    "C[{i}][{j}] {rec} vs {}",
                    cov[i][j]
                );
                let dot: f64 = (0..3).map(|k| v[i][k] * v[j][k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-6, "p{i}.p{j} = {dot}");
            }
            // C p_i = lambda_i p_i.
            for r in 0..3 {
                let cp: f64 = (0..3).map(|k| cov[r][k] * v[i][k]).sum();
                assert!((cp - l[i] * v[i][r]).abs() < 1e-5);
            }
        }

        // The same pixels as a pair of 3-channel images give the same decomposition.
        let shape = Shape::new(3, 50, 50);
        let to_chw = |px: &[[f32; 3]]| -> Vec<f32> {
            (0..3).flat_map(|c| px.iter().map(move |p| p[c])).collect()
        };
        let (a, b) = (to_chw(&pixels[..2500]), to_chw(&pixels[2500..]));
        let from_images = PcaColour::from_images(&[&a, &b], shape).unwrap();
        assert_eq!(from_images, pca);
    }

    #[test]
    fn pca_of_a_diagonal_covariance() {
        // Independent channels with variances 4, 9, 1: eigenvectors are the axes.
        let mut rng = StdRng::seed_from_u64(5);
        let pixels: Vec<[f32; 3]> = (0..4000)
            .map(|_| {
                let z: [f32; 3] = std::array::from_fn(|_| StandardNormal.sample(&mut rng));
                [2.0 * z[0], 3.0 * z[1], z[2]]
            })
            .collect();
        let pca = PcaColour::from_pixels(pixels.into_iter()).unwrap();
        let axes = [1, 0, 2];
        for (i, &axis) in axes.iter().enumerate() {
            assert!(pca.eigenvectors[i][axis] > 0.99, "{pca:?}");
        }
        let want = [9.0, 4.0, 1.0];
        for (l, w) in pca.eigenvalues.iter().zip(want) {
            assert!((l - w).abs() < 0.1 * w, "{pca:?}");
        }
    }

    #[test]
    fn shift_statistics() {
        let pca = PcaColour::from_pixels(correlated_pixels(2000, 2).into_iter()).unwrap();
        let std = 0.1f32;
        let mut rng = StdRng::seed_from_u64(99);
        let n = 20_000;
        let shifts: Vec<[f64; 3]> = (0..n)
            .map(|_| {
                pca.shift(PcaColour::sample_alpha(&mut rng, std))
                    .map(f64::from)
            })
            .collect();
        let l = pca.eigenvalues.map(f64::from);
        let v = pca.eigenvectors.map(|r| r.map(f64::from));
        let s2 = f64::from(std) * f64::from(std);
        // Expected covariance std^2 V diag(L^2) V^T (rows of `v` are the eigenvectors).
        let want: [[f64; 3]; 3] = std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                s2 * (0..3).map(|k| l[k] * l[k] * v[k][i] * v[k][j]).sum::<f64>()
            })
        });
        let mean: [f64; 3] =
            std::array::from_fn(|k| shifts.iter().map(|s| s[k]).sum::<f64>() / n as f64);
        for k in 0..3 {
            let sigma = (want[k][k] / n as f64).sqrt();
            assert!(mean[k].abs() < 4.0 * sigma, "mean {mean:?}");
        }
        let got = covariance(&shifts);
        for i in 0..3 {
            for j in 0..3 {
                let scale = (want[i][i] * want[j][j]).sqrt();
                assert!(
                    (got[i][j] - want[i][j]).abs() < 0.04 * scale,
                    "cov[{i}][{j}] {} vs {}",
                    got[i][j],
                    want[i][j]
                );
            }
        }
    }

    #[test]
    fn apply_adds_the_shift_to_every_pixel() {
        let pca = PcaColour {
            eigenvalues: [2.0, 1.0, 0.5],
            eigenvectors: [[0.6, 0.8, 0.0], [-0.8, 0.6, 0.0], [0.0, 0.0, 1.0]],
        };
        let alpha = [0.5, -1.0, 2.0];
        let s = pca.shift(alpha);
        // 0.5 * 2 * p0 - 1 * 1 * p1 + 2 * 0.5 * p2.
        let want = [0.6 + 0.8, 0.8 - 0.6, 1.0];
        for k in 0..3 {
            assert!((s[k] - want[k]).abs() < 1e-6, "{s:?}");
        }
        let shape = Shape::new(3, 2, 3);
        let src = ramp(shape);
        let mut img = src.clone();
        pca.apply(&mut img, shape, alpha).unwrap();
        for (i, (a, b)) in img.iter().zip(&src).enumerate() {
            assert_eq!(*a, b + s[i / 6]);
        }
        assert_eq!(pca.shift([0.0; 3]), [0.0; 3]);
    }

    #[test]
    fn augment_train_and_eval() {
        let shape = Shape::new(3, 10, 12);
        let src = ramp(shape);
        let pca = PcaColour::from_pixels(correlated_pixels(500, 4).into_iter()).unwrap();
        let aug = Augment::paper((6, 7), Some(pca));
        assert_eq!(
            aug.eval(&src, shape).unwrap(),
            center_crop(&src, shape, 6, 7).unwrap()
        );
        assert_eq!(aug.out_shape(shape), Shape::new(3, 6, 7));

        // Deterministic given the seed, and different patches for different draws.
        let a = aug
            .train(&src, shape, &mut StdRng::seed_from_u64(8))
            .unwrap();
        let b = aug
            .train(&src, shape, &mut StdRng::seed_from_u64(8))
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 3 * 6 * 7);

        // Reproduce train() by hand: crop, coin, alpha, in that order.
        let mut rng = StdRng::seed_from_u64(21);
        let mut mirrored = 0;
        for _ in 0..200 {
            let mut twin = rng.clone();
            let got = aug.train(&src, shape, &mut rng).unwrap();
            let (mut want, _) = random_crop(&src, shape, 6, 7, &mut twin).unwrap();
            if twin.random_bool(0.5) {
                hflip(&mut want, aug.out_shape(shape));
                mirrored += 1;
            }
            let alpha = PcaColour::sample_alpha(&mut twin, 0.1);
            pca.apply(&mut want, aug.out_shape(shape), alpha).unwrap();
            assert_eq!(got, want);
        }
        assert!((70..=130).contains(&mirrored), "{mirrored} of 200 mirrored");

        // Without flips or colour, a training patch is a plain crop of the source.
        let plain = Augment {
            crop: (6, 7),
            flip: false,
            pca: None,
            pca_std: 0.1,
        };
        let mut rng = StdRng::seed_from_u64(3);
        let mut twin = rng.clone();
        let got = plain.train(&src, shape, &mut rng).unwrap();
        assert_eq!(got, random_crop(&src, shape, 6, 7, &mut twin).unwrap().0);
        // Works on any channel count when there is no colour augmentation.
        let grey = Shape::new(1, 10, 12);
        assert_eq!(plain.train(&src[..120], grey, &mut rng).unwrap().len(), 42);
    }
}
