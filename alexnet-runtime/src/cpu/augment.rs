//! Patches cut from 8-bit images on the CPU: [`crate::data::patch::Cut::batch`] itself,
//! image by image in parallel, which the GPU's augmentation kernel is checked against.

use super::Cpu;
use crate::backend::Augment;
use crate::data::patch::{CutShape, Draw};
use crate::error::Result;

impl Augment for Cpu {
    fn cut_batch(
        &self,
        shape: CutShape,
        mean: &Vec<f32>,
        images: &Vec<u8>,
        draws: &[Draw],
        per_image: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        shape
            .with_mean(mean)
            .batch_into_parallel(images, draws, per_image, out)
    }
}
