//! From a set of labelled images to a network's input, as the paper does it (section 2 and
//! 4.1), for training and for every later use of the trained network.
//!
//! [`Preprocess::fit`] looks at the training set once: the per-pixel mean over up to
//! 1,000 images and the principal components of their RGB colours. It is saved beside
//! the checkpoints ([`Preprocess::save`], `data.safetensors`) with the class names, so
//! that `eval` and `classify` prepare images exactly as training did.
//!
//! Every image becomes `side` x `side` (256 for a 227 or 224 input) with values 0..255;
//! then the mean is subtracted, a patch of the network's input size is cut (random with a
//! flip and a colour shift for training; the centre, or the paper's ten patches, for
//! evaluation), and the values are multiplied by [`Preprocess::scale`] (divided per channel
//! by [`Preprocess::std`]). [`Preprocess::torchvision`] and [`Preprocess::paper`] are
//! presets for ImageNet weights trained elsewhere.
//!
//! [`SyntheticImages`] presents the generated shapes of [`Synthetic`] as [`Images`], so
//! the generated set goes through the same pipeline as an image folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use rayon::prelude::*;

use super::augment::{Augment, ColourMoments, PcaColour};
use super::decode::{decode_rgb, DecodeError};
use super::imagenet;
use super::loader::{chw, mean_image, Images, LoadReport, Transform};
use super::patch::{Cut, Draw, PatchScale};
use crate::error::{Error, Result};
use crate::ir::Shape;
use crate::synthetic::Synthetic;
use crate::weights::{read_safetensors_with_metadata, write_safetensors, NamedTensor};

/// The `format` metadata of a saved [`Preprocess`] whose values are divided by nothing
/// per channel (`std` all ones): what every version reads.
pub const DATA_FORMAT: &str = "alexnet-rs-data/1";

/// The `format` metadata of a saved [`Preprocess`] with per-channel divisors: a version
/// that knows only [`DATA_FORMAT`] refuses it instead of ignoring the divisors.
pub const DATA_FORMAT_STD: &str = "alexnet-rs-data/2";

/// ImageNet's per-channel mean of RGB values in [0, 1], as torchvision normalises inputs
/// for its pretrained models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];

/// ImageNet's per-channel standard deviation of RGB values in [0, 1] (torchvision's).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The file name [`Preprocess`] is saved under, beside a run's `state.safetensors`.
pub const DATA_FILE: &str = "data.safetensors";

/// Pixels (0..255, the mean subtracted, colour-shifted) are divided by 128 so that the
/// inputs lie in about [-1, 1], as He initialisation expects (the paper's N(0, 0.01)
/// initialisation took raw values).
pub const PIXEL_SCALE: f32 = 1.0 / 128.0;

/// The colour augmentation works on pixel values in [0, 1], as the common reference
/// implementations do: the paper's shift `alpha_i * lambda_i` depends on the units, and
/// in 0..255 units (eigenvalues in the thousands) it would swamp the image.
const COLOUR_UNITS: f32 = 1.0 / 255.0;

/// How many images the mean is taken over, and how many the colour statistics.
const MEAN_IMAGES: usize = 1000;
const PCA_IMAGES: usize = 256;

/// How a training set's images become a network's inputs: the rescaled size, the
/// per-pixel mean, the augmentation and the class names.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Images are rescaled to `side` x `side` before cropping.
    pub side: usize,
    /// The network's input patch, `(height, width)`.
    pub crop: (usize, usize),
    /// The per-pixel mean, `3 x side x side` (CHW, 0..255).
    pub mean: Vec<f32>,
    /// The factor applied last (with [`Preprocess::std`]).
    pub scale: f32,
    /// Per-channel divisors applied with `scale`: each value of channel `c` is multiplied
    /// by `scale / std[c]`. `[1.0; 3]` for the paper's preprocessing; ImageNet's standard
    /// deviations (of values in [0, 1]) for torchvision's, see [`Preprocess::torchvision`].
    pub std: [f32; 3],
    /// The training set's colour components, for the colour augmentation, computed on
    /// pixel values in [0, 1] (the mean subtracted).
    pub pca: Option<PcaColour>,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// What the training set was: a folder's path, or the generated set's settings.
    pub source: String,
}

