//! The backend trait: what a device must do to run a planned network. The CPU backend
//! ([`crate::Cpu`]) implements it here; the CUDA backend implements the same trait with
//! kernels generated for each network's shapes.

use crate::error::Result;
use crate::ir::{Plan, Stage};

/// A device that runs planned networks. Buffers are flat f32 arrays in device memory;
/// activations are NCHW.
pub trait Backend: Send + Sync + 'static {
    /// Device memory holding f32 values.
    type Buffer: Send + Sync;

    /// A short description for logs, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;

    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;
    fn download(&self, buf: &Self::Buffer) -> Result<Vec<f32>>;
    /// A buffer of `len` elements; its contents are unspecified until written.
    fn alloc(&self, len: usize) -> Result<Self::Buffer>;

    /// Readies the backend to run `plan` (CUDA compiles and loads its kernels here), so
    /// that errors surface when a model is built and the first batch is not slow.
    fn prepare(&self, plan: &Plan) -> Result<()> {
        let _ = plan;
        Ok(())
    }

    /// Waits until all work submitted so far has finished (for timing).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Runs one stage of `plan`'s forward pass on `batch` images: reads `input` (the
    /// stage's input, `batch * layer.input.len()` values), writes all of `output`
    /// (`batch * layer.output.len()` values). `params` holds the layer's weight and bias
    /// (empty for layers without parameters).
    fn forward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        input: &Self::Buffer,
        params: &[&Self::Buffer],
        output: &mut Self::Buffer,
    ) -> Result<()>;
}
