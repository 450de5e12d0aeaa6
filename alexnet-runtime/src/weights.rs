//! Weights: the paper's initialisation and safetensors files (read, and written
//! atomically).
//!
//! Tensor names and layouts follow PyTorch: `conv1.weight` `[out, in/groups, kh, kw]`,
//! `conv1.bias` `[out]`, `fc6.weight` `[out, in]`, so files move between this project and
//! PyTorch unchanged.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::ir::{Op, Plan};

/// The `format` metadata of a training-state file: the weights under their PyTorch names,
/// the momentum of each under [`MOMENTUM_PREFIX`], and the run as metadata.
pub const STATE_FORMAT: &str = "alexnet-rs-training-state/1";
/// Prefix of the momentum tensors in a training-state file (`momentum.conv1.weight`).
pub const MOMENTUM_PREFIX: &str = "momentum.";

/// A named host tensor, as stored in a file.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The paper's initialisation (section 5): weights from N(0, 0.01); biases 1 in the
/// second, fourth and fifth convolutional layers and in the hidden fully connected layers
/// (every fc layer but the last), 0 elsewhere. Layers are counted by ordinal, so the rule
/// applies to any network. Deterministic for a seed.
pub fn paper_init(plan: &Plan, seed: u64) -> Vec<NamedTensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.01).unwrap_or_else(|_| unreachable!("0.01 is a valid std"));
    let last_fc = plan.layers.iter().rposition(|l| matches!(l.op, Op::Fc(_)));
    let mut conv_ordinal = 0;
    let mut out = Vec::new();
    for (i, layer) in plan.layers.iter().enumerate() {
        if !layer.op.is_learned() {
            continue;
        }
        // The paper's rule names convolutions and fully connected layers; any other
        // learned layer starts with zero biases.
        let bias_one = match layer.op {
            Op::Conv(_) => {
                conv_ordinal += 1;
                matches!(conv_ordinal, 2 | 4 | 5)
            }
            Op::Fc(_) => Some(i) != last_fc,
            _ => false,
        };
        // Weights from the normal, biases (the one-dimensional tensors) constant.
        for spec in layer.params() {
            let data = if spec.shape.len() > 1 {
                (0..spec.len()).map(|_| normal.sample(&mut rng)).collect()
            } else {
                vec![f32::from(u8::from(bias_one)); spec.len()]
            };
            out.push(NamedTensor {
                name: spec.name,
                shape: spec.shape,
                data,
            });
        }
    }
    out
}

/// He et al.'s initialisation ("Delving deep into rectifiers", 2015): weights from
/// N(0, 2 / fan-in), biases 0. The paper's N(0, 0.01) needs its 90 epochs to get a deep
/// network moving; this one lets a small network learn in a few hundred steps.
/// Deterministic for a seed.
pub fn kaiming_init(plan: &Plan, seed: u64) -> Vec<NamedTensor> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    plan.params()
        .into_iter()
        .map(|spec| {
            let data = if spec.shape.len() > 1 {
                let fan_in: usize = spec.shape[1..].iter().product();
                let std = (2.0 / fan_in.max(1) as f32).sqrt();
                let normal =
                    Normal::new(0.0f32, std).unwrap_or_else(|_| unreachable!("a finite std"));
                (0..spec.len()).map(|_| normal.sample(&mut rng)).collect()
            } else {
                vec![0.0; spec.len()]
            };
            NamedTensor {
                name: spec.name,
                shape: spec.shape,
                data,
            }
        })
        .collect()
}

