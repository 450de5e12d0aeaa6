//! Network inputs cut from stored images, as both backends compute them: the paper's
//! augmentation and test crops, with every random choice drawn beforehand.
//!
//! A [`Draw`] says where one patch comes from: the top-left corner of the crop in the
//! stored `side` x `side` image, whether it is mirrored, and the colour shift added to
//! each channel. The training draws are a pure function of `(seed, epoch, position in
//! the epoch)` (Philox4x32-10, as dropout's), so a run is reproducible whatever the
//! number of loader threads, and the host can hand them to a GPU kernel in a few bytes
//! per image. Every value of a patch is then
//!
//! ```text
//! out[c, y, x] = ((pixel[c, y0 + y, x0 + x'] - mean[c, y0 + y, x0 + x']) * units + shift[c]) * scale[c]
//! ```
//!
//! with `x' = x`, or `crop_w - 1 - x` when mirrored, in f32, one rounding per operation
//! and no fused multiply-add, in this order. [`Cut::patches`] computes it on the CPU from
//! images in any layout; `kernels_templates/augment.cuh` computes it on the GPU from a
//! batch of prepared 8-bit images ([`Cut::batch`] is its CPU twin, which the host
//! emulation of the kernel is compared with, bit for bit). The image transforms of
//! `data::pipeline::Preprocess` (training, centre crop, ten crops) are all this one
//! function.

use super::augment::PcaColour;
use crate::error::{Error, Result};
use crate::philox::philox4x32_10;

/// The word of Philox's counter that tells the augmentation's draws from dropout's
/// (dropout puts a layer index there, far below this).
const AUGMENT_STREAM: u32 = 0xA060_0000;

/// Where one patch comes from: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// Row of the patch's top-left corner in the stored image.
    pub y: usize,
    /// Column of the patch's top-left corner.
    pub x: usize,
    /// Mirrored left to right.
    pub flip: bool,
    /// Added to channel `c` (after the mean is subtracted and the units applied).
    pub shift: [f32; 3],
}

impl Draw {
    /// The training draw of the image at position `pos` of epoch `epoch` of the run with
    /// seed `seed`: a crop offset uniform over every position of a `crop` patch in a
    /// `side` x `side` image (rows, then columns), a fair coin for the mirror, and with
    /// `pca`, the colour shift [`PcaColour::shift`] of three independent `N(0, std)`
    /// draws. `crop` must fit in `side` (else the offset is 0).
    pub fn train(
        seed: u64,
        epoch: u64,
        pos: u64,
        side: usize,
        crop: (usize, usize),
        pca: Option<(&PcaColour, f32)>,
    ) -> Draw {
        let key = [seed as u32, (seed >> 32) as u32];
        let counter = |stream: u32| [pos as u32, (pos >> 32) as u32, epoch as u32, stream];
        let a = philox4x32_10(counter(AUGMENT_STREAM), key);
        // Lemire's multiply-shift: r * n / 2^32, uniform to within n / 2^32.
        let below = |r: u32, n: usize| ((u64::from(r) * n as u64) >> 32) as usize;
        let y = below(a[0], side.saturating_sub(crop.0) + 1);
        let x = below(a[1], side.saturating_sub(crop.1) + 1);
        let flip = a[2] & 1 == 1;
        let shift = match pca {
            Some((pca, std)) => {
                let b = philox4x32_10(counter(AUGMENT_STREAM + 1), key);
                let z = box_muller(b);
                pca.shift(z.map(|z| z * std))
            }
            None => [0.0; 3],
        };
        Draw { y, x, flip, shift }
    }

    /// The centre patch (rounded down), not mirrored, no colour shift.
    pub fn centre(side: usize, crop: (usize, usize)) -> Draw {
        Draw {
            y: side.saturating_sub(crop.0) / 2,
            x: side.saturating_sub(crop.1) / 2,
            flip: false,
            shift: [0.0; 3],
        }
    }

    /// The paper's ten test patches: top-left, top-right, bottom-left, bottom-right and
    /// centre, then the same five mirrored (as [`super::augment::ten_crops`]).
    pub fn ten_crops(side: usize, crop: (usize, usize)) -> [Draw; 10] {
        let (dy, dx) = (side.saturating_sub(crop.0), side.saturating_sub(crop.1));
        let at = [(0, 0), (0, dx), (dy, 0), (dy, dx), (dy / 2, dx / 2)];
        std::array::from_fn(|i| Draw {
            y: at[i % 5].0,
            x: at[i % 5].1,
            flip: i >= 5,
            shift: [0.0; 3],
        })
    }

