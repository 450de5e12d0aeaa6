//! The CUBIN disk cache: a compiled kernel is stored in a folder, keyed by its source, the
//! NVRTC options, NVRTC's version and the architecture, so a second start loads instead
//! of compiling. The folder is the cache's own argument ([`Cache::at`]); the default,
//! [`Cache::from_env`], is the user's cache folder, which `ALEXNET_CACHE_DIR` moves and
//! `ALEXNET_NO_CACHE=1` turns off.
//!
//! An entry is a small header (its key, the architecture it was compiled for, the CUBIN's
//! length and checksum) followed by the CUBIN ([`encode_entry`]). [`Cache::fetch`] is the
//! one place entries are read and written: it checks the header, the checksum and the
//! CUBIN's own ELF header against what was asked for ([`check_entry`]), and an entry that
//! is truncated, corrupt, or made for another kernel or architecture is compiled again and
//! replaced, with a one-line notice on standard error. Entries are written atomically (a
//! temporary file of a name unique to the process and the call, then a rename), so
//! processes and threads compiling the same kernels at once all succeed and no reader sees
//! half an entry.

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

/// The first bytes of every entry.
const MAGIC: &[u8; 8] = b"ALXCUBIN";
/// The entry layout's version: part of every key, so entries of another layout (the bare
/// CUBINs of earlier versions, say) are never read.
const LAYOUT: u32 = 1;
/// `e_machine` of a CUDA ELF file.
const EM_CUDA: u16 = 190;

/// An entry's bytes: the magic `ALXCUBIN`, the layout version (u32), the architecture's
/// length (u32) and text, the key, the CUBIN's length and its checksum (u64 each, all
/// little-endian), then the CUBIN.
pub fn encode_entry(key: u64, arch: &str, cubin: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 32 + arch.len() + cubin.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&LAYOUT.to_le_bytes());
    out.extend_from_slice(&(arch.len() as u32).to_le_bytes());
    out.extend_from_slice(arch.as_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&(cubin.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv1a(&[cubin]).to_le_bytes());
    out.extend_from_slice(cubin);
    out
}

/// The CUBIN of `entry` if it is a whole, uncorrupted entry of `key` for `arch`; otherwise
/// what is wrong with it, for the notice.
pub fn check_entry<'a>(entry: &'a [u8], key: u64, arch: &str) -> Result<&'a [u8], String> {
    let mut rest = entry;
    let mut take = |n: usize| -> Result<&'a [u8], String> {
        if rest.len() < n {
            return Err(format!(
                "truncated: {} bytes, its header alone is longer",
                entry.len()
            ));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let u64_at = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    if take(MAGIC.len())? != MAGIC {
        return Err("not a cache entry (no header)".into());
    }
    let layout = u32_at(take(4)?);
    if layout != LAYOUT {
        return Err(format!("entry layout {layout}, not {LAYOUT}"));
    }
    let arch_len = u32_at(take(4)?) as usize;
    let made_for = take(arch_len)?;
    if made_for != arch.as_bytes() {
        return Err(format!(
            "made for {}, not {arch}",
            String::from_utf8_lossy(made_for)
        ));
    }
    let made_key = u64_at(take(8)?);
    if made_key != key {
        return Err(format!(
            "made for another kernel (key {made_key:016x}, not {key:016x})"
        ));
    }
    let len = u64_at(take(8)?);
    let sum = u64_at(take(8)?);
    let cubin = rest;
    if cubin.len() as u64 != len {
        return Err(format!(
            "{} bytes of CUBIN where its header says {len}",
            cubin.len()
        ));
    }
    if fnv1a(&[cubin]) != sum {
        return Err("corrupt: the CUBIN's checksum does not match".into());
    }
    check_cubin(cubin, arch)?;
    Ok(cubin)
}

