//! The building blocks of generated kernels: typed kernel specs and their stubs
//! ([`spec`]), the GEMMs of learned layers ([`gemm`]), the tensor-core GEMM ([`mma`]) and
//! the run-time [`precision`] that picks between them, and the [`tuning`] tables that fix
//! their tiles per GPU architecture.

pub mod gemm;
pub mod mma;
pub mod precision;
pub mod spec;
pub mod tuning;
