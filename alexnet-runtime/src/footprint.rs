//! How much device memory a network needs at a batch size, from its plan alone: the
//! buffers [`crate::Model::forward`] and [`crate::Trainer`] allocate (their sizes come
//! from the functions here, so the figure and the allocations cannot drift apart) and the
//! CUDA backend's split-K workspace (from the generated kernels' argument lengths). A
//! backend's own temporaries (the CPU's im2col, cuDNN-free CUDA has none beyond the
//! workspace) and the CUDA context itself (a few hundred MB) are not counted.
//!
//! Trainers check it against the GPU's free memory before the first step
//! ([`crate::Trainer::reserve`]), so that a batch too large fails with the figures
//! instead of an allocation error halfway through a step.

use crate::backend::Memory;
use crate::error::{Error, Result};
use crate::ir::kernels::spec::Len;
use crate::ir::{Plan, Precision, Stage};

const F32: u64 = 4;

/// The device memory of `plan` at a batch size, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub batch: usize,
    /// The weights and biases.
    pub params: u64,
    /// Inference at this batch: the input and two ping-pong activation buffers, and the
    /// CUDA split-K workspace of the forward pass in tf32, bf16 or f16.
    pub inference: u64,
    /// Training besides the weights: gradients and momentum (as large as the weights).
    pub optimizer: u64,
    /// Training at this batch: every stage's activations (kept for the backward pass),
    /// two gradient buffers, the labels and the loss statistics, and the CUDA split-K
    /// workspace.
    pub training: u64,
    /// The batches of 8-bit images a trainer holds when they come as bytes
    /// ([`Footprint::with_images`]: two, one stepped on while the next is copied in);
    /// 0 for batches of patches.
    pub images: u64,
}