impl Preprocess {
    /// The side images are rescaled to for a network input of `input`: the paper's 256 for
    /// inputs from 224 to 256 (224 in the paper, 227 for this crate's AlexNet), the
    /// paper's proportion 256/224 (rounded up) for other sizes: 37 for 32. An error unless
    /// the input is a square RGB image.
    pub fn side_for(input: Shape) -> Result<usize> {
        if input.c != 3 || input.h != input.w {
            return Err(Error::Invalid(format!(
                "image data needs a network with square RGB input, not {input}"
            )));
        }
        Ok(match input.h {
            224..=256 => 256,
            h => (h * 256).div_ceil(224),
        })
    }

    /// Fits the preprocessing of `images` for a network with input `input`: the mean of up
    /// to 1,000 images spread over the set, and the colour components of up to 256 (the
    /// mean subtracted, values in [0, 1]). Images that do not load are skipped and
    /// reported; an error if none of those the mean is taken over loads.
    pub fn fit(images: &dyn Images, input: Shape, source: &str) -> Result<(Self, LoadReport)> {
        let side = Self::side_for(input)?;
        if images.is_empty() {
            return Err(Error::Invalid(format!("{source}: no images")));
        }
        let (mean, report) = mean_image(images, side, MEAN_IMAGES);
        if report.skipped >= MEAN_IMAGES.min(images.len()) {
            return Err(Error::Invalid(format!(
                "{source}: no image could be read: {}",
                report.brief()
            )));
        }
        let pca = colour_components(images, side, &mean);
        let pre = Preprocess {
            side,
            crop: (input.h, input.w),
            mean,
            scale: PIXEL_SCALE,
            std: [1.0; 3],
            pca,
            classes: images.class_names(),
            source: source.to_string(),
        };
        Ok((pre, report))
    }

    /// torchvision's preprocessing for its ImageNet models (`Resize(256)`,
    /// `CenterCrop(224)`, `ToTensor()`, `Normalize(IMAGENET_MEAN, IMAGENET_STD)`): the
    /// shorter side rescaled to 256 (bilinear), the centre patch of the network's input
    /// size, values in [0, 1] minus ImageNet's per-channel mean, divided by its per-channel
    /// standard deviation; ImageNet's class names. For a network with a square RGB input
    /// of 224 (the side is that of [`Preprocess::side_for`] for other sizes).
    ///
    /// The result differs from torchvision's by the resampling filter (the `image` crate's
    /// triangle filter against Pillow's bilinear one; the rescaled size is the same) and,
    /// when the longer side exceeds the crop by an odd number of pixels, by where the patch
    /// is cut (half a pixel rounded down here, to even there): on three photographs, under
    /// 2% relative L2, a third of an 8-bit level on average (`tests/pretrained.rs`).
    pub fn torchvision(input: Shape) -> Result<Self> {
        let side = Self::side_for(input)?;
        Ok(Preprocess {
            side,
            crop: (input.h, input.w),
            mean: per_channel(IMAGENET_MEAN.map(|m| 255.0 * m), side),
            scale: 1.0 / 255.0,
            std: IMAGENET_STD,
            pca: None,
            classes: imagenet::class_names(),
            source: "preset torchvision".into(),
        })
    }

    /// The paper's preprocessing for weights trained on ImageNet elsewhere, as this
    /// project's `train` prepares images (the shorter side rescaled to 256, the centre
    /// patch, the mean subtracted from values in 0..255, then multiplied by
    /// [`PIXEL_SCALE`]), with one difference: the paper subtracts the per-pixel mean of
    /// its training set, which is not shipped, so ImageNet's per-channel mean stands in
    /// for it. ImageNet's class names. Weights trained with another convention (Caffe's
    /// BGR order and unscaled values, for example) need their own preprocessing.
    pub fn paper(input: Shape) -> Result<Self> {
        let side = Self::side_for(input)?;
        Ok(Preprocess {
            side,
            crop: (input.h, input.w),
            mean: per_channel(IMAGENET_MEAN.map(|m| 255.0 * m), side),
            scale: PIXEL_SCALE,
            std: [1.0; 3],
            pca: None,
            classes: imagenet::class_names(),
            source: "preset paper".into(),
        })
    }

