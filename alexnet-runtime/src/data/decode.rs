//! Decoding one image file as the paper prepares images: JPEG or PNG of any colour type
//! to 8-bit RGB, rescaled so that the shorter side is the wanted size, centre-cropped to
//! a square; and why a file did not decode ([`DecodeError`]), which the loaders count
//! and name instead of failing.

use std::fmt;
use std::io::Cursor;
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{ImageError, ImageFormat, ImageReader, RgbImage};

/// Why a file did not decode.
#[derive(Debug)]
pub enum DecodeError {
    /// The file could not be read.
    Unreadable(std::io::Error),
    /// The file is empty.
    Empty,
    /// The file is not a JPEG or PNG image.
    NotAnImage,
    /// The image data ends early.
    Truncated,
    /// The image data is corrupt (or the image too large to decode).
    Corrupt(String),
    /// The image has no pixels.
    ZeroSized {
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Unreadable(e) => write!(f, "unreadable: {e}"),
            DecodeError::Empty => write!(f, "empty file"),
            DecodeError::NotAnImage => write!(f, "not a JPEG or PNG image"),
            DecodeError::Truncated => write!(f, "truncated image"),
            DecodeError::Corrupt(m) => write!(f, "corrupt image: {m}"),
            DecodeError::ZeroSized { width, height } => {
                write!(f, "zero-sized image ({width}x{height})")
            }
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Unreadable(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ImageError> for DecodeError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Unsupported(_) => DecodeError::NotAnImage,
            ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                DecodeError::Truncated
            }
            e => DecodeError::Corrupt(e.to_string()),
        }
    }
}

/// Decodes a JPEG or PNG file as the paper prepares images: any colour type converted to
/// 8-bit RGB (alpha dropped), rescaled (bilinear, keeping the aspect ratio) so that the
/// shorter side is `side`, and the central `side` x `side` patch kept. Returns it as CHW
/// (3 x `side` x `side`) with values 0..255.
///
/// # Panics
/// If `side` is 0.
pub fn decode(path: &Path, side: usize) -> std::result::Result<Vec<f32>, DecodeError> {
    let img = decode_rgb(path, side)?;
    Ok(chw(&img).map(f32::from).collect())
}

/// [`decode`] before the conversion to CHW floats.
pub fn decode_rgb(path: &Path, side: usize) -> std::result::Result<RgbImage, DecodeError> {
    assert!(side > 0, "decode: side must be positive");
    let side = u32::try_from(side).expect("decode: side is too large");
    let bytes = std::fs::read(path).map_err(DecodeError::Unreadable)?;
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes.as_slice()))
        .with_guessed_format()
        .map_err(DecodeError::Unreadable)?;
    match reader.format() {
        None => return Err(DecodeError::NotAnImage),
        // The JPEG decoder fills in missing data rather than failing: check the end.
        Some(ImageFormat::Jpeg) if !jpeg_is_complete(&bytes) => return Err(DecodeError::Truncated),
        Some(_) => {}
    }
    let img = reader.decode()?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(DecodeError::ZeroSized {
            width: w,
            height: h,
        });
    }
    let rgb = img.to_rgb8();
    drop(img);
    // Shorter side to `side`, the longer one scaled by the same factor, truncated as
    // torchvision's `Resize` does (so that its pretrained models see the same pixels).
    let scale = |long: u32, short: u32| {
        let l = (u64::from(long) * u64::from(side)) / u64::from(short);
        u32::try_from(l).unwrap_or(u32::MAX).max(side)
    };
    let (nw, nh) = if w <= h {
        (side, scale(h, w))
    } else {
        (scale(w, h), side)
    };
    let resized = if (nw, nh) == (w, h) {
        rgb
    } else {
        imageops::resize(&rgb, nw, nh, FilterType::Triangle)
    };
    let (x0, y0) = ((nw - side) / 2, (nh - side) / 2);
    if (nw, nh) == (side, side) {
        return Ok(resized);
    }
    Ok(imageops::crop_imm(&resized, x0, y0, side, side).to_image())
}

/// Whether a JPEG stream reaches its end-of-image marker: walks the marker segments
/// (skipping each by its length, so an embedded thumbnail's markers are not mistaken for
/// the image's) and the entropy-coded data between them.
fn jpeg_is_complete(d: &[u8]) -> bool {
    let mut i = 2; // past SOI
    loop {
        while i < d.len() && d[i] != 0xFF {
            i += 1; // entropy-coded data (or stray bytes)
        }
        while i < d.len() && d[i] == 0xFF {
            i += 1; // fill bytes
        }
        let Some(&marker) = d.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            // Stuffed 0xFF, TEM, RSTn and SOI carry no length.
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            _ => {
                let (Some(&hi), Some(&lo)) = (d.get(i), d.get(i + 1)) else {
                    return false;
                };
                i += usize::from(u16::from_be_bytes([hi, lo]));
            }
        }
    }
}

/// The bytes of an RGB image in CHW order.
pub fn chw(img: &RgbImage) -> impl Iterator<Item = u8> + '_ {
    let raw = img.as_raw();
    (0..3).flat_map(move |c| raw.iter().skip(c).step_by(3).copied())
}
