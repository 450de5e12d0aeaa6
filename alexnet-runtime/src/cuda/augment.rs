//! Patches cut from 8-bit images on the GPU: the generated kernel of
//! `kernels_templates/augment.cuh` (one per image side, patch size and patches per
//! image, compiled on first use and kept), fed the batch's draws as a few floats each.

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use super::binder::Binder;
use super::device::Cuda;
use super::launch::{Kernel, Loaded};
use crate::backend::{Augment, Memory};
use crate::data::patch::{CutShape, Draw, DRAW_FLOATS};
use crate::error::{Error, Result};
use crate::ir::Shape;

impl Cuda {
    /// The augmentation kernel cutting `per_image` patches of `shape` from each image,
    /// generated and loaded the first time.
    fn augment_kernel(&self, shape: CutShape, per_image: usize) -> Result<Arc<Loaded>> {
        let key = (shape.side, shape.crop, per_image);
        let mut loaded = self
            .augment
            .lock()
            .map_err(|_| Error::Internal("cuda: module cache poisoned".into()))?;
        if let Some(l) = loaded.get(&key) {
            return Ok(l.clone());
        }
        let input = Shape::new(3, shape.crop.0, shape.crop.1);
        let spec = alexnet_core::cuda::augment::augment(input, shape.side, per_image)
            .map_err(Error::Invalid)?;
        let l = Arc::new(self.load(&[spec])?);
        loaded.insert(key, l.clone());
        Ok(l)
    }
}

impl Augment for Cuda {
    fn cut_batch(
        &self,
        shape: CutShape,
        mean: &CudaSlice<f32>,
        images: &CudaSlice<u8>,
        draws: &[Draw],
        per_image: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = shape.check(images.len(), draws, per_image, out.len())?;
        if n == 0 {
            return Ok(());
        }
        if mean.len() != 3 * shape.side * shape.side {
            return Err(Error::Invalid(format!(
                "{}: augment: a mean of {} values for 3x{2}x{2} images",
                self.label(),
                mean.len(),
                shape.side
            )));
        }
        // The kernel indexes in 64 bits; its image count is an `int`, and its grid (one
        // thread per output value, 256 per block) must fit in a grid's 2^31 - 1 blocks.
        let values = (n * per_image * shape.patch_len()) as u64;
        let batch = i32::try_from(n)
            .ok()
            .filter(|_| values.div_ceil(256) <= i32::MAX as u64)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "cuda: augment: {n} images of {per_image} patches are too many for one launch"
                ))
            })?;
        let mut floats = Vec::with_capacity(draws.len() * DRAW_FLOATS);
        for d in draws {
            floats.extend_from_slice(&d.to_kernel(shape.side, shape.crop)?);
        }
        let floats = self.upload(&floats)?;
        let loaded = self.augment_kernel(shape, per_image)?;
        let kernel: &Kernel = loaded
            .all()
            .first()
            .ok_or_else(|| Error::Internal("cuda: augment kernel not loaded".into()))?;
        let [r, g, b] = shape.scale.scale;
        let binder = Binder::new()
            .bytes("images", images)
            .read("draws", &floats)
            .read("mean", mean)
            .write("out", out)
            .float("units", shape.scale.units)
            .float("scale_r", r)
            .float("scale_g", g)
            .float("scale_b", b)
            .int("batch", batch);
        self.launch(kernel, n, binder)
    }
}