    /// The factor each channel's values are multiplied by last: `scale / std[c]`.
    fn channel_scale(&self) -> [f32; 3] {
        self.std.map(|s| self.scale / s)
    }

    /// The shape of a rescaled image, `[3, side, side]`.
    pub fn image_shape(&self) -> Shape {
        Shape::new(3, self.side, self.side)
    }

    /// The shape of one network input, `[3, crop.0, crop.1]`.
    pub fn input_shape(&self) -> Shape {
        Shape::new(3, self.crop.0, self.crop.1)
    }

    /// The paper's augmentation for this set: random crops, flips, and colour shifts along
    /// the set's principal components.
    pub fn augment(&self) -> Augment {
        Augment::paper(self.crop, self.pca)
    }

    /// Checks that the network's input is what this preprocessing makes.
    pub fn expect_input(&self, input: Shape) -> Result<()> {
        if input != self.input_shape() {
            return Err(Error::Invalid(format!(
                "the data were prepared for inputs of {}, the network takes {input}",
                self.input_shape()
            )));
        }
        Ok(())
    }

    /// The training draw of the image at position `pos` of epoch `epoch` of the run
    /// with seed `seed`: a random crop, a coin for the mirror and, when the set has
    /// colour components, a colour shift ([`Draw::train`], with the paper's standard
    /// deviation 0.1). A pure function of its arguments, so a run is reproducible
    /// whatever the number of loader threads, and a GPU gets the same draws.
    pub fn train_draw(&self, seed: u64, epoch: u64, pos: u64) -> Draw {
        let augment = self.augment();
        Draw::train(
            seed,
            epoch,
            pos,
            self.side,
            self.crop,
            augment.pca.as_ref().map(|p| (p, augment.pca_std)),
        )
    }