/// Orders `tensors` as the plan's parameters, or lists every missing, extra and
/// mis-shaped tensor.
pub fn match_plan(
    plan: &Plan,
    tensors: Vec<NamedTensor>,
    path: Option<&Path>,
) -> Result<Vec<NamedTensor>> {
    let mut by_name: HashMap<String, NamedTensor> =
        tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut problems = Vec::new();
    let mut ordered = Vec::new();
    for spec in plan.params() {
        match by_name.remove(&spec.name) {
            None => problems.push(format!(
                "missing tensor `{}` of shape {}",
                spec.name,
                crate::error::fmt_shape(&spec.shape)
            )),
            Some(t) if t.shape != spec.shape => problems.push(format!(
                "tensor `{}` has shape {}, the network needs {}",
                spec.name,
                crate::error::fmt_shape(&t.shape),
                crate::error::fmt_shape(&spec.shape)
            )),
            Some(t) => ordered.push(t),
        }
    }
    let mut extra: Vec<_> = by_name.into_keys().collect();
    extra.sort();
    for name in extra {
        problems.push(format!(
            "unexpected tensor `{name}`: network `{}` has no such parameter",
            plan.name
        ));
    }
    if problems.is_empty() {
        Ok(ordered)
    } else {
        Err(Error::Weights {
            path: path.map(Path::to_path_buf),
            problems,
        })
    }
}

/// Checks that every value of `tensors` is finite: the first NaN or infinity is an error
/// naming the file (when given), the tensor and the element. (Non-finite weights or inputs
/// make a network's output NaN, or, worse, plausible: a max swallows a NaN.)
pub fn check_finite(tensors: &[NamedTensor], path: Option<&Path>) -> Result<()> {
    for t in tensors {
        if let Some((i, v)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            let file = path
                .map(|p| format!("{}: ", p.display()))
                .unwrap_or_default();
            return Err(Error::Invalid(format!(
                "{file}tensor `{}` holds {v} (element {i} of {}); only finite values can be used",
                t.name,
                t.data.len()
            )));
        }
    }
    Ok(())
}

/// Reads every tensor of a safetensors file as f32 (f16, bf16 and f64 are converted).
pub fn read_safetensors(path: &Path) -> Result<Vec<NamedTensor>> {
    Ok(read_safetensors_with_metadata(path)?.0)
}

/// [`read_safetensors`] and [`parse_metadata`] of one read of the file.
pub fn read_safetensors_with_metadata(
    path: &Path,
) -> Result<(Vec<NamedTensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let meta = parse_metadata(&bytes).map_err(|e| e.in_file(path))?;
    Ok((
        parse_safetensors(&bytes).map_err(|e| e.in_file(path))?,
        meta,
    ))
}

/// The metadata of a safetensors file, reading only its header (a training state of the
/// paper's AlexNet is 488 MB).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |message: String| Error::Format {
        path: Some(path.to_path_buf()),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("too short for a safetensors file".into()))?;
    let n = u64::from_le_bytes(len);
    // safetensors caps headers at 100 MB; nothing is allocated for more than the file
    // holds.
    if n > 100_000_000 {
        return Err(bad(format!("header of {n} bytes is too large")));
    }
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if n > size.saturating_sub(8) {
        return Err(bad(format!(
            "the header of {n} bytes is longer than the file ({size} bytes)"
        )));
    }
    let mut header = Vec::with_capacity(n as usize);
    f.take(n)
        .read_to_end(&mut header)
        .map_err(|e| Error::io(path, e))?;
    if header.len() as u64 != n {
        return Err(bad("the header is cut short".into()));
    }
    // The header as safetensors itself reads it (its tensor offsets are checked against
    // the file only when the tensors are read).
    let header: safetensors::tensor::Metadata = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("the header is not a safetensors header: {e}")))?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// The `__metadata__` of a safetensors buffer (empty when it has none).
pub fn parse_metadata(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| Error::Format {
        path: None,
        message: e.to_string(),
    })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Parses a safetensors buffer; see [`read_safetensors`]. A tensor of another element
