//! The CUDA backend: each network's generated kernels, compiled by NVRTC (loaded at run
//! time; no CUDA is needed to build) for the device's own architecture, through a CUBIN
//! disk cache, and launched from their specs. One file per concern: `device.rs` the GPU,
//! `launch.rs` loading and launching kernels (`binder.rs` binds their arguments by name), `memory.rs`, `inference.rs`,
//! `training.rs`, `exchange.rs`, `augment.rs` and `upload.rs` (pinned memory and a copy
//! stream) the backend's traits; `graph.rs` a forward pass recorded as a CUDA graph
//! ([`Model::capture`](crate::Model::capture)) and replayed; `tune.rs` timing a stage's
//! candidate tiles for `alexnet tune`.

mod augment;
mod binder;
pub mod cache;
mod device;
mod exchange;
mod graph;
mod inference;
mod launch;
mod memory;
pub mod nvrtc;
mod training;
mod tune;
mod upload;

pub use device::Cuda;
pub use graph::ForwardGraph;
pub use upload::CudaUploader;
