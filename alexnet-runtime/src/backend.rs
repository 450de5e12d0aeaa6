//! What a device must do to run planned networks, split by concern, as candle and burn
//! split theirs, so that a new backend can run inference before it can train, and each
//! user asks only for what it uses:
//!
//! - [`Memory`]: buffers with an element type ([`Element`]: f32, and f16/bf16 beside it),
//!   uploads, downloads, synchronisation;
//! - [`Inference`]: the forward pass of a stage;
//! - [`Training`]: the backward pass, dropout, the fused loss, the SGD update;
//! - [`Exchange`]: the exchanges between the two towers of a split network;
//! - [`Augment`]: network inputs cut from a batch of 8-bit images on the device (a
//!   prepared set's crops, mirrors, mean and colour shift), so that a batch crosses to
//!   the device as bytes;
//! - [`Upload`]: copies of such batches made by a thread of their own, ahead of the step
//!   that uses them, so that a batch crosses while the one before it computes.
//!
//! [`Backend`] is all of them. The CPU backend ([`crate::Cpu`]) is the reference; the
//! CUDA backend ([`crate::Cuda`]) runs each network's generated kernels; [`crate::Device`]
//! is either, chosen at run time. Activations are NCHW.

use crate::data::patch::{CutShape, Draw};
use crate::error::{Error, Result};
use crate::ir::{Elem, Plan, Precision, Stage};
use crate::optim::Sgd;
use crate::philox::DropoutMask;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for u8 {}
}

/// A type a buffer can hold: `f32`, `half::f16`, `half::bf16`, or `u8` (a prepared set's
/// pixels, which [`Augment`] reads). Every backend stores all of them; the layers'
/// kernels are f32 for now (16-bit kernels are the mixed-precision work of a later
/// issue), so 16-bit buffers are only moved, not computed on.
pub trait Element:
    sealed::Sealed
    + Copy
    + Default
    + PartialEq
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
{
    /// The element type, as kernel specs name it.
    const ELEM: Elem;
}

impl Element for f32 {
    const ELEM: Elem = Elem::F32;
}

impl Element for half::f16 {
    const ELEM: Elem = Elem::F16;
}

impl Element for half::bf16 {
    const ELEM: Elem = Elem::Bf16;
}

impl Element for u8 {
    const ELEM: Elem = Elem::U8;
}

/// A device's memory.
pub trait Memory: Send + Sync + 'static {
    /// Device memory holding values of type `T`.
    type Buffer<T: Element>: Send + Sync;

    /// A short description for logs, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;

    /// The device's free and total memory in bytes, where the backend knows them (a GPU);
    /// `None` for the CPU, whose memory the operating system manages.
    fn memory_info(&self) -> Result<Option<(u64, u64)>> {
        Ok(None)
    }

    /// Whether a [`crate::Model`] keeps its forward pass's two activation buffers between
    /// calls, for the next call of the same batch size. True where memory is the host's
    /// (the CPU: a fresh buffer costs a page fault per 4 KiB written); false on a GPU,
    /// whose memory later allocations (a training workspace, another batch size) may need
    /// and whose footprint checks do not count them.
    fn keeps_activations(&self) -> bool {
        false
    }

    /// A buffer of `len` zeros.
    fn alloc<T: Element>(&self, len: usize) -> Result<Self::Buffer<T>>;

    fn upload<T: Element>(&self, data: &[T]) -> Result<Self::Buffer<T>>;

    fn download<T: Element>(&self, buf: &Self::Buffer<T>) -> Result<Vec<T>>;

    /// The first `len` values of `buf` (all of it when shorter).
    fn download_prefix<T: Element>(&self, buf: &Self::Buffer<T>, len: usize) -> Result<Vec<T>> {
        let mut v = self.download(buf)?;
        v.truncate(len);
        Ok(v)
    }

    /// Copies `data` into the start of `buf`, which must hold at least `data.len()` values.
    fn write<T: Element>(&self, buf: &mut Self::Buffer<T>, data: &[T]) -> Result<()>;

    /// Waits until all work submitted so far has finished (for timing, and before a
    /// buffer another device reads is freed).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

