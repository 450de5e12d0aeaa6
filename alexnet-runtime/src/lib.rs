//! Runs networks declared with `alexnet::network!`.
//!
//! - [`backend`]: what a device must do, split by concern ([`Memory`], [`Inference`],
//!   [`Training`], [`Exchange`], [`backend::Augment`], [`backend::Upload`]; [`Backend`] is
//!   all of them);
//!   [`Cpu`] is the reference implementation, [`Cuda`] runs each network's generated
//!   kernels, [`Device`] picks one at run time.
//! - [`Model`]: a planned network with its parameters on a backend.
//! - [`Batch`]: a batch whose per-image shape is part of its type.
//! - [`weights`]: the paper's initialisation and safetensors files.
//! - [`train`]: the [`Trainer`]; [`run`]: what a run is apart from its tensors, and its
//!   state file; [`towers`]: the paper's two towers, one backend each, and their
//!   [`towers::SplitTrainer`].
//! - [`synthetic`]: generated images; [`data`]: image folders, background loading,
//!   augmentation and preprocessing; [`eval`]: top-k, confusion, ten-crop averaging.
//!
//! The plan ([`ir`]) and the kernel generator come from `alexnet-core`, which does not
//! depend on `syn`; the DSL's parser is in `alexnet-codegen` (the facade's
//! `alexnet::plan_from_str` builds a plan from DSL text at run time).

mod ahead;
pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod footprint;
pub mod model;
pub mod optim;
pub mod philox;
pub mod run;
pub mod synthetic;
pub mod tensor;
pub mod towers;
pub mod train;
pub mod weights;

/// The plan and the generated kernels (`alexnet_core::ir`).
pub mod ir {
    pub use alexnet_core::ir::*;
    pub use alexnet_core::kernels::spec::Elem;
}

pub use backend::{Backend, Element, Exchange, Inference, Memory, Training};
pub use cpu::{ConvAlgorithm, Cpu};
pub use cuda::Cuda;
pub use device::Device;
pub use error::{Error, Result};
pub use model::Model;
pub use run::{NonFinite, OnNonFinite, Schedule, TrainConfig};
pub use synthetic::Synthetic;
pub use tensor::{Batch, Tensor};
pub use train::Trainer;

/// The traits, for `use alexnet::runtime::prelude::*`.
pub mod prelude {
    pub use crate::backend::{Backend, Element, Exchange, Inference, Memory, Training};
    pub use crate::run::Train;
}
