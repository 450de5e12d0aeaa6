//! The network IR, every layer kind in one place, and the CUDA kernel generator, with no
//! dependency on `syn`: `alexnet-codegen` (the `network!` front end) builds on it at
//! compile time and `alexnet-runtime` at run time.
//!
//! - [`shape`]: per-image shapes; [`ir`]: the [`ir::Plan`], a network after shape
//!   inference, with its stages and towers;
//! - [`layers`]: one file per layer kind (DSL signature, shape rule, parameters, towers,
//!   kernels) and the registry of kinds, [`for_each_layer_kind!`];
//! - [`kernels`]: typed kernel specs rendered to CUDA stubs over the templates in
//!   `kernels_templates/`, and the GEMMs of conv and fc;
//! - [`cuda`]: a plan's kernels (forward, training, exchanges) and their sources.

pub mod cuda;
pub mod ir;
pub mod kernels;
pub mod layers;
pub mod shape;
