//! The CUBIN disk cache: a compiled kernel is stored in a folder, keyed by its source, the
//! NVRTC options, NVRTC's version and the architecture, so a second start loads instead
//! of compiling. The folder is the cache's own argument ([`Cache::at`]); the default,
//! [`Cache::from_env`], is the user's cache folder, which `ALEXNET_CACHE_DIR` moves and
//! `ALEXNET_NO_CACHE=1` turns off.

use std::path::{Path, PathBuf};

use super::nvrtc;
use crate::error::Result;

/// FNV-1a, 64 bits: stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A CUBIN cache in a folder, or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cache {
    dir: Option<PathBuf>,
}

impl Cache {
    /// A cache in `dir` (created when first written).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Cache {
            dir: Some(dir.into()),
        }
    }

    /// No cache: every kernel is compiled.
    pub fn disabled() -> Self {
        Cache { dir: None }
    }

    /// The user's cache: `ALEXNET_CACHE_DIR`, else `$XDG_CACHE_HOME/alexnet-rs/cubin`, else
    /// `~/.cache/alexnet-rs/cubin`; none with `ALEXNET_NO_CACHE=1` (or without a home).
    pub fn from_env() -> Self {
        if std::env::var_os("ALEXNET_NO_CACHE").is_some_and(|v| v == "1") {
            return Cache::disabled();
        }
        if let Some(d) = std::env::var_os("ALEXNET_CACHE_DIR") {
            return Cache::at(d);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        match base {
            Some(b) => Cache::at(b.join("alexnet-rs").join("cubin")),
            None => Cache::disabled(),
        }
    }

    /// The folder, if there is a cache.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The CUBIN of `source` for `arch`: from the cache, or compiled and then stored.
    pub fn cubin(&self, source: &str, name: &str, arch: &str, opts: &[String]) -> Result<Vec<u8>> {
        let (major, minor) = nvrtc::version()?;
        let key = fnv1a(&[
            source.as_bytes(),
            arch.as_bytes(),
            opts.join(" ").as_bytes(),
            format!("{major}.{minor}").as_bytes(),
        ]);
        let path = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{arch}-{key:016x}.cubin")));
        if let Some(p) = &path {
            if let Ok(bytes) = std::fs::read(p) {
                if !bytes.is_empty() {
                    return Ok(bytes);
                }
            }
        }
        let compiled = nvrtc::compile_cubin(source, name, arch, opts)?;
        if let Some(p) = &path {
            // A cache that cannot be written only costs a recompile next time.
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            let _ = crate::weights::write_atomic(p, &compiled.cubin);
        }
        Ok(compiled.cubin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_is_the_cache_s_own() {
        assert_eq!(Cache::at("/x").dir(), Some(Path::new("/x")));
        assert_eq!(Cache::disabled().dir(), None);
    }

    #[test]
    fn keys_are_stable_and_separate_parts() {
        assert_eq!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"ab", b"c"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
