//! NVRTC: generated CUDA C++ to CUBIN for one GPU architecture, with ptxas's resource
//! report (registers, spills, stack) and, on failure, the log with the offending lines.

use std::ffi::{c_char, c_int, CString};

use cudarc::nvrtc::{result, sys};

use crate::error::{Error, Result};

/// Whether `libnvrtc` can be loaded (by name: `LD_LIBRARY_PATH`, RUNPATH, the loader cache).
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names; no other effect.
    unsafe { sys::is_culib_present() }
}

fn not_loaded() -> Error {
    Error::Nvrtc {
        unit: None,
        message: "NVRTC (libnvrtc.so.13) is not loadable: install CUDA 13 or the `nvidia-cuda-nvrtc` wheel and put its lib folder on LD_LIBRARY_PATH".into(),
    }
}

/// An NVRTC failure while compiling `unit`.
fn failed(unit: &str, message: String) -> Error {
    Error::Nvrtc {
        unit: Some(unit.to_string()),
        message,
    }
}

/// NVRTC's version, `(major, minor)`.
pub fn version() -> Result<(i32, i32)> {
    if !available() {
        return Err(not_loaded());
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the library is present (checked); both pointers are to live locals.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Nvrtc {
            unit: None,
            message: format!("nvrtcVersion: {e:?}"),
        })?;
    Ok((major, minor))
}

/// The folder holding `cuda_fp16.h` (NVRTC has no built-in copy), for `-I`: from
/// `ALEXNET_CUDA_INCLUDE`, `CUDA_HOME`/`CUDA_PATH`, /usr/local/cuda, or the
/// `nvidia-cuda-runtime` wheel next to a libnvrtc found on `LD_LIBRARY_PATH`. The forward
/// kernels need no header; half-precision kernels will.
pub fn include_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("ALEXNET_CUDA_INCLUDE") {
        candidates.push(d.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            candidates.push(PathBuf::from(d).join("include"));
        }
    }
    candidates.push("/usr/local/cuda/include".into());
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        // .../nvidia/cu13/lib -> .../nvidia/cu13/include (pip wheels).
        candidates.extend(
            std::env::split_paths(&paths).filter_map(|p| p.parent().map(|d| d.join("include"))),
        );
    }
    candidates
        .into_iter()
        .find(|d| d.join("cuda_fp16.h").is_file())
}

/// A compiled translation unit.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    /// NVRTC's log: with `--ptxas-options=-v`, ptxas's report for every kernel.
    pub log: String,
}

/// Compiles `source` (named `name` in messages) to a CUBIN for `arch` (`"sm_90"`), with
/// extra NVRTC options (e.g. `--ptxas-options=-v`, `-I<dir>`).
pub fn compile_cubin(source: &str, name: &str, arch: &str, extra: &[String]) -> Result<Compiled> {
    if !available() {
        return Err(not_loaded());
    }
    let src =
        CString::new(source).map_err(|_| failed(name, "the source contains a NUL byte".into()))?;
    let cname =
        CString::new(name).map_err(|_| failed(name, "the name contains a NUL byte".into()))?;
    let prog = result::create_program(&src, Some(&cname))
        .map_err(|e| failed(name, format!("nvrtcCreateProgram: {e:?}")))?;
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ];
    if let Some(dir) = include_dir() {
        opts.push(format!("-I{}", dir.display()));
    }
    opts.extend(extra.iter().cloned());
    // SAFETY: `prog` was just created and is destroyed only below; `src` and `cname`,
    // which it may reference, outlive it.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog) }
        .map(|v| c_chars_to_string(&v))
        .unwrap_or_default();
    let out = match compiled {
        Err(e) => Err(failed(
            name,
            format!(
                "NVRTC could not compile it for {arch} ({e:?}), options {opts:?}:\n{}{}",
                log.trim_end(),
                offending_lines(source, &log)
            ),
        )),
        Ok(()) => {
            let mut size = 0usize;
            // SAFETY: `prog` compiled successfully; `size` is a live local.
            unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
                .result()
                .map_err(|e| failed(name, format!("nvrtcGetCUBINSize: {e:?}")))
                .and_then(|()| {
                    let mut cubin = vec![0u8; size];
                    // SAFETY: `cubin` has the size NVRTC reported for the CUBIN.
                    unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char) }
                        .result()
                        .map_err(|e| failed(name, format!("nvrtcGetCUBIN: {e:?}")))?;
                    Ok(Compiled { cubin, log })
                })
        }
    };
    // SAFETY: `prog` is live and not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The generated lines that NVRTC's errors point at (`name(LINE): error: ...`), with
/// their numbers, so that a failure can be read without dumping the source.
pub fn offending_lines(source: &str, log: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = String::new();
    for l in log.lines().filter(|l| l.contains("error")) {
        let Some(open) = l.find('(') else { continue };
        let Some(close) = l[open..].find(')') else {
            continue;
        };
        if let Ok(n) = l[open + 1..open + close].parse::<usize>() {
            if let Some(text) = n.checked_sub(1).and_then(|i| lines.get(i)) {
                out += &format!("\n  {n:>5} | {text}");
            }
        }
    }
    if out.is_empty() {
        out
    } else {
        format!("\ngenerated lines:{out}")
    }
}

/// ptxas's report for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub stack_frame_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub shared_bytes: u32,
}

/// Whether `spec`'s kernel compiles for `arch` without spilling registers or using local
/// memory (ptxas's report): `alexnet tune` times only such candidates.
pub fn spill_free(spec: &alexnet_core::ir::KernelSpec, arch: &str) -> Result<bool> {
    let compiled = compile_cubin(
        &alexnet_core::cuda::source(spec),
        &format!("{}.cu", spec.name()),
        arch,
        &["--ptxas-options=-v".to_string()],
    )?;
    Ok(ptxas_report(&compiled.log)
        .iter()
        .find(|r| r.name == spec.name())
        .is_some_and(|r| r.spill_store_bytes + r.spill_load_bytes + r.stack_frame_bytes == 0))
}

/// Parses the `--ptxas-options=-v` report in an NVRTC log.
pub fn ptxas_report(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let number_before = |line: &str, unit: &str| -> Option<u32> {
        let i = line.find(unit)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelResources {
                name,
                ..Default::default()
            });
        } else if let Some(k) = out.last_mut() {
            if line.contains("stack frame") {
                k.stack_frame_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = number_before(line, "registers").unwrap_or(0);
                k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'conv1_fwd' for 'sm_90'\n\
            ptxas info    : Function properties for conv1_fwd\n    \
            8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 40 registers, used 1 barriers, 8192 bytes smem, 388 bytes cmem[0]\n";
        let r = ptxas_report(log);
        assert_eq!(
            r,
            vec![KernelResources {
                name: "conv1_fwd".into(),
                registers: 40,
                stack_frame_bytes: 8,
                spill_store_bytes: 4,
                spill_load_bytes: 12,
                shared_bytes: 8192
            }]
        );
    }

    #[test]
    fn finds_headers_named_by_the_environment() {
        // Only the explicit variable is under the test's control; the others depend on the machine.
        let dir = std::env::temp_dir().join(format!("alexnet-include-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cuda_fp16.h"), "").unwrap();
        std::env::set_var("ALEXNET_CUDA_INCLUDE", &dir);
        assert_eq!(include_dir(), Some(dir.clone()));
        std::env::remove_var("ALEXNET_CUDA_INCLUDE");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn points_at_the_generated_line() {
        let src = "a\nb\nint x = ;\n";
        let log = "net.cu(3): error: expected an expression\n";
        assert!(offending_lines(src, log).contains("3 | int x = ;"));
    }
}