/// An f32 buffer of backend `B`.
pub type F32<B> = <B as Memory>::Buffer<f32>;

/// Running a planned network's forward pass.
pub trait Inference: Memory {
    /// The arithmetic of this backend's forward pass (f32 unless it was built with
    /// another, as `Cuda::with_precision` does).
    fn precision(&self) -> Precision {
        Precision::F32
    }

    /// Readies the backend to run `plan` (CUDA loads its kernels here), so that errors
    /// surface when a model is built and the first batch is not slow.
    fn prepare(&self, plan: &Plan) -> Result<()> {
        let _ = plan;
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
        input: &F32<Self>,
        params: &[&F32<Self>],
        output: &mut F32<Self>,
    ) -> Result<()>;
}

/// Whether a trainer takes `precision`: f16 is refused until a loss scale keeps its
/// small gradients from falling below f16's range.
pub(crate) fn check_trains(precision: Precision) -> Result<()> {
    if precision.trains() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "precision {precision} is for inference only: training in it needs a loss scale, which is not built yet; train in bf16 (the same tensor cores, f32's range) or tf32"
        )))
    }
}

/// Training a planned network: the backward pass, dropout, the loss and the optimiser.
pub trait Training: Inference {
    /// Readies the backend to train `plan` (CUDA loads the backward, loss, dropout and
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
    /// Dropout stages go through [`Training::dropout`] instead.
    #[allow(clippy::too_many_arguments)]
    fn backward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        x: &F32<Self>,
        y: &F32<Self>,
        dy: &mut F32<Self>,
        params: &[&F32<Self>],
        dx: Option<&mut F32<Self>>,
        dparams: &mut [&mut F32<Self>],
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
        input: &F32<Self>,
        output: &mut F32<Self>,
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
        logits: &F32<Self>,
        labels: &F32<Self>,
        dlogits: &mut F32<Self>,
        stats: &mut F32<Self>,
    ) -> Result<()>;

    /// Which of `grads` (one per tensor of `plan`, in [`Plan::params`] order) hold a value
    /// that is not finite (NaN or an infinity): one flag per tensor. The trainers call it
    /// between the backward pass and [`Training::sgd_step`], so that a bad step is refused
    /// before it touches the weights or the momentum. On CUDA one kernel per 64 tensors
    /// checks them all and only the flags come back.
    fn non_finite(&self, plan: &Plan, grads: &[&F32<Self>]) -> Result<Vec<bool>>;

    /// One SGD step over every parameter of `plan`, in [`Plan::params`] order: for each
    /// tensor `w` with momentum `v`, gradient `g` and learning-rate multiplier `m`,
    /// `v <- momentum v - weight_decay lr m w - lr m g; w <- w + v` (see
    /// [`crate::optim`]). On CUDA one fused kernel updates all of them.
    fn sgd_step(
        &self,
        plan: &Plan,
        sgd: Sgd,
        lr_mults: &[f32],
        params: &mut [&mut F32<Self>],
        velocity: &mut [&mut F32<Self>],
        grads: &[&F32<Self>],
    ) -> Result<()>;
}

/// The exchanges between the two towers of a split network (`towers::Towers`),
/// each tower on a backend of this kind.
pub trait Exchange: Memory {
    /// Says how this backend reads `other`'s buffers in the exchanges, e.g. `exchanges
    /// through host memory` (the CPU), or for CUDA direct reads (one GPU) or peer copies
    /// (two GPUs); `towers::Towers::links` puts the tower and its device before it.
    fn connect(&self, other: &Self) -> Result<String> {
        let _ = other;
        Ok("exchanges through host memory".into())
    }

    /// The forward exchange of a tower before `layer` of its plan `plan`, a layer that
    /// reads both towers ([`Plan::gathers`]): writes `whole`, the layer's input for
    /// `batch` images (the towers' outputs of the previous layer side by side, tower 0's
    /// first), from this tower's output `own` and the other tower's `other`. `other` may
    /// belong to another backend of the same kind (the other tower's GPU); the copy is
    /// ordered after the work that wrote it, without waiting for the whole device. The
    /// other tower must keep `other` until this tower's work so far has finished
    /// ([`Memory::synchronize`]).
    fn gather(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        own: &F32<Self>,
        other: &F32<Self>,
        whole: &mut F32<Self>,
    ) -> Result<()>;