    /// An error unless a `crop` patch at this draw's corner lies inside a `side` x `side`
    /// image and its shift is finite: checked before anything reads an image with it.
    pub fn check(&self, side: usize, crop: (usize, usize)) -> Result<()> {
        if crop.0 == 0 || crop.1 == 0 || self.y + crop.0 > side || self.x + crop.1 > side {
            return Err(Error::Invalid(format!(
                "a {}x{} patch at (y {}, x {}) leaves the {side}x{side} image",
                crop.0, crop.1, self.y, self.x
            )));
        }
        if !self.shift.iter().all(|s| s.is_finite()) {
            return Err(Error::Invalid(format!(
                "colour shift {:?} is not finite",
                self.shift
            )));
        }
        Ok(())
    }

    /// The draw as the GPU kernel reads it: `[y, x, flip, shift_r, shift_g, shift_b, 0,
    /// 0]` (the integers as floats, exact below 2^24), once [`Draw::check`] says that a
    /// `crop` patch at it lies inside a `side` x `side` image: the kernel itself does not
    /// check (it reads where the draw says).
    pub fn to_kernel(&self, side: usize, crop: (usize, usize)) -> Result<[f32; DRAW_FLOATS]> {
        self.check(side, crop)?;
        Ok([
            self.y as f32,
            self.x as f32,
            if self.flip { 1.0 } else { 0.0 },
            self.shift[0],
            self.shift[1],
            self.shift[2],
            0.0,
            0.0,
        ])
    }
}

/// Floats per draw in the GPU kernel's `draws` buffer (`kernels_templates/augment.cuh`).
pub use alexnet_core::cuda::augment::DRAW_FLOATS;

/// Three standard normal values from four uniform 32-bit draws (Box-Muller, in f64).
fn box_muller(r: [u32; 4]) -> [f32; 3] {
    let u = |v: u32| (f64::from(v) + 0.5) / 4_294_967_296.0;
    let pair = |a: u32, b: u32| {
        let radius = (-2.0 * u(a).ln()).sqrt();
        let angle = std::f64::consts::TAU * u(b);
        (radius * angle.cos(), radius * angle.sin())
    };
    let (z0, z1) = pair(r[0], r[1]);
    let (z2, _) = pair(r[2], r[3]);
    [z0 as f32, z1 as f32, z2 as f32]
}

/// The factors of a patch's values: `((pixel - mean) * units + shift[c]) * scale[c]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatchScale {
    /// Applied to the mean-subtracted pixel before the colour shift (the units the shift
    /// is in: 1/255 for training, 1 for evaluation, where there is no shift).
    pub units: f32,
    /// Applied last, per channel.
    pub scale: [f32; 3],
}

/// What every patch of a batch shares: the side of the stored (square, RGB) images, their
/// per-pixel `mean` (CHW, `3 x side x side`, 0..255), the patch size `crop` (rows,
/// columns) and the factors of the values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cut<'a> {
    pub side: usize,
    pub mean: &'a [f32],
    pub crop: (usize, usize),
    pub scale: PatchScale,
}

/// A [`Cut`] without its mean: what a backend that holds the mean itself needs
/// (`backend::Augment`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CutShape {
    pub side: usize,
    pub crop: (usize, usize),
    pub scale: PatchScale,
}

impl CutShape {
    /// Values per patch: `3 * crop.0 * crop.1`.
    pub fn patch_len(&self) -> usize {
        3 * self.crop.0 * self.crop.1
    }

