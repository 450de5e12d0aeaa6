//! Writes an image folder of generated shapes as JPEGs of ImageNet's typical size, to try
//! `prepare` and `train --data` without ImageNet, and to time the prepared data path
//! (`.gpu-bin/feed.sh` runs it on the GPU machine):
//!
//! ```text
//! cargo run --release --example synthetic_folder -- DIR [IMAGES [CLASSES]]
//! cargo run --release --example alexnet -- prepare --data DIR --out DIR.prepared
//! cargo run --release --example alexnet -- train --data DIR.prepared ...
//! ```
//!
//! IMAGES (default 2,560) files of 500x375 pixels, quality 90, in CLASSES (default 10, at
//! most 12) subfolders, written on every core; the shapes carry pixel noise, so that they
//! decode about as slowly as photographs. The same arguments write the same files.

use std::io::Write;
use std::path::PathBuf;

use alexnet::runtime::Synthetic;
use rayon::prelude::*;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), AnyError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: synthetic_folder DIR [IMAGES [CLASSES]]";
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let images: u64 = args.next().map_or(Ok(2560), |a| a.parse())?;
    let classes: usize = args.next().map_or(Ok(10), |a| a.parse())?;
    let (h, w) = (375, 500);
    let data = Synthetic::new(classes, 3, h, w, 1)?;
    for c in 0..classes {
        std::fs::create_dir_all(dir.join(format!("class{c:02}")))?;
    }
    let t = std::time::Instant::now();
    (0..images)
        .into_par_iter()
        .try_for_each(|i| -> Result<(), AnyError> {
            let (x, label) = data.sample(i);
            let n = h * w;
            let img = image::RgbImage::from_fn(w as u32, h as u32, |cx, cy| {
                let p = cy as usize * w + cx as usize;
                let noise = ((p as u32 ^ i as u32).wrapping_mul(2_654_435_761) >> 27) as f32 * 2.0;
                let b = |v: f32| ((v + 1.0) * 120.0 + noise).clamp(0.0, 255.0) as u8;
                image::Rgb([b(x[p]), b(x[n + p]), b(x[2 * n + p])])
            });
            let path = dir.join(format!("class{label:02}/{i:07}.jpg"));
            let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 90).encode_image(&img)?;
            file.flush()?;
            Ok(())
        })?;
    println!(
        "{images} JPEGs of {w}x{h} in {classes} classes written to {} in {:.1} s",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