    /// How training patches are cut: the colour shift is in units of 1/255, then each
    /// channel is multiplied by `scale / std[c]`.
    pub fn train_cut(&self) -> Cut<'_> {
        self.cut(PatchScale {
            units: COLOUR_UNITS,
            scale: self.channel_scale().map(|s| s / COLOUR_UNITS),
        })
    }

    /// How evaluation patches are cut: `(pixel - mean) * scale / std[c]`.
    pub fn eval_cut(&self) -> Cut<'_> {
        self.cut(PatchScale {
            units: 1.0,
            scale: self.channel_scale(),
        })
    }

    fn cut(&self, scale: PatchScale) -> Cut<'_> {
        Cut {
            side: self.side,
            mean: &self.mean,
            crop: self.crop,
            scale,
        }
    }

    /// The training transform of epoch `epoch`: the patch of [`Preprocess::train_draw`]
    /// (mean subtracted, cropped, mirrored, colour-shifted, scaled: [`Cut::patches`], the
    /// arithmetic the GPU's augmentation kernel does too).
    pub fn train_transform(&self, seed: u64, epoch: u64) -> Transform {
        let pre = Arc::new(self.clone());
        Arc::new(move |img: Vec<f32>, pos: u64| {
            let draw = pre.train_draw(seed, epoch, pos);
            Self::cut_image(pre.train_cut(), &img, &[draw])
        })
    }

    /// The evaluation transform: mean, centre crop, scale.
    pub fn eval_transform(&self) -> Transform {
        let pre = Arc::new(self.clone());
        let draw = Draw::centre(self.side, self.crop);
        Arc::new(move |img: Vec<f32>, _| Self::cut_image(pre.eval_cut(), &img, &[draw]))
    }

    /// The paper's test-time transform: mean, then the ten patches (four corners and the
    /// centre, and their mirror images), scaled and concatenated in that order.
    pub fn ten_crop_transform(&self) -> Transform {
        let pre = Arc::new(self.clone());
        let draws = Draw::ten_crops(self.side, self.crop);
        Arc::new(move |img: Vec<f32>, _| Self::cut_image(pre.eval_cut(), &img, &draws))
    }

    /// The patches of `draws` from `img` (CHW, `3 x side x side`, 0..255). An image or
    /// crop of the wrong size (a bug of the caller: the loaders load at `side`) gives
    /// zeros, as many as the patches hold.
    fn cut_image(cut: Cut<'_>, img: &[f32], draws: &[Draw]) -> Vec<f32> {
        let side = cut.side;
        let zeros = || vec![0.0; draws.len() * cut.patch_len()];
        if img.len() != 3 * side * side {
            return zeros();
        }
        let row = |c: usize, y: usize, x0: usize, dst: &mut [f32]| {
            let at = (c * side + y) * side + x0;
            dst.copy_from_slice(&img[at..at + dst.len()]);
        };
        cut.patches(row, draws).unwrap_or_else(|_| zeros())
    }

    /// One image file decoded as the transforms take it: `side` x `side`, CHW, 0..255
    /// (then [`Preprocess::eval_transform`] or [`Preprocess::ten_crop_transform`]).
    pub fn load_file(&self, path: &Path) -> std::result::Result<Vec<f32>, DecodeError> {
        let img = decode_rgb(path, self.side)?;
        Ok(chw(&img).map(f32::from).collect())
    }

    /// Writes the preprocessing to a safetensors file, atomically: the tensor `mean`, the
    /// colour components `pca.eigenvalues` and `pca.eigenvectors` (rows), and metadata
    /// for the rest.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = vec![NamedTensor {
            name: "mean".into(),
            shape: vec![3, self.side, self.side],
            data: self.mean.clone(),
        }];
        if let Some(p) = &self.pca {
            tensors.push(NamedTensor {
                name: "pca.eigenvalues".into(),
                shape: vec![3],
                data: p.eigenvalues.to_vec(),
            });
            tensors.push(NamedTensor {
                name: "pca.eigenvectors".into(),
                shape: vec![3, 3],
                data: p.eigenvectors.iter().flatten().copied().collect(),
            });
        }
        let meta = HashMap::from(
            [
                (
                    "format",
                    if self.std == [1.0; 3] {
                        DATA_FORMAT
                    } else {
                        DATA_FORMAT_STD
                    }
                    .to_string(),
                ),
                ("side", self.side.to_string()),
                ("crop", format!("{}x{}", self.crop.0, self.crop.1)),
                ("scale", format!("{:?}", self.scale)),
                ("std", self.std.map(|s| format!("{s:?}")).join(",")),
                ("classes", self.classes.join("\n")),
                ("source", self.source.clone()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        write_safetensors(path, &tensors, Some(meta))
    }

    /// Reads what [`Preprocess::save`] wrote; anything missing or inconsistent is an error
    /// naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let (tensors, meta) = read_safetensors_with_metadata(path)?;
        // A valid safetensors file that is not a usable data file.
        let bad = |message: String| Error::Content {
            path: Some(path.to_path_buf()),
            message,
        };
        let format = meta.get("format").map(String::as_str);
        if format != Some(DATA_FORMAT) && format != Some(DATA_FORMAT_STD) {
            return Err(bad(format!(
                "not a data preprocessing file (metadata `format` should be `{DATA_FORMAT}` or `{DATA_FORMAT_STD}`)"
            )));
        }
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(format!("metadata `{k}` is missing")))
        };
        let num = |k: &str, v: &str| -> Result<usize> {
            v.parse()
                .map_err(|_| bad(format!("metadata `{k}` = `{v}` is not a size")))
        };
        let side = num("side", get("side")?)?;
        let crop = get("crop")?;
        let (h, w) = crop
            .split_once('x')
            .ok_or_else(|| bad(format!("metadata `crop` = `{crop}` is not HxW")))?;
        let crop = (num("crop", h)?, num("crop", w)?);
        if side == 0 || crop.0 > side || crop.1 > side || crop.0 == 0 || crop.1 == 0 {
            return Err(bad(format!(
                "crop {}x{} does not fit images of side {side}",
                crop.0, crop.1
            )));
        }
        let scale: f32 = get("scale")?
            .parse()
            .ok()
            .filter(|s: &f32| s.is_finite() && *s > 0.0)
            .ok_or_else(|| bad("metadata `scale` is not a positive number".into()))?;
        // Files written before per-channel divisors existed have none: ones.
        let std = match meta.get("std") {
            None => [1.0; 3],
            Some(v) => v
                .split(',')
                .map(|p| p.trim().parse::<f32>().ok())
                .collect::<Option<Vec<f32>>>()
                .and_then(|p| <[f32; 3]>::try_from(p).ok())
                .filter(|p| p.iter().all(|s| s.is_finite() && *s > 0.0))
                .ok_or_else(|| {
                    bad(format!(
                        "metadata `std` = `{v}` is not three positive numbers"
                    ))
                })?,
        };
        let classes: Vec<String> = get("classes")?.lines().map(str::to_string).collect();
        let find = |name: &str, shape: &[usize]| -> Result<Option<Vec<f32>>> {
            match tensors.iter().find(|t| t.name == name) {
                None => Ok(None),
                Some(t) if t.shape == shape => Ok(Some(t.data.clone())),
                Some(t) => Err(bad(format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.shape
                ))),
            }
        };
        let mean = find("mean", &[3, side, side])?
            .ok_or_else(|| bad("tensor `mean` is missing".into()))?;
        let pca = match (
            find("pca.eigenvalues", &[3])?,
            find("pca.eigenvectors", &[3, 3])?,
        ) {
            (Some(l), Some(v)) => Some(PcaColour {
                eigenvalues: [l[0], l[1], l[2]],
                eigenvectors: [[v[0], v[1], v[2]], [v[3], v[4], v[5]], [v[6], v[7], v[8]]],
            }),
            (None, None) => None,
            _ => return Err(bad("only half of the colour components are present".into())),
        };
        Ok(Preprocess {
            side,
            crop,
            mean,
            scale,
            std,
            pca,
            classes,
            source: get("source")?.clone(),
        })
    }
}