/// Whether `cubin` is a CUDA ELF file and, where its ELF header says (the layouts of ELF
/// ABI versions up to 8 are known), compiled for `arch`'s SM version.
fn check_cubin(cubin: &[u8], arch: &str) -> Result<(), String> {
    if cubin.len() < 64 || &cubin[..4] != b"\x7fELF" || cubin[4] != 2 {
        return Err("corrupt: the CUBIN is not a 64-bit ELF file".into());
    }
    let machine = u16::from_le_bytes([cubin[18], cubin[19]]);
    if machine != EM_CUDA {
        return Err(format!(
            "corrupt: the CUBIN is an ELF file for machine {machine}, not CUDA ({EM_CUDA})"
        ));
    }
    let flags = u32::from_le_bytes([cubin[48], cubin[49], cubin[50], cubin[51]]);
    // CUDA's ELF ABI version 8 (CUDA 12.8 and later) moved the SM version from the flags'
    // low byte to the next one.
    let sm = match cubin[8] {
        0..=7 => flags & 0xff,
        8 => (flags >> 8) & 0xff,
        _ => return Ok(()),
    };
    let wanted = arch
        .strip_prefix("sm_")
        .map(|s| s.trim_end_matches(|c: char| c.is_ascii_alphabetic()))
        .and_then(|s| s.parse::<u32>().ok());
    match wanted {
        Some(w) if w != sm => Err(format!("its CUBIN is compiled for sm_{sm}, not {arch}")),
        _ => Ok(()),
    }
}

/// Where [`Cache::fetch`] found a CUBIN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A valid entry of the cache.
    Cached,
    /// Compiled: there is no cache, or no entry yet (one has been written).
    Compiled,
    /// Compiled because the entry was unusable: why. The entry has been replaced.
    Replaced(String),
}

/// A CUBIN and where [`Cache::fetch`] found it.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub cubin: Vec<u8>,
    pub origin: Origin,
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

    /// The key of `source` compiled for `arch` with `opts` by this NVRTC.
    pub fn key(source: &str, arch: &str, opts: &[String]) -> Result<u64> {
        let (major, minor) = nvrtc::version()?;
        Ok(fnv1a(&[
            &LAYOUT.to_le_bytes(),
            source.as_bytes(),
            arch.as_bytes(),
            opts.join(" ").as_bytes(),
            format!("{major}.{minor}").as_bytes(),
        ]))
    }

    /// The file of the entry of `key` for `arch`, if there is a cache.
    pub fn entry_path(&self, key: u64, arch: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{arch}-{key:016x}.cubin")))
    }

    /// The CUBIN of `source` for `arch`: from the cache, or compiled and then stored.
    pub fn cubin(&self, source: &str, name: &str, arch: &str, opts: &[String]) -> Result<Vec<u8>> {
        Ok(self.fetch(source, name, arch, opts)?.cubin)
    }

    /// [`Cache::cubin`], saying where the CUBIN came from. An unusable entry (truncated,
    /// corrupt, for another kernel or architecture; see [`check_entry`]) is compiled again
    /// and replaced, with a one-line notice on standard error.
    pub fn fetch(&self, source: &str, name: &str, arch: &str, opts: &[String]) -> Result<Fetched> {
        let key = Self::key(source, arch, opts)?;
        self.get_or_compile(key, arch, || {
            Ok(nvrtc::compile_cubin(source, name, arch, opts)?.cubin)
        })
    }

    /// The entry of `key` for `arch` if it is valid, else `compile()`'s CUBIN, stored.
    fn get_or_compile(
        &self,
        key: u64,
        arch: &str,
        compile: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Fetched> {
        let path = self.entry_path(key, arch);
        let mut unusable = None;
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(entry) => match check_entry(&entry, key, arch) {
                    Ok(cubin) => {
                        return Ok(Fetched {
                            cubin: cubin.to_vec(),
                            origin: Origin::Cached,
                        })
                    }
                    Err(why) => unusable = Some(why),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => unusable = Some(format!("unreadable: {e}")),
            }
        }
        let cubin = compile()?;
        // A cache that cannot be written only costs a compile next time.
        let stored = match &path {
            Some(p) => store(p, &encode_entry(key, arch, &cubin)),
            None => Ok(()),
        };
        let origin = match (unusable, &path) {
            (Some(why), Some(p)) => {
                let outcome = match &stored {
                    Ok(()) => "compiled again and replaced".to_string(),
                    Err(e) => format!("compiled again, but not replaced: {e}"),
                };
                eprintln!(
                    "alexnet: CUBIN cache entry {} is unusable ({why}); {outcome}",
                    p.display()
                );
                Origin::Replaced(why)
            }
            _ => Origin::Compiled,
        };
        Ok(Fetched { cubin, origin })
    }
}

