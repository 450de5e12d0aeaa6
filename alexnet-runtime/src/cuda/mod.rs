//! The CUDA side of the runtime. For now: compiling a network's generated CUDA with NVRTC
//! (loaded at run time; no CUDA is needed to build) and reading ptxas's resource report.
//! The backend that launches the kernels builds on this.

pub mod nvrtc;
