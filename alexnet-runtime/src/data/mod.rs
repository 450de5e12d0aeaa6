//! Images in: the paper's data pipeline (issue 6). [`augment`]: random crops, flips and
//! PCA colour augmentation, ten-crop testing; [`folder`]: an ImageNet-style folder of
//! JPEG/PNG files decoded, rescaled and loaded in the background.

pub mod augment;
pub mod folder;