/// The principal components of the RGB colours (values in [0, 1], `mean` subtracted) of up
/// to 256 images spread over `images`, loaded at `side`; `None` when none loads. Each
/// image's moments are taken in parallel and merged in image order, so the result does
/// not depend on the number of threads.
pub(crate) fn colour_components(
    images: &dyn Images,
    side: usize,
    mean: &[f32],
) -> Option<PcaColour> {
    let plane = side * side;
    let step = images.len().div_ceil(PCA_IMAGES).max(1);
    let parts: Vec<Option<ColourMoments>> = (0..images.len())
        .step_by(step)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|i| {
            let img = images.load(i, side).ok()?;
            let mut m = ColourMoments::default();
            for (p, px) in img.as_raw().chunks_exact(3).enumerate() {
                m.add(std::array::from_fn(|c| {
                    (f32::from(px[c]) - mean[c * plane + p]) * COLOUR_UNITS
                }));
            }
            Some(m)
        })
        .collect();
    let total = parts
        .iter()
        .flatten()
        .fold(ColourMoments::default(), |a, b| a.merge(b));
    PcaColour::from_moments(&total).ok()
}

/// A mean image `3 x side x side` whose every pixel is `rgb`.
fn per_channel(rgb: [f32; 3], side: usize) -> Vec<f32> {
    rgb.iter()
        .flat_map(|&m| std::iter::repeat_n(m, side * side))
        .collect()
}

/// The generated shapes of [`Synthetic`] as [`Images`]: images `start .. start + len` of
/// the set drawn from `seed`, rendered at whatever side they are loaded at, as 8-bit RGB.
#[derive(Clone, Debug)]
pub struct SyntheticImages {
    classes: usize,
    seed: u64,
    start: u64,
    len: usize,
}

impl SyntheticImages {
    /// Images `start .. start + len` of the generated set of `classes` shape kinds drawn
    /// from `seed`. An error for 0 or more than [`Synthetic::MAX_CLASSES`] classes.
    pub fn new(classes: usize, seed: u64, start: u64, len: usize) -> Result<Self> {
        Synthetic::new(classes, 3, 8, 8, seed)?;
        Ok(SyntheticImages {
            classes,
            seed,
            start,
            len,
        })
    }
}

impl Images for SyntheticImages {
    fn len(&self) -> usize {
        self.len
    }

    fn class_names(&self) -> Vec<String> {
        // `new` checked the classes.
        Synthetic::new(self.classes, 3, 8, 8, self.seed)
            .map(|s| s.class_names())
            .unwrap_or_default()
    }

    fn label(&self, i: usize) -> u32 {
        (self.start.wrapping_add(i as u64) % self.classes as u64) as u32
    }

