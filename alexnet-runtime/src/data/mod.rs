//! Images in: the paper's data pipeline. [`decode`]: one JPEG/PNG file decoded and
//! rescaled, or why not; [`folder`]: an ImageNet-style folder of such files; [`loader`]: any numbered set of labelled images
//! ([`loader::Images`]) loaded in background threads; [`augment`]: random crops, flips
//! and PCA colour augmentation, ten-crop testing; [`pipeline`]: the per-pixel mean, the
//! augmentation and the class names of a training set, fitted once and saved beside its
//! checkpoints, presets for weights trained elsewhere, and the generated shapes as
//! [`loader::Images`]; [`patch`]: network inputs cut from stored images with every random
//! choice drawn beforehand, as both backends compute them (the generated augmentation
//! kernel's arithmetic); [`prepared`]: an image folder decoded once into shards of raw
//! images with an index (`alexnet prepare`), read as [`loader::Images`]; [`imagenet`]:
//! the 1,000 class names of ILSVRC-2012.

pub mod augment;
pub mod decode;
pub mod folder;
pub mod imagenet;
pub mod loader;
pub mod patch;
pub mod pipeline;
pub mod prepared;