    /// This shape with the mean `mean` (CHW, `3 x side x side`).
    pub fn with_mean(self, mean: &[f32]) -> Cut<'_> {
        Cut {
            side: self.side,
            mean,
            crop: self.crop,
            scale: self.scale,
        }
    }

    /// Checks a batch of [`Cut::batch`]: `images_len` bytes of whole `side` x `side` RGB
    /// images, `per_image` draws for each (each inside its image, [`Draw::check`]), an
    /// output of at least the patches' `draws.len() * patch_len()` values. Returns the
    /// number of images.
    pub fn check(
        &self,
        images_len: usize,
        draws: &[Draw],
        per_image: usize,
        out_len: usize,
    ) -> Result<usize> {
        let side = self.side;
        let size = 3 * side * side;
        if size == 0 || per_image == 0 || !images_len.is_multiple_of(size) {
            return Err(Error::Invalid(format!(
                "augment: {images_len} bytes are not whole {side}x{side} RGB images"
            )));
        }
        let n = images_len / size;
        if draws.len() != n * per_image {
            return Err(Error::Invalid(format!(
                "augment: {} draws for {n} images of {per_image} patches",
                draws.len()
            )));
        }
        for d in draws {
            d.check(side, self.crop)?;
        }
        let needed = draws.len() * self.patch_len();
        if out_len < needed {
            return Err(Error::BufferTooSmall {
                what: "augment: output".into(),
                len: out_len,
                needed,
            });
        }
        Ok(n)
    }
}