    fn describe(&self, i: usize) -> PathBuf {
        PathBuf::from(format!(
            "generated image {}",
            self.start.wrapping_add(i as u64)
        ))
    }

    fn load(&self, i: usize, side: usize) -> std::result::Result<RgbImage, DecodeError> {
        let set = Synthetic::new(self.classes, 3, side.max(8), side.max(8), self.seed)
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        let (x, _) = set.sample(self.start.wrapping_add(i as u64));
        let s = side.max(8);
        let n = s * s;
        let byte = |v: f32| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
        Ok(RgbImage::from_fn(s as u32, s as u32, |x0, y0| {
            let p = y0 as usize * s + x0 as usize;
            image::Rgb([byte(x[p]), byte(x[n + p]), byte(x[2 * n + p])])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fitted() -> Preprocess {
        let images = SyntheticImages::new(4, 7, 0, 40).unwrap();
        let (pre, report) = Preprocess::fit(&images, Shape::new(3, 32, 32), "generated").unwrap();
        assert_eq!(report.skipped, 0);
        pre
    }

    #[test]
    fn fits_saves_and_loads() {
        let pre = fitted();
        assert_eq!(pre.side, 37);
        for (h, side) in [(224, 256), (227, 256), (256, 256), (32, 37), (300, 343)] {
            assert_eq!(
                Preprocess::side_for(Shape::new(3, h, h)).unwrap(),
                side,
                "{h}"
            );
        }
        assert!(Preprocess::side_for(Shape::new(1, 32, 32)).is_err());
        assert_eq!(pre.classes, ["disk", "square", "triangle", "plus"]);
        assert!(pre.pca.is_some());
        // The mean of generated images is near mid-grey, not zero and not 255.
        let m = pre.mean.iter().sum::<f32>() / pre.mean.len() as f32;
        assert!((60.0..200.0).contains(&m), "{m}");
        let path = std::env::temp_dir().join(format!("alexnet-pre-{}.st", std::process::id()));
        pre.save(&path).unwrap();
        assert_eq!(Preprocess::load(&path).unwrap(), pre);
        std::fs::write(&path, b"nonsense").unwrap();
        assert!(Preprocess::load(&path).is_err());
        // A valid safetensors file that is not a data file is called what it is.
        let t = NamedTensor {
            name: "w".into(),
            shape: vec![1],
            data: vec![0.0],
        };
        write_safetensors(&path, &[t], None).unwrap();
        assert_eq!(
            Preprocess::load(&path).unwrap_err().to_string(),
            format!(
                "{}: not a data preprocessing file (metadata `format` should be `{DATA_FORMAT}` or `{DATA_FORMAT_STD}`)",
                path.display()
            )
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn presets_normalise_per_channel_and_round_trip() {
        let input = Shape::new(3, 224, 224);
        let tv = Preprocess::torchvision(input).unwrap();
        assert_eq!((tv.side, tv.crop), (256, (224, 224)));
        assert_eq!(tv.classes.len(), 1000);
        // A pixel one standard deviation above ImageNet's mean in every channel becomes 1.
        let img: Vec<f32> = (0..3)
            .flat_map(|c| {
                std::iter::repeat_n(255.0 * (IMAGENET_MEAN[c] + IMAGENET_STD[c]), 256 * 256)
            })
            .collect();
        let x = tv.eval_transform()(img.clone(), 0);
        assert_eq!(x.len(), 3 * 224 * 224);
        assert!(x.iter().all(|v| (v - 1.0).abs() < 1e-5), "{:?}", &x[..3]);
        let ten = tv.ten_crop_transform()(img, 0);
        assert!(ten.iter().all(|v| (v - 1.0).abs() < 1e-5));
        // The paper's preset: the mean subtracted, values in 0..255 times 1/128.
        let paper = Preprocess::paper(Shape::new(3, 227, 227)).unwrap();
        assert_eq!(
            (paper.side, paper.crop, paper.std),
            (256, (227, 227), [1.0; 3])
        );
        let img: Vec<f32> = (0..3)
            .flat_map(|c| std::iter::repeat_n(255.0 * IMAGENET_MEAN[c] + 64.0, 256 * 256))
            .collect();
        let x = paper.eval_transform()(img, 0);
        assert!(x.iter().all(|v| (v - 0.5).abs() < 1e-5));
        // Saved and loaded with its divisors; a file without them has ones.
        let path = std::env::temp_dir().join(format!("alexnet-pre-tv-{}.st", std::process::id()));
        tv.save(&path).unwrap();
        assert_eq!(Preprocess::load(&path).unwrap(), tv);
        let (tensors, mut meta) = read_safetensors_with_metadata(&path).unwrap();
        assert_eq!(meta["format"], DATA_FORMAT_STD);
        // A file written before the divisors existed (format 1, no `std`) has ones.
        meta.insert("format".into(), DATA_FORMAT.into());
        meta.remove("std");
        write_safetensors(&path, &tensors, Some(meta.clone())).unwrap();
        assert_eq!(Preprocess::load(&path).unwrap().std, [1.0; 3]);
        for bad in ["1,2", "0,1,1", "nan,1,1", "1,1,1,1", "a,b,c", "-1,1,1"] {
            meta.insert("std".into(), bad.into());
            write_safetensors(&path, &tensors, Some(meta.clone())).unwrap();
            let err = Preprocess::load(&path).unwrap_err().to_string();
            assert!(
                err.contains(&format!("metadata `std` = `{bad}`")),
                "{bad}: {err}"
            );
        }
        // The paper's preprocessing is saved as format 1, which every version reads.
        paper.save(&path).unwrap();
        let (_, meta) = read_safetensors_with_metadata(&path).unwrap();
        assert_eq!(meta["format"], DATA_FORMAT);
        assert!(Preprocess::side_for(Shape::new(3, 224, 200)).is_err());
        assert!(Preprocess::torchvision(Shape::new(1, 224, 224)).is_err());
        let _ = std::fs::remove_file(&path);
    }

    /// Images none of which loads.
    struct Broken;

    impl Images for Broken {
        fn len(&self) -> usize {
            3
        }
        fn class_names(&self) -> Vec<String> {
            vec!["a".into()]
        }
        fn label(&self, _: usize) -> u32 {
            0
        }
        fn describe(&self, i: usize) -> PathBuf {
            PathBuf::from(format!("broken/{i}.png"))
        }
        fn load(&self, _: usize, _: usize) -> std::result::Result<RgbImage, DecodeError> {
            Err(DecodeError::NotAnImage)
        }
    }

    /// No usable image is an error naming the set and the files skipped, not an all-zero
    /// mean.
    #[test]
    fn fitting_a_set_of_broken_images_is_an_error() {
        let err = Preprocess::fit(&Broken, Shape::new(3, 32, 32), "folder:/data/x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "folder:/data/x: no image could be read: 3 file(s) skipped (first: broken/0.png: not a JPEG or PNG image)"
        );
    }

    #[test]
    fn transforms_crop_subtract_and_scale() {
        let pre = fitted();
        let img: Vec<f32> = (0..3 * 37 * 37).map(|i| (i % 251) as f32).collect();
        let centre = pre.eval_transform()(img.clone(), 0);
        assert_eq!(centre.len(), 3 * 32 * 32);
        // Centre offset (2, 2): value (c, y, x) is (img - mean)(c, y + 2, x + 2) / 128.
        for &(c, y, x) in &[(0, 0, 0), (1, 5, 7), (2, 31, 31)] {
            let s = (c * 37 + y + 2) * 37 + x + 2;
            let want = (img[s] - pre.mean[s]) * PIXEL_SCALE;
            assert_eq!(centre[(c * 32 + y) * 32 + x], want);
        }
        let ten = pre.ten_crop_transform()(img.clone(), 0);
        assert_eq!(ten.len(), 10 * 3 * 32 * 32);
        assert_eq!(&ten[4 * 3072..5 * 3072], &centre[..]);
        // The training transform is seeded by (seed, epoch, position).
        let t = pre.train_transform(1, 0);
        assert_eq!(t(img.clone(), 3), t(img.clone(), 3));
        assert_ne!(t(img.clone(), 3), t(img.clone(), 4));
        assert_ne!(t(img.clone(), 3), pre.train_transform(1, 1)(img, 3));
    }
}