    /// The backward exchange after `layer` (as in [`Exchange::gather`]), on the sending
    /// tower: writes `packed`, the other tower's part of `dx` (the gradient of `layer`'s
    /// whole input, `batch` images), contiguous, for the other tower's
    /// [`Exchange::reduce_gradient`].
    fn pack_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &F32<Self>,
        packed: &mut F32<Self>,
    ) -> Result<()>;

    /// The backward exchange after `layer`, on the receiving tower: writes `dy`, the
    /// gradient of this tower's output of the previous layer, as this tower's part of its
    /// own `dx` plus `received`, what the other tower packed for it (which may belong to
    /// the other tower's backend, as in [`Exchange::gather`]).
    fn reduce_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &F32<Self>,
        received: &F32<Self>,
        dy: &mut F32<Self>,
    ) -> Result<()>;
}

/// Cutting network inputs from 8-bit images on the device: [`crate::data::patch::Cut::batch`] as a backend
/// computes it (on the GPU, the generated kernel of `kernels_templates/augment.cuh`), so
/// that a prepared set's batch crosses to the device as bytes (a quarter of its patches'
/// f32 values, before the crop) with a few bytes of random draws per image.
pub trait Augment: Memory {
    /// Writes into `out` the patches of `draws` (`per_image` for each image, in order)
    /// cut as `shape` says, with the mean image `mean` (CHW, `3 x side x side`), from the
    /// images of `images` (HWC, `side * side * 3` bytes each, as a prepared set stores
    /// them): bit for bit `Cut::batch` of the same images. An error, before anything
    /// runs, when a draw leaves its image, the lengths disagree or `out` is short
    /// ([`CutShape::check`]), or the mean is not `3 x side x side` values. A `Model`
    /// keeps the mean on the backend for its cuts (`Model::forward_images`).
    fn cut_batch(
        &self,
        shape: CutShape,
        mean: &F32<Self>,
        images: &Self::Buffer<u8>,
        draws: &[Draw],
        per_image: usize,
        out: &mut F32<Self>,
    ) -> Result<()>;
}

/// Copies of host bytes into the backend's memory made ahead of their use by a thread of
/// their own (a `Trainer`'s, see `Trainer::send_images`), so that batch n + 1 crosses
/// while batch n computes: on a GPU from pinned memory on a copy stream, the compute
/// waiting for the copy only where it reads the buffer.
pub trait Upload: Memory {
    /// The copier, owned by the thread that uploads.
    type Uploader: Uploader<Self>;
    /// A copier into this backend's memory (CUDA: with a copy stream of its own).
    fn uploader(&self) -> Result<Self::Uploader>;
}

/// What [`Upload::uploader`] makes.
pub trait Uploader<B: Memory + ?Sized>: Send + 'static {
    /// A buffer of `len` bytes on the backend, for [`Uploader::upload`].
    fn alloc(&mut self, len: usize) -> Result<B::Buffer<u8>>;
    /// Copies `data` into the start of `buf` (at least as long). Returns once `data` may
    /// change, which need not be when the copy is done (CUDA: the bytes staged in pinned
    /// memory, the copy queued on the copier's stream). The backend's work queued after
    /// this returns that reads `buf` sees `data`; the copy does not overwrite `buf` before
    /// the work queued earlier that reads it is done.
    fn upload(&mut self, data: &[u8], buf: &mut B::Buffer<u8>) -> Result<()>;
}

/// A backend that does everything: inference, training, tower exchanges, augmentation
/// on the device and uploads ahead.
pub trait Backend: Training + Exchange + Augment + Upload {}

