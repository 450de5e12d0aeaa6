//! The backend trait: what a device must do to run a planned network. The CPU backend
//! ([`crate::Cpu`]) implements it here; the CUDA backend implements the same trait with
//! kernels generated for each network's shapes.

use crate::error::Result;
use crate::ir::{Plan, Stage};
use crate::optim::Sgd;
use crate::philox::DropoutMask;

/// A device that runs planned networks. Buffers are flat f32 arrays in device memory;
/// activations are NCHW.
pub trait Backend: Send + Sync + 'static {
    /// Device memory holding f32 values.
    type Buffer: Send + Sync;

    /// A short description for logs, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;

    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;
    fn download(&self, buf: &Self::Buffer) -> Result<Vec<f32>>;
    /// The first `len` values of `buf` (all of it when shorter).
    fn download_prefix(&self, buf: &Self::Buffer, len: usize) -> Result<Vec<f32>> {
        let mut v = self.download(buf)?;
        v.truncate(len);
        Ok(v)
    }
    /// Copies `data` into the start of `buf` (which must hold at least `data.len()`
    /// values).
    fn write(&self, buf: &mut Self::Buffer, data: &[f32]) -> Result<()>;
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

    /// Readies the backend to train `plan` (CUDA compiles the backward, loss, dropout and
    /// optimiser kernels here; inference never pays for them).
    fn prepare_training(&self, plan: &Plan) -> Result<()> {
        let _ = plan;
        Ok(())
    }

    /// The backward pass of one stage on `batch` images. Reads the stage's input `x` and
    /// output `y` (saved by the forward pass; `y` also gives a fused ReLU's mask) and the
    /// gradient `dy` of its output, which it may overwrite. Writes all of `dx`, the
    /// gradient of the input, when given (the first learned layer needs none), and
    /// overwrites `dparams`, the gradients of the weight and the bias (learned layers).
    /// Dropout stages go through [`Backend::dropout`] instead.
    #[allow(clippy::too_many_arguments)]
    fn backward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        x: &Self::Buffer,
        y: &Self::Buffer,
        dy: &mut Self::Buffer,
        params: &[&Self::Buffer],
        dx: Option<&mut Self::Buffer>,
        dparams: &mut [&mut Self::Buffer],
    ) -> Result<()>;

    /// Training-time (inverted) dropout of the dropout stage `stage` on `batch` images:
    /// `output[i] = keep(i) ? input[i] / (1 - p) : 0`, `keep` drawn by Philox4x32-10 from
    /// `mask` and the layer's index (see [`crate::philox`]). The same call with the same
    /// mask is the stage's backward pass (from `dy` to `dx`).
    fn dropout(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        mask: DropoutMask,
        input: &Self::Buffer,
        output: &mut Self::Buffer,
    ) -> Result<()>;

    /// Softmax cross-entropy of `batch` rows of `classes` logits against `labels` (class
    /// indices stored as f32, validated by the caller), fused and numerically stable:
    /// writes `dlogits = (softmax - onehot) / batch` and `stats = [sum of the losses,
    /// top-1 correct, top-5 correct]` (ties count against the label).
    #[allow(clippy::too_many_arguments)]
    fn softmax_cross_entropy(
        &self,
        plan: &Plan,
        batch: usize,
        classes: usize,
        logits: &Self::Buffer,
        labels: &Self::Buffer,
        dlogits: &mut Self::Buffer,
        stats: &mut Self::Buffer,
    ) -> Result<()>;

    /// One SGD step over every parameter of `plan`, in [`Plan::params`] order: for each
    /// tensor `w` with momentum `v`, gradient `g` and learning-rate multiplier `m`,
    /// `v <- momentum v - weight_decay lr m w - lr m g; w <- w + v` (see
    /// [`crate::optim`]). On CUDA one fused kernel updates all of them.
    fn sgd_step(
        &self,
        plan: &Plan,
        sgd: Sgd,
        lr_mults: &[f32],
        params: &mut [&mut Self::Buffer],
        velocity: &mut [&mut Self::Buffer],
        grads: &[&Self::Buffer],
    ) -> Result<()>;

    /// Says how this backend reads `other`'s buffers in the exchanges of
    /// [`crate::Towers`], e.g. `same memory`, or for CUDA direct reads (one GPU) or peer
    /// copies (two GPUs).
    fn connect(&self, other: &Self) -> Result<String> {
        let _ = other;
        Ok("same memory".into())
    }

    /// The forward exchange of a tower ([`crate::Towers`]) before `layer` of its plan
    /// `plan`, a layer that reads both towers ([`Plan::gathers`]): writes `whole`, the
    /// layer's input for `batch` images (the towers' outputs of the previous layer side
    /// by side, tower 0's first), from this tower's output `own` and the other tower's
    /// `other`. `other` may belong to another backend of the same kind (the other
    /// tower's GPU); the copy is ordered after the work that wrote it, without waiting
    /// for the whole device. The other tower must keep `other` until this tower's work
    /// so far has finished ([`Backend::synchronize`]).
    #[allow(clippy::too_many_arguments)]
    fn gather(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        own: &Self::Buffer,
        other: &Self::Buffer,
        whole: &mut Self::Buffer,
    ) -> Result<()>;

    /// The backward exchange after `layer` (as in [`Backend::gather`]), on the sending
    /// tower: writes `packed`, the other tower's part of `dx` (the gradient of `layer`'s
    /// whole input, `batch` images), contiguous, for the other tower's
    /// [`Backend::reduce_gradient`].
    fn pack_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &Self::Buffer,
        packed: &mut Self::Buffer,
    ) -> Result<()>;

    /// The backward exchange after `layer`, on the receiving tower: writes `dy`, the
    /// gradient of this tower's output of the previous layer, as this tower's part of its
    /// own `dx` plus `received`, what the other tower packed for it (which may belong to
    /// the other tower's backend, as in [`Backend::gather`]).
    #[allow(clippy::too_many_arguments)]
    fn reduce_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &Self::Buffer,
        received: &Self::Buffer,
        dy: &mut Self::Buffer,
    ) -> Result<()>;
}

