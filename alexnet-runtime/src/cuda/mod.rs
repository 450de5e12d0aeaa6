//! The CUDA side of the runtime: NVRTC (loaded at run time; no CUDA is needed to build),
//! the CUBIN disk cache, and the backend that launches each network's generated kernels.

mod backend;
pub mod cache;
pub mod nvrtc;
mod train;

pub use backend::Cuda;
