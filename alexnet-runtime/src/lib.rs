//! Runs networks declared with `alexnet::network!`.
//!
//! - [`Backend`]: what a device must do; [`Cpu`] is the reference implementation, [`Cuda`]
//!   runs each network's generated kernels, [`Device`] picks one at run time.
//! - [`Model`]: a planned network with its parameters on a backend.
//! - [`Batch`]: a batch whose per-image shape is part of its type.
//! - [`weights`]: the paper's initialisation and safetensors files.
//! - [`train`]: the [`Trainer`]; [`towers`]: the paper's two towers, one backend each, and
//!   their [`towers::SplitTrainer`].
//! - [`synthetic`]: generated images; [`data`]: image folders, background loading,
//!   augmentation and preprocessing; [`eval`]: top-k, confusion, ten-crop averaging.

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod model;
pub mod optim;
pub mod philox;
pub mod synthetic;
pub mod tensor;
pub mod towers;
pub mod train;
pub mod weights;

pub use alexnet_codegen::ir;
pub use alexnet_codegen::plan_from_str;
pub use backend::Backend;
pub use cpu::Cpu;
pub use cuda::Cuda;
pub use device::Device;
pub use error::{Error, Result};
pub use model::Model;
pub use synthetic::Synthetic;
pub use tensor::{Batch, Tensor};
pub use train::{Schedule, TrainConfig, Trainer};