/// Checks that `layer` of `plan` gathers two towers ([`Plan::gathers`]) and that
/// buffers of the given lengths (values, and whether each holds a part or the whole
/// input) hold `batch` images, for backend `who`. Returns (this tower, values per image of
/// a part).
pub(crate) fn check_exchange(
    who: &str,
    plan: &Plan,
    layer: usize,
    batch: usize,
    buffers: &[(&str, usize, bool)],
) -> Result<(usize, usize)> {
    let err = |m: String| crate::error::Error::Backend(format!("{who}: {m}"));
    let tower = match plan.tower {
        Some(t) if t.of == 2 && plan.gathers(layer) => t.index,
        _ => {
            return Err(err(format!(
                "`{}` layer {layer} is not a two-tower exchange",
                plan.name
            )))
        }
    };
    let part = plan.layers[layer - 1].output.len();
    for &(what, len, whole) in buffers {
        let want = batch * part * if whole { 2 } else { 1 };
        if len < want {
            return Err(err(format!(
                "exchange before {}: {what} holds {len} values, {want} needed",
                plan.layers[layer].name
            )));
        }
    }
    Ok((tower, part))
}

/// Checks the arguments of [`Backend::sgd_step`] for backend `who`: one parameter,
/// momentum, gradient and learning-rate multiplier per tensor of `plan` (`counts`), and
/// buffers holding at least their tensor (`lens(i)`: the lengths of tensor i's parameter,
/// momentum and gradient buffers). Returns the tensors' specs.
pub(crate) fn check_sgd_args(
    who: &str,
    plan: &Plan,
    counts: [usize; 4],
    lens: impl Fn(usize) -> [usize; 3],
) -> Result<Vec<crate::ir::ParamSpec>> {
    let specs = plan.params();
    let n = specs.len();
    if counts != [n; 4] {
        let [p, v, g, m] = counts;
        return Err(crate::error::Error::Backend(format!(
            "{who}: sgd over {n} tensors got {p} parameters, {v} momenta, {g} gradients, {m} multipliers"
        )));
    }
    for (i, spec) in specs.iter().enumerate() {
        for (what, len) in ["", " momentum", " gradient"].iter().zip(lens(i)) {
            if len < spec.len() {
                return Err(crate::error::Error::Backend(format!(
                    "{who}: {}{what} buffer holds {len} values, {} needed",
                    spec.name,
                    spec.len()
                )));
            }
        }
    }
    Ok(specs)
}