impl Footprint {
    /// The footprint of `plan` at `batch` images.
    pub fn of(plan: &Plan, batch: usize) -> Footprint {
        let params: u64 = plan.params().iter().map(|p| p.len() as u64).sum::<u64>() * F32;
        let inference = forward_buffers(plan, batch).iter().sum::<usize>() as u64 * F32;
        let t = TrainingBuffers::of(plan, &training_stages(plan), batch);
        let kernels = alexnet_core::cuda::kernels(plan);
        // The weight gradients' chunks, in whichever precision needs most (the
        // tensor-core ones, among the kernels that differ, chunk the batch differently).
        let training_ws = Precision::ALL
            .iter()
            .flat_map(|&p| kernels.differing(p))
            .chain(kernels.training.iter())
            .flat_map(|k| k.args.iter())
            .filter_map(|a| match a.len {
                Some(l @ Len::Split { .. }) => Some(l.needed(batch)),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // The forward pass's split-K workspace in tf32, bf16 or f16 (the fc layers' parts;
        // none in f32): counted whatever the precision, an upper bound.
        let forward_ws = Precision::ALL
            .iter()
            .flat_map(|&p| kernels.differing_forward(p))
            .flat_map(|k| k.args.iter())
            .filter(|a| a.name == "ws")
            .filter_map(|a| a.len.map(|l| l.needed(batch)))
            .max()
            .unwrap_or(0);
        Footprint {
            batch,
            params,
            inference: inference + forward_ws * F32,
            optimizer: 2 * params,
            // One workspace serves both (the backend grows it to the larger).
            training: (t.total() as u64 + training_ws.max(forward_ws)) * F32,
            images: 0,
        }
    }

    /// This footprint with the batches coming as 8-bit images of `side` x `side` pixels
    /// (a prepared set's, cut on the device): two such batches in device memory, one
    /// stepped on while the next is copied in (`Trainer::send_images`).
    pub fn with_images(self, side: usize) -> Footprint {
        Footprint {
            images: 2 * (self.batch * 3 * side * side) as u64,
            ..self
        }
    }

    /// Everything inference needs: the weights and the batch's buffers.
    pub fn inference_total(&self) -> u64 {
        self.params + self.inference
    }

    /// Everything training needs: weights, gradients, momentum, the batch's buffers and
    /// its images.
    pub fn training_total(&self) -> u64 {
        self.params + self.optimizer + self.training + self.images
    }

    /// What a batch needs besides the weights, gradients and momentum: its buffers and its
    /// images.
    pub fn training_batch(&self) -> u64 {
        self.training + self.images
    }
}

/// Bytes as a person reads them: `1.23 GB`, `45.6 MB`, `789 kB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

/// The f32 buffers [`crate::Model::forward`] allocates at `batch`: the input, then the
/// two ping-pong buffers stage outputs alternate between.
pub(crate) fn forward_buffers(plan: &Plan, batch: usize) -> [usize; 3] {
    let max = plan
        .inference_stages()
        .iter()
        .filter(|st| !plan.layers[st.layer].op.kind().identity_at_inference())
        .map(|st| plan.layers[st.last()].output.len())
        .max()
        .unwrap_or(0)
        * batch;
    [batch * plan.input.len(), max, max]
}

/// The stages a trainer runs: every stage, less a final softmax (folded into the loss).
pub(crate) fn training_stages(plan: &Plan) -> Vec<Stage> {
    let mut stages = plan.stages();
    if stages
        .last()
        .is_some_and(|s| plan.layers[s.layer].op.kind().must_be_last())
    {
        stages.pop();
    }
    stages
}

/// The f32 buffers of a trainer's workspace at `batch`, in values.
pub(crate) struct TrainingBuffers {
    /// The input, then every stage's output.
    pub acts: Vec<usize>,
    /// Each of the two gradient buffers: the widest input or output.
    pub grad: usize,
    pub labels: usize,
    pub stats: usize,
}

impl TrainingBuffers {
    pub(crate) fn of(plan: &Plan, stages: &[Stage], batch: usize) -> Self {
        let mut acts = vec![batch * plan.input.len()];
        let mut widest = plan.input.len();
        for s in stages {
            let l = &plan.layers[s.layer];
            acts.push(batch * l.output.len());
            widest = widest.max(l.output.len()).max(l.input.len());
        }
        TrainingBuffers {
            acts,
            grad: batch * widest,
            labels: batch,
            stats: 3,
        }
    }

    fn total(&self) -> usize {
        self.acts.iter().sum::<usize>() + 2 * self.grad + self.labels + self.stats
    }
}

/// Whether training `plan` at `batch` images fits in the free memory of `backend` (a GPU; other
/// backends say nothing about their memory): [`Error::OutOfMemory`] with the figures
/// when it does not. The weights, gradients and momentum are allocated already; the
/// batch's buffers, and its 8-bit images of `image_side` x `image_side` when the batches
/// come as bytes ([`Footprint::with_images`]), are what must fit.
pub fn check_fits<B: Memory>(
    backend: &B,
    plan: &Plan,
    batch: usize,
    image_side: Option<usize>,
) -> Result<()> {
    let Some((free, total)) = backend.memory_info()? else {
        return Ok(());
    };
    let of = |batch| {
        let fp = Footprint::of(plan, batch);
        image_side.map_or(fp, |side| fp.with_images(side))
    };
    let fp = of(batch);
    if fp.training_batch() <= free {
        return Ok(());
    }
    // The largest batch that fits (the split-K workspace does not grow linearly).
    let (mut fits, mut over) = (0, batch);
    while over - fits > 1 {
        let mid = fits + (over - fits) / 2;
        if of(mid).training_batch() <= free {
            fits = mid;
        } else {
            over = mid;
        }
    }
    Err(Error::OutOfMemory {
        device: backend.name(),
        what: format!(
            "training `{}` at batch {batch} needs {} in all ({} for the batch's activations and workspaces{}, {} for the weights, gradients and momentum); the GPU has {} free of {}; {}",
            plan.name,
            human(fp.training_total()),
            human(fp.training),
            match fp.images {
                0 => String::new(),
                n => format!(", {} for two batches of its images", human(n)),
            },
            human(fp.params + fp.optimizer),
            human(free),
            human(total),
            match fits {
                0 => "not even one image fits".to_string(),
                n => format!("a batch of at most about {n} fits"),
            }
        ),
    })
}