impl<B: Training + Exchange + Augment + Upload> Backend for B {}

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
    let tower = match plan.tower {
        Some(t) if t.of == 2 && plan.gathers(layer) => t.index,
        _ => {
            return Err(Error::Invalid(format!(
                "{who}: `{}` layer {layer} is not a two-tower exchange",
                plan.name
            )))
        }
    };
    let part = plan.layers[layer - 1].output.len();
    for &(what, len, whole) in buffers {
        let want = batch * part * if whole { 2 } else { 1 };
        if len < want {
            return Err(Error::BufferTooSmall {
                what: format!("{who}: exchange before {}: {what}", plan.layers[layer].name),
                len,
                needed: want,
            });
        }
    }
    Ok((tower, part))
}

/// Checks the arguments of [`Training::sgd_step`] for backend `who`: one parameter,
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
        return Err(Error::Invalid(format!(
            "{who}: sgd over {n} tensors got {p} parameters, {v} momenta, {g} gradients, {m} multipliers"
        )));
    }
    for (i, spec) in specs.iter().enumerate() {
        for (what, len) in ["", " momentum", " gradient"].iter().zip(lens(i)) {
            if len < spec.len() {
                return Err(Error::BufferTooSmall {
                    what: format!("{who}: {}{what}", spec.name),
                    len,
                    needed: spec.len(),
                });
            }
        }
    }
    Ok(specs)
}