impl Cut<'_> {
    /// Values per patch: `3 * crop.0 * crop.1`.
    pub fn patch_len(&self) -> usize {
        self.shape().patch_len()
    }

    /// Everything but the mean.
    pub fn shape(&self) -> CutShape {
        CutShape {
            side: self.side,
            crop: self.crop,
            scale: self.scale,
        }
    }

    /// One patch (CHW) per draw from the image whose row segments `row(c, y, x0, dst)`
    /// reads (the `dst.len()` pixels of channel `c`, row `y`, from column `x0`, values
    /// 0..255, into `dst`): the formula of the module documentation. Errors when a draw
    /// leaves the image or the mean has the wrong length.
    pub fn patches(
        &self,
        row: impl Fn(usize, usize, usize, &mut [f32]),
        draws: &[Draw],
    ) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; draws.len() * self.patch_len()];
        self.patches_into(&row, draws, &mut out)?;
        Ok(out)
    }

    /// [`Cut::patches`] into `out` (exactly `draws.len() * patch_len()` values).
    fn patches_into(
        &self,
        row: &impl Fn(usize, usize, usize, &mut [f32]),
        draws: &[Draw],
        out: &mut [f32],
    ) -> Result<()> {
        let (side, mean, crop, f) = (self.side, self.mean, self.crop, self.scale);
        if mean.len() != 3 * side * side {
            return Err(Error::Invalid(format!(
                "patches: a mean of {} values for 3x{side}x{side} images",
                mean.len()
            )));
        }
        let (ch, cw) = crop;
        if out.len() != draws.len() * self.patch_len() {
            return Err(Error::BufferTooSmall {
                what: "patches: output".into(),
                len: out.len(),
                needed: draws.len() * self.patch_len(),
            });
        }
        // One source row segment at a time, gathered first so that the arithmetic runs
        // over plain slices (vectorised).
        let mut src = vec![0.0f32; cw];
        for (d, dst) in draws.iter().zip(out.chunks_exact_mut(self.patch_len())) {
            d.check(side, crop)?;
            for c in 0..3 {
                let (units, shift, scale) = (f.units, d.shift[c], f.scale[c]);
                let value = |v: f32, m: f32| ((v - m) * units + shift) * scale;
                for (y, out_row) in dst[c * ch * cw..(c + 1) * ch * cw]
                    .chunks_exact_mut(cw)
                    .enumerate()
                {
                    let sy = d.y + y;
                    let at = (c * side + sy) * side + d.x;
                    let m = &mean[at..at + cw];
                    row(c, sy, d.x, &mut src);
                    // Source column x0 + k lands in column k, or cw - 1 - k when mirrored.
                    if d.flip {
                        for ((o, &v), &m) in out_row.iter_mut().rev().zip(&src).zip(m) {
                            *o = value(v, m);
                        }
                    } else {
                        for ((o, &v), &m) in out_row.iter_mut().zip(&src).zip(m) {
                            *o = value(v, m);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The CPU twin of the generated augmentation kernel: `images` holds `n` prepared
    /// images (HWC, `side * side * 3` bytes each, as a prepared set's shards store them),
    /// `draws` `per_image` draws for each, in order; returns the `n * per_image` patches,
    /// in the draws' order. Errors when the lengths disagree or a draw leaves its image.
    pub fn batch(&self, images: &[u8], draws: &[Draw], per_image: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; draws.len() * self.patch_len()];
        self.batch_into(images, draws, per_image, &mut out)?;
        Ok(out)
    }

    /// [`Cut::batch_into`] with one image per rayon task (the same values: each image's
    /// patches depend on it alone), into the first `draws.len() * patch_len()` values of
    /// `out`, which may be longer.
    pub fn batch_into_parallel(
        &self,
        images: &[u8],
        draws: &[Draw],
        per_image: usize,
        out: &mut [f32],
    ) -> Result<()> {
        use rayon::prelude::*;
        let shape = self.shape();
        let n = shape.check(images.len(), draws, per_image, out.len())?;
        if n == 0 {
            return Ok(());
        }
        let patches = per_image * self.patch_len();
        images
            .par_chunks(images.len() / n)
            .zip(draws.par_chunks(per_image))
            .zip(out[..n * patches].par_chunks_mut(patches))
            .try_for_each(|((img, d), dst)| self.batch_into(img, d, per_image, dst))
    }

    /// [`Cut::batch`] into the first `draws.len() * patch_len()` values of `out`: a loader that
    /// reuses its batch buffers spares the allocation and its page faults, which cost as
    /// much as the arithmetic.
    pub fn batch_into(
        &self,
        images: &[u8],
        draws: &[Draw],
        per_image: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let side = self.side;
        let size = 3 * side * side;
        self.shape()
            .check(images.len(), draws, per_image, out.len())?;
        let patches = per_image * self.patch_len();
        for ((img, d), dst) in images
            .chunks_exact(size)
            .zip(draws.chunks_exact(per_image))
            .zip(out.chunks_exact_mut(patches))
        {
            let row = |c: usize, y: usize, x0: usize, dst: &mut [f32]| {
                let at = (y * side + x0) * 3;
                let src = &img[at..at + 3 * dst.len()];
                for (v, px) in dst.iter_mut().zip(src.chunks_exact(3)) {
                    *v = f32::from(px[c]);
                }
            };
            self.patches_into(&row, d, dst)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_draws_cover_every_offset_and_both_sides_reproducibly() {
        let (side, crop) = (10, (7, 8));
        let mut ys = [0usize; 4];
        let mut xs = [0usize; 3];
        let mut flips = 0;
        for pos in 0..4000 {
            let d = Draw::train(5, 2, pos, side, crop, None);
            assert_eq!(d, Draw::train(5, 2, pos, side, crop, None));
            d.check(side, crop).unwrap();
            ys[d.y] += 1;
            xs[d.x] += 1;
            flips += usize::from(d.flip);
        }
        assert!(ys.iter().all(|&n| (850..1150).contains(&n)), "{ys:?}");
        assert!(xs.iter().all(|&n| (1150..1520).contains(&n)), "{xs:?}");
        assert!((1850..2150).contains(&flips), "{flips}");
        assert_ne!(
            (0..32)
                .map(|p| Draw::train(5, 2, p, side, crop, None))
                .collect::<Vec<_>>(),
            (0..32)
                .map(|p| Draw::train(5, 3, p, side, crop, None))
                .collect::<Vec<_>>(),
            "another epoch, other draws"
        );
    }

    #[test]
    fn colour_shifts_are_the_components_times_normal_draws() {
        let pca = PcaColour {
            eigenvalues: [0.2, 0.02, 0.002],
            eigenvectors: [[0.58, 0.58, 0.57], [0.7, 0.0, -0.71], [0.41, -0.82, 0.41]],
        };
        let n = 20_000;
        let mut sum = [0.0f64; 3];
        let mut sq = [0.0f64; 3];
        for pos in 0..n {
            let d = Draw::train(1, 0, pos, 8, (8, 8), Some((&pca, 0.1)));
            for c in 0..3 {
                sum[c] += f64::from(d.shift[c]);
                sq[c] += f64::from(d.shift[c]).powi(2);
            }
        }
        // Var(shift_c) = sum_i (p_ic * lambda_i * std)^2.
        for c in 0..3 {
            let want: f64 = (0..3)
                .map(|i| {
                    (f64::from(pca.eigenvectors[i][c]) * f64::from(pca.eigenvalues[i]) * 0.1)
                        .powi(2)
                })
                .sum();
            let mean = sum[c] / n as f64;
            let var = sq[c] / n as f64 - mean * mean;
            assert!(
                (var / want - 1.0).abs() < 0.05,
                "channel {c}: {var} vs {want}"
            );
            assert!(
                mean.abs() < 4.0 * (want / n as f64).sqrt(),
                "channel {c}: mean {mean}"
            );
        }
    }

    /// The one-pass patch is bit for bit the paper's steps one after another, as
    /// `augment` does them: mean subtracted in colour units, crop, mirror, colour
    /// shift, scale.
    #[test]
    fn a_patch_is_the_augment_steps_in_one_pass() {
        use super::super::augment::{crop, hflip};
        use crate::ir::Shape;
        let side = 9;
        let shape = Shape::new(3, side, side);
        let img: Vec<f32> = (0..shape.len()).map(|i| ((i * 37) % 256) as f32).collect();
        let mean: Vec<f32> = (0..shape.len())
            .map(|i| 100.0 + (i % 13) as f32 * 1.7)
            .collect();
        let pca = PcaColour {
            eigenvalues: [0.05, 0.01, 0.001],
            eigenvectors: [[0.58, 0.58, 0.57], [0.7, 0.0, -0.71], [0.41, -0.82, 0.41]],
        };
        let units = 1.0 / 255.0;
        let scale = [0.5 / units, 0.25 / units, 0.125 / units];
        for pos in 0..40 {
            let d = Draw::train(9, 1, pos, side, (6, 7), Some((&pca, 0.1)));
            let centred: Vec<f32> = img
                .iter()
                .zip(&mean)
                .map(|(v, m)| (v - m) * units)
                .collect();
            let mut want = crop(&centred, shape, d.y, d.x, 6, 7).unwrap();
            let out_shape = Shape::new(3, 6, 7);
            if d.flip {
                hflip(&mut want, out_shape);
            }
            for (c, plane) in want.chunks_exact_mut(42).enumerate() {
                plane
                    .iter_mut()
                    .for_each(|v| *v = (*v + d.shift[c]) * scale[c]);
            }
            let row = |c: usize, y: usize, x0: usize, dst: &mut [f32]| {
                let at = (c * side + y) * side + x0;
                dst.copy_from_slice(&img[at..at + dst.len()]);
            };
            let cut = Cut {
                side,
                mean: &mean,
                crop: (6, 7),
                scale: PatchScale { units, scale },
            };
            let got = cut.patches(row, &[d]).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "draw {d:?}");
        }
    }

    #[test]
    fn a_patch_is_the_formula_at_the_mirrored_offset() {
        let side = 6;
        let img: Vec<u8> = (0..side * side * 3).map(|i| (i * 7 % 256) as u8).collect();
        let mean: Vec<f32> = (0..3 * side * side).map(|i| i as f32 * 0.5).collect();
        let d = Draw {
            y: 1,
            x: 2,
            flip: true,
            shift: [0.25, -0.5, 1.0],
        };
        let f = PatchScale {
            units: 0.5,
            scale: [2.0, 3.0, 4.0],
        };
        let cut = Cut {
            side,
            mean: &mean,
            crop: (3, 4),
            scale: f,
        };
        let out = cut.batch(&img, &[d], 1).unwrap();
        for c in 0..3 {
            for y in 0..3 {
                for x in 0..4 {
                    let (sy, sx) = (1 + y, 2 + 3 - x);
                    let v = f32::from(img[(sy * side + sx) * 3 + c]);
                    let m = mean[(c * side + sy) * side + sx];
                    let want = ((v - m) * 0.5 + d.shift[c]) * f.scale[c];
                    assert_eq!(out[(c * 3 + y) * 4 + x], want);
                }
            }
        }
        // A draw that leaves the image, lengths that disagree: errors.
        let out_of = Draw { x: 3, ..d };
        assert!(cut.batch(&img, &[out_of], 1).is_err());
        assert!(cut.batch(&img, &[d, d], 1).is_err());
        assert!(cut.batch(&img[1..], &[d], 1).is_err());
        assert!(cut.batch_into(&img, &[d], 1, &mut [0.0; 35]).is_err());
        let short = Cut {
            mean: &mean[1..],
            ..cut
        };
        assert!(short.batch(&img, &[d], 1).is_err());
    }
}
