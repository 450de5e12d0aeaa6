//! The building blocks of generated kernels: typed kernel specs and their stubs
//! ([`spec`]), the GEMMs of learned layers ([`gemm`]) and the tensor-core GEMM
//! ([`mma`], not yet used by the forward pass).

pub mod gemm;
pub mod mma;
pub mod spec;
