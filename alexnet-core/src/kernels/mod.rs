//! The building blocks of generated kernels: typed kernel specs and their stubs
//! ([`spec`]), the GEMMs of learned layers ([`gemm`]), the tensor-core GEMM ([`mma`]) and
//! the run-time [`precision`] that picks between them.

pub mod gemm;
pub mod mma;
pub mod precision;
pub mod spec;