/// Checks the arguments of [`Training::non_finite`] for backend `who`: one gradient per
/// tensor of `plan`, each holding at least its tensor (`lens(i)`). Returns the tensors'
/// specs.
pub(crate) fn check_grads(
    who: &str,
    plan: &Plan,
    count: usize,
    lens: impl Fn(usize) -> usize,
) -> Result<Vec<crate::ir::ParamSpec>> {
    let specs = plan.params();
    if count != specs.len() {
        return Err(Error::Invalid(format!(
            "{who}: {count} gradients for the {} tensors of `{}`",
            specs.len(),
            plan.name
        )));
    }
    for (i, spec) in specs.iter().enumerate() {
        if lens(i) < spec.len() {
            return Err(Error::BufferTooSmall {
                what: format!("{who}: {} gradient", spec.name),
                len: lens(i),
                needed: spec.len(),
            });
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cpu, Device};

    /// Every precision trains but f16, which says what to use instead.
    #[test]
    fn trainers_refuse_f16_and_say_why() {
        for p in Precision::ALL {
            assert_eq!(check_trains(p).is_ok(), p != Precision::F16, "{p}");
        }
        let e = check_trains(Precision::F16).unwrap_err().to_string();
        assert!(e.contains("loss scale") && e.contains("bf16"), "{e}");
    }

    /// 16-bit buffers live beside f32 ones on a backend: the same calls move them, typed.
    fn round_trip<B: Memory>(b: &B) {
        let h: Vec<half::f16> = [0.5f32, -2.0, 65504.0]
            .iter()
            .map(|&v| half::f16::from_f32(v))
            .collect();
        let bf: Vec<half::bf16> = [1.0f32, 3.0e38, -0.0078125]
            .iter()
            .map(|&v| half::bf16::from_f32(v))
            .collect();
        let (bh, bbf, bf32) = (
            b.upload(&h).unwrap(),
            b.upload(&bf).unwrap(),
            b.upload(&[1.5f32, 2.5]).unwrap(),
        );
        assert_eq!(b.download(&bh).unwrap(), h);
        assert_eq!(b.download(&bbf).unwrap(), bf);
        assert_eq!(b.download(&bf32).unwrap(), [1.5, 2.5]);
        let mut z = b.alloc::<half::bf16>(4).unwrap();
        assert_eq!(b.download(&z).unwrap(), vec![half::bf16::ZERO; 4]);
        b.write(&mut z, &bf).unwrap();
        assert_eq!(b.download_prefix(&z, 3).unwrap(), bf);
        assert!(matches!(
            b.write(&mut z, &[half::bf16::ONE; 5]),
            Err(Error::BufferTooSmall {
                len: 4,
                needed: 5,
                ..
            })
        ));
        assert_eq!(<half::bf16 as Element>::ELEM, Elem::Bf16);
        assert_eq!(Elem::F16.bytes(), 2);
        let bytes = b.upload(&[0u8, 7, 255]).unwrap();
        assert_eq!(b.download(&bytes).unwrap(), [0, 7, 255]);
        assert_eq!(<u8 as Element>::ELEM, Elem::U8);
    }

    #[test]
    fn buffers_carry_their_element_type() {
        round_trip(&Cpu::new());
        round_trip(&Device::cpu());
    }

    /// Every backend's cut is `Cut::batch`; a mean or a crop that does not fit the
    /// images, a draw outside its image and a short output are errors.
    fn cuts_as_the_host<B: Augment>(b: &B) {
        use crate::data::patch::{Cut, PatchScale};
        let side = 6;
        let mean: Vec<f32> = (0..3 * side * side).map(|i| i as f32 * 0.25).collect();
        let images: Vec<u8> = (0..2 * 3 * side * side)
            .map(|i| (i * 11 % 256) as u8)
            .collect();
        let cut = Cut {
            side,
            mean: &mean,
            crop: (4, 5),
            scale: PatchScale {
                units: 0.5,
                scale: [1.0, 2.0, 3.0],
            },
        };
        let draw = |y, x, flip| Draw {
            y,
            x,
            flip,
            shift: [0.5, -1.0, 0.25],
        };
        let draws = [draw(1, 0, true), draw(2, 1, false)];
        let want = cut.batch(&images, &draws, 1).unwrap();
        let (shape, d_mean) = (cut.shape(), b.upload(&mean).unwrap());
        let d_images = b.upload(&images).unwrap();
        // A longer output keeps its tail.
        let mut out = b.upload(&vec![9.0f32; want.len() + 3]).unwrap();
        b.cut_batch(shape, &d_mean, &d_images, &draws, 1, &mut out)
            .unwrap();
        let got = b.download(&out).unwrap();
        assert_eq!(got[..want.len()], want[..]);
        assert_eq!(got[want.len()..], [9.0; 3]);
        let mut short = b.alloc::<f32>(want.len() - 1).unwrap();
        assert!(b
            .cut_batch(shape, &d_mean, &d_images, &draws, 1, &mut short)
            .is_err());
        let outside = [draw(1, 0, true), draw(3, 1, false)];
        assert!(b
            .cut_batch(shape, &d_mean, &d_images, &outside, 1, &mut out)
            .is_err());
        assert!(b
            .cut_batch(shape, &d_mean, &d_images, &draws[..1], 1, &mut out)
            .is_err());
        let short_mean = b.upload(&mean[1..]).unwrap();
        assert!(b
            .cut_batch(shape, &short_mean, &d_images, &draws, 1, &mut out)
            .is_err());
        let tall = CutShape {
            crop: (7, 2),
            ..shape
        };
        assert!(b
            .cut_batch(tall, &d_mean, &d_images, &draws, 1, &mut out)
            .is_err());
    }

    #[test]
    fn every_backend_cuts_patches_as_the_host() {
        cuts_as_the_host(&Cpu::new());
        cuts_as_the_host(&Device::cpu());
    }

    /// An uploader's copies, made on a thread of their own (as a trainer's are), land in
    /// the buffers it made, as the backend reads them; a short buffer is refused.
    fn uploads<B: Upload>(b: &B) {
        let up = b.uploader().unwrap();
        let data: Vec<Vec<u8>> = (0..3u8)
            .map(|k| {
                (0..1000u32)
                    .map(|i| (i as u8) ^ k.wrapping_mul(37))
                    .collect()
            })
            .collect();
        let sent = data.clone();
        let (bufs, mut up) = std::thread::spawn(move || {
            let mut up = up;
            let mut bufs: Vec<_> = (0..3).map(|_| up.alloc(1000).unwrap()).collect();
            for (d, buf) in sent.iter().zip(&mut bufs) {
                up.upload(d, buf).unwrap();
            }
            (bufs, up)
        })
        .join()
        .unwrap();
        for (buf, d) in bufs.iter().zip(&data) {
            assert_eq!(b.download(buf).unwrap(), *d);
        }
        let mut short = up.alloc(999).unwrap();
        assert!(up.upload(&data[0], &mut short).is_err());
    }

    #[test]
    fn every_backend_uploads_from_another_thread() {
        uploads(&Cpu::new());
        uploads(&Device::cpu());
    }
}
