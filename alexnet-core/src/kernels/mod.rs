//! The building blocks of generated kernels: typed kernel specs and their stubs
//! ([`spec`]), and the GEMMs of learned layers ([`gemm`]).

pub mod gemm;
pub mod spec;
