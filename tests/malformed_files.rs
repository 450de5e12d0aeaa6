//! The readers of safetensors files, fed mutated files: weights (`read_safetensors`,
//! `read_metadata`, `Model::load`) and training states (`Trainer::resume`, which reads
//! through `Run::read`). Random truncations, flipped bytes, lying header lengths, lying
//! headers (offsets out of range, overlapping or mis-sized, dtypes and shapes that
//! disagree with the bytes, shapes whose product overflows, huge sizes), lying metadata,
//! and files whose header is consistent but whose tensors are not the network's. Every
//! reader must return (never panic), allocate no more at once than the file can back
//! (checked by this binary's allocator), and name the file in its error.
//!
//! The cases are drawn from a seed (`ALEXNET_FUZZ_SEED`, printed); `ALEXNET_FUZZ_CASE=N`
//! runs case N alone, `ALEXNET_FUZZ_CASES` sets how many run. A failing case's file is
//! kept (its path is in the report).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use alexnet::ir::Plan;
use alexnet::runtime::weights::{read_metadata, read_safetensors};
use alexnet::runtime::{Cpu, Model, Schedule, TrainConfig, Trainer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Cases run by default: at least 10,000 (the tiny network's files are a few kilobytes,
/// so a case takes well under a millisecond).
const CASES: u64 = 12_000;

// ---------------------------------------------------------------------------------------
// The allocator: the largest single allocation while a reader runs.

thread_local! {
    /// Largest allocation (bytes) allowed on this thread; 0: not watching.
    static LIMIT: Cell<usize> = const { Cell::new(0) };
    /// Largest allocation seen on this thread while watching.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// The case being run, for the report of an allocation too large to make.
    static CASE: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// Above this an allocation is not attempted: the process reports the case and aborts
/// (the allocation would abort it anyway, without saying which case).
const HARD_CAP: usize = 1 << 30;

struct Watching;

impl Watching {
    fn see(size: usize) {
        let limit = LIMIT.try_with(Cell::get).unwrap_or(0);
        if limit == 0 {
            return;
        }
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        if size > HARD_CAP {
            let case = CASE.try_with(Cell::get).unwrap_or(u64::MAX);
            let mut msg = StackText::default();
            let _ = writeln!(
                msg,
                "malformed_files: case {case} asked for {size} bytes at once (limit {limit}); rerun it with ALEXNET_FUZZ_CASE={case}"
            );
            use std::io::Write;
            let _ = std::io::stderr().write_all(msg.as_bytes());
            std::process::abort();
        }
    }
}

// SAFETY: forwards every call to the system allocator unchanged; `see` only reads and
// writes thread-local cells (const-initialised, no destructors) and, before aborting,
// formats into a stack buffer.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::see(layout.size());
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::see(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::see(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Text formatted without allocating.
struct StackText {
    buf: [u8; 256],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl StackText {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Runs `f` with allocations above `limit` bytes recorded; the largest one made.
fn largest_allocation<T>(case: u64, limit: usize, f: impl FnOnce() -> T) -> (T, usize) {
    CASE.with(|c| c.set(case));
    LARGEST.with(|l| l.set(0));
    LIMIT.with(|l| l.set(limit.max(1)));
    let out = f();
    LIMIT.with(|l| l.set(0));
    (out, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------------------
// Files: a safetensors file as parts that can lie.

/// One tensor of a header, every number as text so that it can be anything.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<String>,
    offsets: [String; 2],
}

/// A safetensors file taken apart: metadata, tensors, the data after the header.
#[derive(Clone, Debug)]
struct Parts {
    metadata: Vec<(String, String)>,
    /// Replaces `__metadata__`'s object when set (a value that is not an object of strings).
    raw_metadata: Option<String>,
    entries: Vec<Entry>,
    data: Vec<u8>,
    /// Appended to the header's JSON (spaces are allowed; anything else is not).
    header_tail: String,
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Parts {
    fn parse(bytes: &[u8]) -> Parts {
        let (n, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
        let mut metadata: Vec<(String, String)> = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        metadata.sort();
        let mut entries: Vec<Entry> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| Entry {
                name,
                dtype: info.dtype.to_string(),
                shape: info.shape.iter().map(|d| d.to_string()).collect(),
                offsets: [
                    info.data_offsets.0.to_string(),
                    info.data_offsets.1.to_string(),
                ],
            })
            .collect();
        entries.sort_by_key(|e| e.offsets[0].parse::<u64>().unwrap());
        Parts {
            metadata,
            raw_metadata: None,
            entries,
            data: bytes[8 + n..].to_vec(),
            header_tail: String::new(),
        }
    }

    fn header(&self) -> String {
        let mut items = Vec::new();
        match &self.raw_metadata {
            Some(raw) => items.push(format!("\"__metadata__\":{raw}")),
            None if self.metadata.is_empty() => {}
            None => items.push(format!(
                "\"__metadata__\":{{{}}}",
                self.metadata
                    .iter()
                    .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        }
        for e in &self.entries {
            items.push(format!(
                "{}:{{\"dtype\":{},\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                json_string(&e.name),
                json_string(&e.dtype),
                e.shape.join(","),
                e.offsets[0],
                e.offsets[1]
            ));
        }
        format!("{{{}}}{}", items.join(","), self.header_tail)
    }

    fn bytes(&self) -> Vec<u8> {
        let header = self.header();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Offsets and data made consistent with the entries' dtypes and shapes (random
    /// bytes), when every size is a small number; otherwise unchanged.
    fn make_consistent(&mut self, rng: &mut StdRng) -> bool {
        let mut sizes = Vec::new();
        for e in &self.entries {
            let bits = match e.dtype.as_str() {
                "F64" | "I64" | "U64" | "C64" => 64,
                "F32" | "I32" | "U32" => 32,
                "F16" | "BF16" | "I16" | "U16" => 16,
                "U8" | "I8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 8,
                _ => return false,
            };
            let mut n: u64 = 1;
            for d in &e.shape {
                match d.parse::<u64>().ok().and_then(|d| n.checked_mul(d)) {
                    Some(m) if m <= 1 << 20 => n = m,
                    _ => return false,
                }
            }
            sizes.push(n * bits / 8);
        }
        let mut at = 0u64;
        for (e, size) in self.entries.iter_mut().zip(&sizes) {
            e.offsets = [at.to_string(), (at + size).to_string()];
            at += size;
        }
        self.data = (0..at).map(|_| rng.random()).collect();
        true
    }
}

// ---------------------------------------------------------------------------------------
// Mutations.

const DTYPES: [&str; 14] = [
    "F32", "F16", "BF16", "F64", "I32", "I64", "U8", "I8", "BOOL", "U16", "F8_E4M3", "F4", "F128",
    "f32",
];

/// Numbers that break things: huge, overflowing, negative, not integers.
const HUGE: [&str; 10] = [
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775808",
    "4294967296",
    "1099511627776",
    "100000000000",
    "-1",
    "1.5",
    "1e30",
    "null",
];

/// Metadata values a tampered state could hold.
const VALUES: [&str; 22] = [
    "",
    "NaN",
    "inf",
    "-1",
    "0",
    "1e400",
    "18446744073709551616",
    "4294967296",
    "weekly",
    "step:0",
    "step:1:2",
    "plateau:2",
    "plateau:0.5:0",
    "constant:1",
    ",,,",
    "1.0,abc",
    "1.0,1.0",
    "-0.0,1,1,1",
    "alexnet-rs-training-state/1",
    "SmallNet",
    "T",
    "\u{0}\u{ffff}",
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A lie told in the header: one entry's offsets, dtype, shape or name, or the metadata.
fn lie(parts: &mut Parts, rng: &mut StdRng, log: &mut Vec<String>) {
    let n = parts.entries.len();
    if n == 0 {
        parts.entries.push(Entry {
            name: "x".into(),
            dtype: "F32".into(),
            shape: vec!["1".into()],
            offsets: ["0".into(), "4".into()],
        });
        log.push("added an entry".into());
        return;
    }
    let i = rng.random_range(0..n);
    let data_len = parts.data.len() as u64;
    let what = rng.random_range(0..16);
    let name = parts.entries[i].name.clone();
    let e = &mut parts.entries[i];
    match what {
        0 => {
            let end = data_len + rng.random_range(1..1000u64);
            e.offsets[1] = end.to_string();
            log.push(format!("`{name}` ends at {end}, past the data"));
        }
        1 => {
            e.offsets.swap(0, 1);
            log.push(format!("`{name}`'s offsets swapped"));
        }
        2 => {
            let h = pick(rng, &HUGE).to_string();
            let k = rng.random_range(0..2);
            e.offsets[k] = h.clone();
            log.push(format!("`{name}` offset {k} = {h}"));
        }
        3 => {
            let d = rng.random_range(-9i64..10);
            let k = rng.random_range(0..2);
            let v = e.offsets[k].parse::<i64>().unwrap_or(0) + d;
            e.offsets[k] = v.to_string();
            log.push(format!("`{name}` offset {k} moved by {d}"));
        }
        4 if n > 1 => {
            // Overlapping: start where another starts.
            let j = (i + 1) % n;
            let other = parts.entries[j].offsets[0].clone();
            parts.entries[i].offsets[0] = other;
            log.push(format!("`{name}` overlaps entry {j}"));
        }
        5 => {
            let d = pick(rng, &DTYPES).to_string();
            log.push(format!("`{name}` dtype {d}"));
            e.dtype = d;
        }
        6 => {
            let h = pick(rng, &HUGE).to_string();
            let k = rng.random_range(0..=e.shape.len());
            e.shape.insert(k, h.clone());
            log.push(format!("`{name}` shape gains a dimension {h}"));
        }
        7 => {
            e.shape = vec![
                "18446744073709551615".into(),
                "18446744073709551615".into(),
                "2".into(),
            ];
            log.push(format!("`{name}` shape overflows"));
        }
        8 => {
            e.shape = vec!["4294967296".into(), "4294967296".into(), "0".into()];
            log.push(format!("`{name}` shape overflows before its 0"));
        }
        9 => {
            if e.shape.is_empty() {
                e.shape.push("2".into());
            } else {
                let k = rng.random_range(0..e.shape.len());
                let v = e.shape[k].parse::<u64>().unwrap_or(1);
                e.shape[k] = [
                    0,
                    v.saturating_mul(2),
                    v.saturating_add(1),
                    v.saturating_sub(1),
                ][rng.random_range(0..4)]
                .to_string();
            }
            log.push(format!("`{name}` shape now {:?}", e.shape));
        }
        10 => {
            e.shape.clear();
            log.push(format!("`{name}` is a scalar"));
        }
        11 => {
            let to = match rng.random_range(0..5) {
                0 => String::new(),
                1 => format!("momentum.{name}"),
                2 => "momentum.".into(),
                3 => "é\u{1}".into(),
                _ => parts.entries[(i + 1) % n].name.clone(),
            };
            log.push(format!("`{name}` renamed {to:?}"));
            parts.entries[i].name = to;
        }
        12 => {
            parts.entries.remove(i);
            log.push(format!("`{name}` removed"));
        }
        13 => {
            let mut copy = parts.entries[i].clone();
            copy.name = format!("{name}.copy");
            log.push(format!("`{name}` duplicated"));
            parts.entries.push(copy);
        }
        14 => lie_in_metadata(parts, rng, log),
        _ => {
            let tail = pick(rng, &["    ", " x", "}", "\0", ",", "\u{feff}"]).to_string();
            log.push(format!("header followed by {tail:?}"));
            parts.header_tail = tail;
        }
    }
}

/// A lie in the metadata: a value changed or removed, or metadata that is not an object
/// of strings.
fn lie_in_metadata(parts: &mut Parts, rng: &mut StdRng, log: &mut Vec<String>) {
    if parts.metadata.is_empty() || rng.random_range(0..8) == 0 {
        let raw = pick(
            rng,
            &["5", "null", "[]", "{\"a\":1}", "{\"format\":{}}", "\"x\""],
        )
        .to_string();
        log.push(format!("metadata {raw}"));
        parts.raw_metadata = Some(raw);
    } else {
        let k = rng.random_range(0..parts.metadata.len());
        if rng.random_range(0..5) == 0 {
            let (key, _) = parts.metadata.remove(k);
            log.push(format!("metadata `{key}` removed"));
        } else {
            let v = pick(rng, &VALUES).to_string();
            log.push(format!("metadata `{}` = {v:?}", parts.metadata[k].0));
            parts.metadata[k].1 = v;
        }
    }
}

/// A mutation of `base`'s bytes; what was done is pushed on `log`. Four kinds, so that
/// every check of every reader is reached: the bytes damaged (truncated, flipped, a lying
/// header length, bytes appended); lies in the header with the data as it was (sizes
/// then rarely agree); lies in the header with the data remade to agree (a valid
/// safetensors file holding the wrong tensors); lies in the metadata alone (a tampered
/// state).
fn mutate(base: &[u8], rng: &mut StdRng, log: &mut Vec<String>) -> Vec<u8> {
    let header_len = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let (mut bytes, damage) = match rng.random_range(0..20) {
        0..=7 => (base.to_vec(), rng.random_range(1..4)),
        8..=11 => {
            let mut parts = Parts::parse(base);
            for _ in 0..rng.random_range(1..4) {
                lie(&mut parts, rng, log);
            }
            (parts.bytes(), rng.random_range(0..2))
        }
        12..=15 => {
            let mut parts = Parts::parse(base);
            for _ in 0..rng.random_range(1..3) {
                lie(&mut parts, rng, log);
            }
            if parts.make_consistent(rng) {
                log.push("data remade to agree".into());
            }
            (parts.bytes(), 0)
        }
        _ => {
            let mut parts = Parts::parse(base);
            for _ in 0..rng.random_range(1..3) {
                lie_in_metadata(&mut parts, rng, log);
            }
            (parts.bytes(), 0)
        }
    };
    for _ in 0..damage {
        match rng.random_range(0..4) {
            0 => {
                let at = rng.random_range(0..bytes.len().max(1));
                bytes.truncate(at);
                log.push(format!("cut at {at}"));
            }
            1 => {
                // Mostly in the header, where a flipped byte matters most.
                let within = if rng.random_range(0..3) > 0 {
                    (8 + header_len).min(bytes.len())
                } else {
                    bytes.len()
                };
                if within > 0 {
                    for _ in 0..rng.random_range(1..5) {
                        let at = rng.random_range(0..within);
                        let mask = rng.random_range(1..=255u8);
                        bytes[at] ^= mask;
                        log.push(format!("byte {at} ^= {mask:#04x}"));
                    }
                }
            }
            2 if bytes.len() >= 8 => {
                let n: u64 = match rng.random_range(0..7) {
                    0 => u64::MAX,
                    1 => 1 << 63,
                    2 => 100_000_000,
                    3 => 100_000_001,
                    4 => bytes.len() as u64 + rng.random_range(0..100),
                    5 => rng.random(),
                    _ => (header_len as u64).saturating_add_signed(rng.random_range(-8..9)),
                };
                bytes[..8].copy_from_slice(&n.to_le_bytes());
                log.push(format!("header length {n}"));
            }
            _ => {
                let extra = rng.random_range(1..64);
                bytes.extend((0..extra).map(|_| rng.random::<u8>()));
                log.push(format!("{extra} bytes appended"));
            }
        }
    }
    if log.is_empty() {
        log.push("unchanged".into());
    }
    bytes
}

// ---------------------------------------------------------------------------------------
// The readers.

/// The tiny network whose files are mutated.
const NET: &str = "Tiny<3, 6, 6> { conv(4, 3) relu maxpool(2, stride = 2) fc(5) softmax }";

thread_local! {
    /// The message and place of the last panic on this thread (the hook's, which
    /// prints nothing: a backtrace per case would take most of the run).
    static PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// What one reader did with the file at `path`: `Ok` or an error message; a panic is
/// an `Err` saying so.
fn readers(plan: &Plan, path: &Path) -> Vec<(&'static str, Result<(), String>)> {
    let run = |f: &dyn Fn() -> alexnet::runtime::Result<()>| match std::panic::catch_unwind(
        AssertUnwindSafe(f),
    ) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "PANICKED: {}",
            PANIC.with(|p| p.take()).unwrap_or_default()
        )),
    };
    vec![
        (
            "read_safetensors",
            run(&|| read_safetensors(path).map(drop)),
        ),
        ("read_metadata", run(&|| read_metadata(path).map(drop))),
        (
            "Model::load",
            run(&|| Model::load(Cpu::new(), plan.clone(), path).map(drop)),
        ),
        (
            "Trainer::resume",
            run(&|| Trainer::resume(Cpu::new(), plan.clone(), path).map(drop)),
        ),
    ]
}

/// The files mutated: weights (f32 and f16) and a training state of the tiny network.
fn baselines(plan: &Plan, dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let weights = dir.join("weights.safetensors");
    let model = Model::init(Cpu::new(), plan.clone(), 3).unwrap();
    model.save(&weights).unwrap();
    let f16 = {
        let t = read_safetensors(&weights).unwrap();
        let raw: Vec<(String, Vec<u8>, Vec<usize>)> = t
            .iter()
            .map(|t| {
                let b = t
                    .data
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect();
                (t.name.clone(), b, t.shape.clone())
            })
            .collect();
        let views = raw.iter().map(|(n, b, s)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), b)
                .unwrap();
            (n.clone(), v)
        });
        safetensors::serialize(views, None).unwrap()
    };
    let state = dir.join("state.safetensors");
    let config = TrainConfig {
        schedule: Schedule::Step {
            every: 2,
            factor: 0.5,
            floor: 0.001,
        },
        seed: 5,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, config).unwrap();
    trainer.set_note("data", "generated:5:7");
    trainer.save(&state).unwrap();
    let out = vec![
        ("weights", std::fs::read(&weights).unwrap()),
        ("f16 weights", f16),
        ("state", std::fs::read(&state).unwrap()),
    ];
    // Unmutated, every reader takes them (read_metadata and Trainer::resume aside, which
    // need metadata and a state).
    for (what, bytes) in &out {
        std::fs::write(dir.join("case.safetensors"), bytes).unwrap();
        for (reader, r) in readers(plan, &dir.join("case.safetensors")) {
            if *what == "state" || reader != "Trainer::resume" {
                assert!(r.is_ok(), "{what} with {reader}: {r:?}");
            }
        }
    }
    out
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

#[test]
fn mutated_weights_and_states_are_errors_that_name_the_file() {
    let seed = env_u64("ALEXNET_FUZZ_SEED").unwrap_or(0x5afe_7e45);
    let cases = env_u64("ALEXNET_FUZZ_CASES").unwrap_or(CASES);
    let only = env_u64("ALEXNET_FUZZ_CASE");
    println!("seed {seed} (ALEXNET_FUZZ_SEED), {cases} cases");
    let plan = alexnet::plan_from_str(NET).unwrap();
    let dir = std::env::temp_dir().join(format!("alexnet-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bases = baselines(&plan, &dir);
    // This binary's only test: its panics are recorded, not printed.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
    }));
    let started = std::time::Instant::now();
    let (mut failures, mut errors, mut oks) = (Vec::new(), 0u64, 0u64);
    let range = match only {
        Some(c) => c..c + 1,
        None => 0..cases,
    };
    for case in range {
        let mut rng = StdRng::seed_from_u64(seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (what, base) = pick(&mut rng, &bases);
        let mut log = Vec::new();
        let bytes = mutate(base, &mut rng, &mut log);
        // A new file per case: rewriting one file in place is slow on ext4, which
        // flushes a file truncated and written again.
        let path: PathBuf = dir.join(format!("case-{case}.safetensors"));
        let name = path.display().to_string();
        std::fs::write(&path, &bytes).unwrap();
        // Reading the file, 16-bit floats converted to f32 (twice their bytes), a few
        // small buffers (messages, the network's own buffers for resuming).
        let limit = 2 * bytes.len() + 4096;
        let (results, largest) = largest_allocation(case, limit, || readers(&plan, &path));
        let mut problems = Vec::new();
        if largest > limit {
            problems.push(format!(
                "allocated {largest} bytes at once for a file of {} bytes",
                bytes.len()
            ));
        }
        for (reader, r) in results {
            match r {
                Ok(()) => oks += 1,
                Err(e) if e.starts_with("PANICKED") => problems.push(format!("{reader}: {e}")),
                Err(e) if !e.contains(&name) => {
                    problems.push(format!("{reader}: the error does not name the file: {e}"))
                }
                Err(_) => errors += 1,
            }
        }
        if problems.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            failures.push(format!(
                "case {case} ({what}: {}; file kept as {name}):\n    {}",
                log.join(", "),
                problems.join("\n    ")
            ));
        }
    }
    std::panic::set_hook(hook);
    println!(
        "{} readings: {errors} errors, {oks} accepted, {} failing cases, in {:.1} s",
        errors + oks,
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failing cases (ALEXNET_FUZZ_SEED={seed} ALEXNET_FUZZ_CASE=N reruns one):\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