/// type (integers, say) is an [`Error::Content`].
pub fn parse_safetensors(bytes: &[u8]) -> Result<Vec<NamedTensor>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Format {
        path: None,
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut mistyped = Vec::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            other => {
                mistyped.push((name, other));
                continue;
            }
        };
        out.push(NamedTensor {
            name,
            shape: view.shape().to_vec(),
            data,
        });
    }
    mistyped.sort();
    let message = match mistyped.as_slice() {
        [] => None,
        [(name, dtype)] => Some(format!("tensor `{name}` has dtype {dtype:?}")),
        several => Some(format!(
            "tensors {} have dtypes {}",
            several
                .iter()
                .map(|(n, _)| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
            several
                .iter()
                .map(|(_, d)| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    };
    if let Some(message) = message {
        return Err(Error::Content {
            path: None,
            message: format!("{message}; expected F32 (or F16, BF16, F64)"),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes f32 tensors to a safetensors file atomically: a temporary file in the same
/// folder, flushed and fsynced, then renamed over `path`, so a crash never leaves a
/// half-written file behind.
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (name, data, shape) in &bytes {
        let view =
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).map_err(|e| {
                Error::Format {
                    path: Some(path.to_path_buf()),
                    message: e.to_string(),
                }
            })?;
        views.push((name.clone(), view));
    }
    let buf = safetensors::serialize(views, metadata).map_err(|e| Error::Format {
        path: Some(path.to_path_buf()),
        message: e.to_string(),
    })?;
    write_atomic(path, &buf)
}

/// Replaces `path` with `contents` atomically (temporary file, fsync, rename, fsync of the
/// folder).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::other("not a file path")))?;
    // Unique per call: two threads may write the same file at once (the towers of a split
    // network compiling the same kernel into the cache, say); the last rename wins whole.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{call}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable; not every platform can open a folder.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::Write {
            path: path.to_path_buf(),
            bytes: contents.len() as u64,
            source,
        }
    })
}

/// Removes the temporary files that [`write_atomic`] left in `dir` when its process was
/// killed between creating and renaming them (`.NAME.tmp-PID-N`), and returns their
/// paths. A file is stale when no process has its PID any more, or the process that has
/// it now started after the file was last written (the PID was reused); the temporary
/// files of a live writer, this process's included, are kept. Best effort: what cannot
/// be read or removed is left. Where there is no `/proc` (not Linux), nothing is removed.
pub fn remove_stale_temps(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut removed = Vec::new();
    if process_start(std::process::id()).is_none() {
        return removed; // no /proc: no way to tell a live writer
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_writer) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let Ok(modified) = meta.modified() else {
            continue;
        };
        let stale = match process_start(pid) {
            None => true,
            // Start times are known to a second or so.
            Some(start) => modified + std::time::Duration::from_secs(2) < start,
        };
        if stale && meta.is_file() && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed.sort();
    removed
}

/// The PID of the process that wrote a temporary file named as [`write_atomic`] names
/// them, `.NAME.tmp-PID-N`.
fn temp_writer(name: &str) -> Option<u32> {
    let (target, tail) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    let (pid, call) = tail.split_once('-')?;
    call.parse::<u64>().ok()?;
    (!target.is_empty()).then_some(())?;
    pid.parse().ok()
}

/// When process `pid` started, from Linux's `/proc` (`None`: no such process, or no
/// `/proc`).
fn process_start(pid: u32) -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, clock ticks after boot; the fields after the command name (in
    // parentheses, which may hold anything) start at field 3.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // Linux reports these ticks in USER_HZ, 100 a second.
    let since_epoch =
        std::time::Duration::from_secs(boot) + std::time::Duration::from_millis(ticks * 10);
    Some(std::time::UNIX_EPOCH + since_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_file_names_give_their_writer() {
        assert_eq!(temp_writer(".state.safetensors.tmp-123-4"), Some(123));
        assert_eq!(temp_writer(".curves.png.tmp-7-0"), Some(7));
        assert_eq!(temp_writer(".a.tmp-b.tmp-9-10"), Some(9));
        for other in [
            "state.safetensors.tmp-123-4",
            ".state.safetensors.tmp-123",
            ".state.safetensors.tmp-x-4",
            ".state.safetensors.tmp-1-x",
            "..tmp-1-2",
            ".notes",
        ] {
            assert_eq!(temp_writer(other), None, "{other}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_started_in_the_past() {
        let start = process_start(std::process::id()).unwrap();
        let age = std::time::SystemTime::now().duration_since(start).unwrap();
        assert!(age < std::time::Duration::from_secs(24 * 3600), "{age:?}");
        assert!(process_start(1).unwrap() <= start);
    }
}
