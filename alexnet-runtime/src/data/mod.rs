//! Images in: the paper's data pipeline. [`folder`]: an ImageNet-style folder of JPEG/PNG
//! files, decoded and rescaled; [`loader`]: any numbered set of labelled images
//! ([`loader::Images`]) loaded in background threads; [`augment`]: random crops, flips
//! and PCA colour augmentation, ten-crop testing; [`pipeline`]: the per-pixel mean, the
//! augmentation and the class names of a training set, fitted once and saved beside its
//! checkpoints, and the generated shapes as [`loader::Images`].

pub mod augment;
pub mod folder;
pub mod loader;
pub mod pipeline;