/// Writes `entry` to `path` atomically (see [`crate::weights::write_atomic`]: a temporary
/// file named for the process and the call, then a rename).
fn store(path: &Path, entry: &[u8]) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| crate::error::Error::io(d, e))?;
    }
    crate::weights::write_atomic(path, entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    /// A fresh folder for one test.
    fn folder(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("alexnet-cubin-cache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The start of a CUDA ELF file (ABI version 8) for `sm`, then `len` bytes of payload.
    fn fake_cubin(sm: u32, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[7] = 0x41;
        b[8] = 8;
        b[18..20].copy_from_slice(&EM_CUDA.to_le_bytes());
        b[48..52].copy_from_slice(&(0x0600_0004 | (sm << 8)).to_le_bytes());
        b.extend((0..len).map(|i| (i * 31 % 251) as u8));
        b
    }

    /// Whether NVRTC can be loaded: CI must have it (.ci/run installs the wheel); a
    /// developer's machine without it skips, with a notice.
    fn nvrtc_or_skip() -> bool {
        if nvrtc::available() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "NVRTC is not loadable in CI: .ci/run installs the nvidia-cuda-nvrtc wheel and sets LD_LIBRARY_PATH"
        );
        eprintln!("skipped: libnvrtc.so.13 not loadable (see .ci/run for the wheel)");
        false
    }

    #[test]
    fn the_folder_is_the_cache_s_own() {
        assert_eq!(Cache::at("/x").dir(), Some(Path::new("/x")));
        assert_eq!(Cache::disabled().dir(), None);
        assert_eq!(Cache::disabled().entry_path(1, "sm_90"), None);
        assert_eq!(
            Cache::at("/x").entry_path(0xab, "sm_90"),
            Some(PathBuf::from("/x/sm_90-00000000000000ab.cubin"))
        );
    }

    #[test]
    fn keys_are_stable_and_separate_parts() {
        assert_eq!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"ab", b"c"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    #[test]
    fn every_truncation_and_flipped_byte_of_an_entry_is_caught() {
        let cubin = fake_cubin(90, 300);
        let entry = encode_entry(7, "sm_90", &cubin);
        assert_eq!(check_entry(&entry, 7, "sm_90"), Ok(&cubin[..]));
        for n in 0..entry.len() {
            assert!(check_entry(&entry[..n], 7, "sm_90").is_err(), "cut at {n}");
        }
        for i in 0..entry.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut e = entry.clone();
                e[i] ^= mask;
                assert!(check_entry(&e, 7, "sm_90").is_err(), "byte {i} ^ {mask:#x}");
            }
        }
        let mut longer = entry.clone();
        longer.push(0);
        assert!(check_entry(&longer, 7, "sm_90").is_err());
        // A bare CUBIN (an entry of the layout before headers), another kernel's entry.
        assert_eq!(
            check_entry(&cubin, 7, "sm_90"),
            Err("not a cache entry (no header)".into())
        );
        assert!(check_entry(&entry, 8, "sm_90")
            .unwrap_err()
            .contains("another kernel"));
    }

    #[test]
    fn another_architecture_s_entry_is_caught() {
        let cubin = fake_cubin(80, 100);
        let entry = encode_entry(7, "sm_80", &cubin);
        assert_eq!(
            check_entry(&entry, 7, "sm_90"),
            Err("made for sm_80, not sm_90".into())
        );
        // A header that lies: the CUBIN's own ELF header says sm_80.
        let lying = encode_entry(7, "sm_90", &cubin);
        assert_eq!(
            check_entry(&lying, 7, "sm_90"),
            Err("its CUBIN is compiled for sm_80, not sm_90".into())
        );
        // The suffixes of an architecture name the same SM version; ELF ABI version 7
        // keeps it in the flags' low byte.
        assert!(check_entry(&encode_entry(7, "sm_90a", &fake_cubin(90, 1)), 7, "sm_90a").is_ok());
        let mut old = fake_cubin(80, 10);
        old[8] = 7;
        old[48..52].copy_from_slice(&0x0050_0050u32.to_le_bytes());
        assert!(check_entry(&encode_entry(7, "sm_80", &old), 7, "sm_80").is_ok());
        assert!(check_entry(&encode_entry(7, "sm_90", &old), 7, "sm_90").is_err());
        let mut not_cuda = fake_cubin(90, 10);
        not_cuda[18] = 62;
        assert!(
            check_entry(&encode_entry(7, "sm_90", &not_cuda), 7, "sm_90")
                .unwrap_err()
                .contains("not CUDA")
        );
    }

    #[test]
    fn unusable_entries_are_compiled_again_and_replaced() {
        let dir = folder("replace");
        let cache = Cache::at(&dir);
        let good = fake_cubin(90, 1000);
        let compile = || Ok(good.clone());
        let first = cache.get_or_compile(5, "sm_90", compile).unwrap();
        assert_eq!(
            (first.cubin.as_slice(), first.origin),
            (&good[..], Origin::Compiled)
        );
        let path = cache.entry_path(5, "sm_90").unwrap();
        let entry = std::fs::read(&path).unwrap();
        let hit = cache
            .get_or_compile(5, "sm_90", || panic!("compiled a cached kernel"))
            .unwrap();
        assert_eq!((hit.cubin, hit.origin), (good.clone(), Origin::Cached));

        let mut flipped = entry.clone();
        flipped[entry.len() - 10] ^= 4;
        let other_arch = encode_entry(5, "sm_80", &fake_cubin(80, 1000));
        for (what, bad) in [
            ("truncated", entry[..entry.len() / 2].to_vec()),
            ("empty", Vec::new()),
            ("flipped", flipped),
            ("other arch", other_arch),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let again = cache.get_or_compile(5, "sm_90", compile).unwrap();
            assert!(
                matches!(again.origin, Origin::Replaced(_)),
                "{what}: {:?}",
                again.origin
            );
            assert_eq!(again.cubin, good, "{what}");
            assert_eq!(std::fs::read(&path).unwrap(), entry, "{what}: not replaced");
        }
        // A compile error is the caller's; no cache compiles every time.
        let err = cache
            .get_or_compile(6, "sm_90", || Err(Error::Invalid("no".into())))
            .unwrap_err();
        assert_eq!(err.to_string(), "no");
        assert_eq!(
            cache.entry_path(6, "sm_90").map(|p| p.exists()),
            Some(false)
        );
        let none = Cache::disabled()
            .get_or_compile(5, "sm_90", compile)
            .unwrap();
        assert_eq!(none.origin, Origin::Compiled);
        // Nothing is left in the folder but the entry: no temporary files.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn concurrent_writers_and_readers_never_see_half_an_entry() {
        let dir = folder("concurrent-fake");
        let good = fake_cubin(90, 256 * 1024);
        let entry = encode_entry(9, "sm_90", &good);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (dir, good, entry) = (&dir, &good, &entry);
                s.spawn(move || {
                    let cache = Cache::at(dir);
                    for i in 0..40 {
                        // Half the threads also rewrite the entry each time.
                        if t % 2 == 0 {
                            store(&cache.entry_path(9, "sm_90").unwrap(), entry).unwrap();
                        }
                        let f = cache
                            .get_or_compile(9, "sm_90", || Ok(good.clone()))
                            .unwrap();
                        assert_ne!(
                            std::mem::discriminant(&f.origin),
                            std::mem::discriminant(&Origin::Replaced(String::new())),
                            "thread {t}, round {i}: {:?}",
                            f.origin
                        );
                        assert!(f.cubin == *good, "thread {t}, round {i}");
                    }
                });
            }
        });
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    const KERNEL: &str =
        "extern \"C\" __global__ void add_one(float* x) { x[threadIdx.x] += 1.0f; }";

    /// Through NVRTC (no GPU): entries truncated, with a byte flipped, or of another
    /// architecture written under the key are compiled again and replaced.
    #[test]
    fn nvrtc_entries_that_are_damaged_are_compiled_again() {
        if !nvrtc_or_skip() {
            return;
        }
        let dir = folder("nvrtc-replace");
        let cache = Cache::at(&dir);
        let opts: Vec<String> = Vec::new();
        let sm80 = cache.fetch(KERNEL, "add_one.cu", "sm_80", &opts).unwrap();
        let sm90 = cache.fetch(KERNEL, "add_one.cu", "sm_90", &opts).unwrap();
        assert_eq!(
            (sm80.origin, sm90.origin.clone()),
            (Origin::Compiled, Origin::Compiled)
        );
        let key80 = Cache::key(KERNEL, "sm_80", &opts).unwrap();
        let key90 = Cache::key(KERNEL, "sm_90", &opts).unwrap();
        let path80 = cache.entry_path(key80, "sm_80").unwrap();
        let path90 = cache.entry_path(key90, "sm_90").unwrap();
        let entry80 = std::fs::read(&path80).unwrap();
        let entry90 = std::fs::read(&path90).unwrap();
        assert_eq!(check_entry(&entry90, key90, "sm_90"), Ok(&sm90.cubin[..]));
        let hit = cache.fetch(KERNEL, "add_one.cu", "sm_90", &opts).unwrap();
        assert_eq!(hit.origin, Origin::Cached);

        let mut flipped = entry90.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x10;
        for (what, bad, why) in [
            (
                "truncated",
                entry90[..entry90.len() - 100].to_vec(),
                "bytes of CUBIN",
            ),
            ("flipped", flipped, "checksum"),
            (
                "sm_80's entry",
                entry80.clone(),
                "made for sm_80, not sm_90",
            ),
            (
                "sm_80's CUBIN under an sm_90 header",
                encode_entry(key90, "sm_90", &sm80.cubin),
                "compiled for sm_80, not sm_90",
            ),
        ] {
            std::fs::write(&path90, &bad).unwrap();
            let f = cache.fetch(KERNEL, "add_one.cu", "sm_90", &opts).unwrap();
            match &f.origin {
                Origin::Replaced(w) => assert!(w.contains(why), "{what}: {w}"),
                other => panic!("{what}: {other:?}"),
            }
            let now = std::fs::read(&path90).unwrap();
            assert_eq!(
                check_entry(&now, key90, "sm_90"),
                Ok(&f.cubin[..]),
                "{what}"
            );
            assert_eq!(
                cache
                    .fetch(KERNEL, "add_one.cu", "sm_90", &opts)
                    .unwrap()
                    .origin,
                Origin::Cached,
                "{what}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Through NVRTC: threads compiling the same kernel into an empty cache at once all
    /// succeed, and the entry left is valid.
    #[test]
    fn nvrtc_concurrent_compiles_of_one_kernel_all_succeed() {
        if !nvrtc_or_skip() {
            return;
        }
        let dir = folder("nvrtc-concurrent");
        let opts = vec!["--ptxas-options=-v".to_string()];
        let fetched: Vec<Fetched> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let (dir, opts) = (&dir, &opts);
                    s.spawn(move || Cache::at(dir).fetch(KERNEL, "add_one.cu", "sm_90", opts))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        for f in &fetched {
            assert!(
                matches!(f.origin, Origin::Compiled | Origin::Cached),
                "{:?}",
                f.origin
            );
        }
        let key = Cache::key(KERNEL, "sm_90", &opts).unwrap();
        let cache = Cache::at(&dir);
        let entry = std::fs::read(cache.entry_path(key, "sm_90").unwrap()).unwrap();
        let cubin = check_entry(&entry, key, "sm_90").unwrap();
        assert!(fetched.iter().any(|f| f.cubin == cubin));
        let hit = cache.fetch(KERNEL, "add_one.cu", "sm_90", &opts).unwrap();
        assert_eq!(hit.origin, Origin::Cached);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temporary files left"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
