//! Tuned tiles fixed in the source (issue 17). A table per GPU architecture,
//! `kernels_templates/tuning/<arch>.txt`, written by `alexnet tune` on that GPU, gives for a
//! learned layer's forward GEMM (keyed by its kind and shapes, the precision and the batch
//! it was timed at) the block tile, and split-K, that measured fastest. Code generation
//! takes each conv and fc stage's tile from the table of the architecture it generates for
//! ([`Table::builtin`]); where the table has no entry, the heuristic of [`super::gemm`]
//! and [`super::mma`] decides, as before there were tables. Any choice computes the same
//! function (a tile changes the order of nothing: each output is one thread's sum over K,
//! in K order, or split-K's ordered sum of parts), so a table only changes speed.
//!
//! The text format, one entry a line, `|`-separated, `#` comments:
//!
//! ```text
//! arch sm_90
//! gpu NVIDIA H200
//! measured 2026-12-02 by alexnet tune --net alexnet --precision f32,tf32,bf16 --batch 128
//! entry conv c48x27x27 o128 r5 s1 p2 g1 | f32 | 128 | simt 128x128x8 8x8 | 0.412 | 0.455
//! entry fc i9216 o2048 | bf16 | 128 | mma 32x128x32 1x4 st4 split4 | 0.061 | 0.070
//! ```
//!
//! An `entry` line: the GEMM's key ([`crate::layers::LayerKind::tuning_key`]), the
//! precision, the batch, the choice, and the medians in ms of the choice and of the
//! heuristic's tile, measured in the same run. Every other line before the entries is a
//! `name value` fact about the measurement (GPU, driver, CUDA, date, command).

use std::fmt;
use std::sync::OnceLock;

use super::precision::Precision;
use super::spec::{MmaTile, Tile};

/// The batch whose entries the generated kernels take: one kernel serves every batch, so
/// its tile is the one that measured fastest at the batch a GPU is busiest with.
pub const TUNED_BATCH: usize = 128;

/// The architecture `network!` generates kernels for, with its table; a GPU of another
/// architecture generates its own from that architecture's table, or the heuristic's.
pub const DEFAULT_ARCH: &str = "sm_90";

/// The tables committed in the repository, by architecture.
const TABLES: &[(&str, &str)] = &[(
    "sm_90",
    include_str!("../../../kernels_templates/tuning/sm_90.txt"),
)];

/// A forward GEMM's tile: what a table entry gives and what the tuner tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Choice {
    /// f32 on the CUDA cores (`gemm_core.cuh`): the block and per-thread tile.
    Simt(Tile),
    /// Tensor cores (`gemm_mma.cuh`): the block tile, as for 16-bit values, and split-K
    /// parts (1: none; fully connected layers only).
    Mma { tile: MmaTile, split: usize },
}

impl fmt::Display for Choice {
    /// `simt 128x96x8 8x8` (TM x TN x TK, RM x RN); `mma 128x128x32 2x4 st3 split1`
    /// (BM x BN x BK, warps, stages, split-K).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Simt(t) => write!(f, "simt {}x{}x{} {}x{}", t.tm, t.tn, t.tk, t.rm, t.rn),
            Choice::Mma { tile: t, split } => write!(
                f,
                "mma {}x{}x{} {}x{} st{} split{split}",
                t.bm, t.bn, t.bk, t.warps_m, t.warps_n, t.stages
            ),
        }
    }
}

/// `a x b [x c]` as numbers.
fn dims(s: &str) -> Option<Vec<usize>> {
    s.split('x').map(|v| v.parse().ok()).collect()
}

impl Choice {
    /// Reads what [`Choice`]'s `Display` writes.
    pub fn parse(s: &str) -> Result<Choice, String> {
        let bad = || {
            format!(
                "`{s}` is not a tile (`simt TMxTNxTK RMxRN` or `mma BMxBNxBK WMxWN stS splitP`)"
            )
        };
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            ["simt", block, thread] => match (dims(block).as_deref(), dims(thread).as_deref()) {
                (Some(&[tm, tn, tk]), Some(&[rm, rn])) => {
                    Ok(Choice::Simt(Tile { tm, rm, tn, rn, tk }))
                }
                _ => Err(bad()),
            },
            ["mma", block, warps, stages, split] => {
                let stages = stages.strip_prefix("st").and_then(|v| v.parse().ok());
                let split = split.strip_prefix("split").and_then(|v| v.parse().ok());
                match (
                    dims(block).as_deref(),
                    dims(warps).as_deref(),
                    stages,
                    split,
                ) {
                    (Some(&[bm, bn, bk]), Some(&[warps_m, warps_n]), Some(stages), Some(split)) => {
                        Ok(Choice::Mma {
                            tile: MmaTile {
                                bm,
                                bn,
                                bk,
                                warps_m,
                                warps_n,
                                stages,
                            },
                            split,
                        })
                    }
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }

    /// Whether a SIMT tile is one `gemm_core.cuh` takes: whole per-thread tiles, at most
    /// 1024 threads, both shared tiles within 48 KiB.
    pub fn simt_ok(t: &Tile) -> bool {
        t.rm > 0
            && t.rn > 0
            && t.tk > 0
            && t.tm.is_multiple_of(t.rm)
            && t.tn.is_multiple_of(t.rn)
            && t.tm >= t.rm
            && t.tn >= t.rn
            && t.threads() <= 1024
            && t.threads() >= 32
            && 4 * t.tk * (t.tm + t.tn) <= 48 * 1024
    }
}

/// SIMT tiles worth timing for a GEMM whose columns are `n` wide (a convolution's
/// output channels per group) and whose rows are many (`fc` false: pixels) or a batch
/// (`fc`): `first`, the heuristic's, then up to 11 others the template takes, 64 to 256
/// threads a block.
pub fn simt_candidates(first: Tile, n: usize, fc: bool) -> Vec<Choice> {
    let mut out = vec![Choice::Simt(first)];
    let (rows, cols): (&[usize], Vec<usize>) = if fc {
        (&[32, 64], vec![64, 128])
    } else {
        let edge = n.next_multiple_of(16).min(128);
        (&[64, 128], vec![edge, 64, 128])
    };
    for &tm in rows {
        for &tn in &cols {
            for (rm, rn) in [(8, 8), (8, 4), (4, 4), (2, 4)] {
                for tk in [8, 16] {
                    let t = Tile { tm, rm, tn, rn, tk };
                    let c = Choice::Simt(t);
                    if Choice::simt_ok(&t)
                        && (64..=256).contains(&t.threads())
                        && !out.contains(&c)
                        && out.len() < 12
                    {
                        out.push(c);
                    }
                }
            }
        }
    }
    out
}

/// Tensor-core tiles worth timing, `first` (the heuristic's) first: for a convolution
/// (`conv`, no split-K), 128 x 128 and 128 x 64 / 64 x 128 / 64 x 64 blocks in 3 or 4
/// stages; for a fully connected layer, 16 and 32 rows of 64 or 128 columns with split-K
/// of 1, 2, 4 or 8. The layer kind keeps those its GEMM accepts.
pub fn mma_candidates(first: Choice, conv: bool) -> Vec<Choice> {
    let mut out = vec![first];
    let tile = |bm, bn, bk, warps_m, warps_n, stages| MmaTile {
        bm,
        bn,
        bk,
        warps_m,
        warps_n,
        stages,
    };
    let more: Vec<Choice> = if conv {
        [
            tile(128, 128, 32, 2, 4, 3),
            tile(128, 128, 16, 2, 4, 4),
            tile(128, 64, 32, 2, 2, 4),
            tile(64, 128, 32, 2, 2, 4),
            tile(64, 64, 32, 2, 2, 4),
            tile(128, 64, 16, 4, 2, 4),
        ]
        .into_iter()
        .map(|tile| Choice::Mma { tile, split: 1 })
        .collect()
    } else {
        [
            tile(32, 128, 32, 1, 4, 4),
            tile(16, 128, 32, 1, 4, 4),
            tile(32, 64, 32, 1, 2, 4),
        ]
        .into_iter()
        .flat_map(|tile| [1, 2, 4, 8].map(|split| Choice::Mma { tile, split }))
        .collect()
    };
    for c in more {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// One measured choice.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The GEMM ([`crate::layers::LayerKind::tuning_key`]), e.g. `fc i9216 o2048`.
    pub key: String,
    pub precision: Precision,
    pub batch: usize,
    pub choice: Choice,
    /// Median milliseconds of the choice and of the heuristic's tile, in the same run.
    pub ms: f64,
    pub heuristic_ms: f64,
}

/// A tuning table: facts about the measurement, and the entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// `(name, value)` lines before the entries: `arch`, `gpu`, `driver`, `cuda`,
    /// `measured`, `command`.
    pub facts: Vec<(String, String)>,
    pub entries: Vec<Entry>,
}

impl Table {
    /// The table committed for `arch`, parsed once; `None` where there is none.
    pub fn builtin(arch: &str) -> Option<&'static Table> {
        static PARSED: OnceLock<Vec<(&'static str, Table)>> = OnceLock::new();
        let parsed = PARSED.get_or_init(|| {
            TABLES
                .iter()
                .map(|(arch, text)| {
                    let t = Table::parse(text)
                        .unwrap_or_else(|e| panic!("kernels_templates/tuning/{arch}.txt: {e}"));
                    (*arch, t)
                })
                .collect()
        });
        parsed.iter().find(|(a, _)| *a == arch).map(|(_, t)| t)
    }

    /// The value of fact `name` (`gpu`, `measured`, ...).
    pub fn fact(&self, name: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads a table's text; the error names the line.
    pub fn parse(text: &str) -> Result<Table, String> {
        let mut t = Table::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |e: String| format!("line {}: {e}", i + 1);
            let (name, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            if name != "entry" {
                if !t.entries.is_empty() {
                    return Err(at(format!("`{name}` after the entries")));
                }
                t.facts.push((name.to_string(), value.trim().to_string()));
                continue;
            }
            let cols: Vec<&str> = value.split('|').map(str::trim).collect();
            let [key, precision, batch, choice, ms, heuristic_ms] = cols.as_slice() else {
                return Err(at(format!(
                    "an entry has 6 `|`-separated columns, this one {}",
                    cols.len()
                )));
            };
            let num = |v: &str, what: &str| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| at(format!("{what} `{v}` is not a time in ms")))
            };
            t.entries.push(Entry {
                key: key.to_string(),
                precision: precision.parse().map_err(|e: String| at(e))?,
                batch: batch
                    .parse()
                    .map_err(|_| at(format!("batch `{batch}` is not a number")))?,
                choice: Choice::parse(choice).map_err(at)?,
                ms: num(ms, "time")?,
                heuristic_ms: num(heuristic_ms, "the heuristic's time")?,
            });
        }
        Ok(t)
    }

    /// The text [`Table::parse`] reads.
    pub fn to_text(&self) -> String {
        let mut s = String::from(
            "# alexnet-rs tuning table (alexnet-core/src/kernels/tuning.rs has the format).\n\
             # Written by `alexnet tune`; regenerate rather than edit.\n",
        );
        for (n, v) in &self.facts {
            s += &format!("{n} {v}\n");
        }
        for e in &self.entries {
            s += &format!(
                "entry {} | {} | {} | {} | {:.4} | {:.4}\n",
                e.key, e.precision, e.batch, e.choice, e.ms, e.heuristic_ms
            );
        }
        s
    }

    /// The entry for GEMM `key` in `precision` at `batch`; for f16 without one, bf16's
    /// (the same kernels but for the rounding, and the same tile rules).
    pub fn get(&self, key: &str, precision: Precision, batch: usize) -> Option<&Entry> {
        let find = |p: Precision| {
            self.entries
                .iter()
                .find(|e| e.key == key && e.precision == p && e.batch == batch)
        };
        find(precision).or_else(|| match precision {
            Precision::F16 => find(Precision::Bf16),
            _ => None,
        })
    }

    /// Adds `entry`, replacing one of the same key, precision and batch.
    pub fn set(&mut self, entry: Entry) {
        self.entries.retain(|e| {
            !(e.key == entry.key && e.precision == entry.precision && e.batch == entry.batch)
        });
        self.entries.push(entry);
    }
}

/// Where a stage's tile came from, for `summary` and `kernels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An entry of the table of this architecture, one of the layer's candidates.
    Table(String),
    /// The heuristic (no entry).
    Heuristic,
    /// The heuristic, the table's entry being a tile the layer does not take (only a
    /// hand-edited table, or one from another version of the templates, has one).
    Refused(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Table(arch) => write!(f, "tuned ({arch} table)"),
            Source::Heuristic => write!(f, "heuristic"),
            Source::Refused(arch) => {
                write!(f, "heuristic ({arch} table's entry refused by the layer)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_reads_what_it_writes() {
        let mut t = Table {
            facts: vec![
                ("arch".into(), "sm_90".into()),
                ("gpu".into(), "NVIDIA H200".into()),
            ],
            entries: Vec::new(),
        };
        let simt = Choice::Simt(Tile {
            tm: 128,
            rm: 8,
            tn: 64,
            rn: 4,
            tk: 16,
        });
        let mma = Choice::Mma {
            tile: MmaTile {
                bm: 32,
                bn: 128,
                bk: 32,
                warps_m: 1,
                warps_n: 4,
                stages: 4,
            },
            split: 4,
        };
        for (key, precision, choice) in [
            ("conv c48x27x27 o128 r5 s1 p2 g1", Precision::F32, simt),
            ("fc i9216 o2048", Precision::Bf16, mma),
        ] {
            t.set(Entry {
                key: key.into(),
                precision,
                batch: 128,
                choice,
                ms: 0.25,
                heuristic_ms: 0.5,
            });
        }
        let text = t.to_text();
        let back = Table::parse(&text).unwrap();
        assert_eq!(back, t, "{text}");
        assert_eq!(back.fact("gpu"), Some("NVIDIA H200"));
        assert_eq!(
            back.get("fc i9216 o2048", Precision::Bf16, 128)
                .unwrap()
                .choice,
            mma
        );
        assert!(back.get("fc i9216 o2048", Precision::Tf32, 128).is_none());
        assert!(back.get("fc i9216 o2048", Precision::Bf16, 1).is_none());
        // f16 takes bf16's entry (the same tiles); tf32 does not.
        assert_eq!(
            back.get("fc i9216 o2048", Precision::F16, 128),
            back.get("fc i9216 o2048", Precision::Bf16, 128)
        );
        assert!(back.get("fc i9216 o2048", Precision::Tf32, 128).is_none());
        // Replacing keeps one entry per key, precision and batch.
        let mut again = back.clone();
        again.set(Entry {
            ms: 0.2,
            ..back.entries[0].clone()
        });
        assert_eq!(again.entries.len(), 2);
    }

    #[test]
    fn a_malformed_table_names_its_line() {
        for (text, want) in [
            (
                "arch sm_90\nentry fc i1 o2 | f32 | 128 | simt 1x2 | 1 | 1\n",
                "line 2",
            ),
            ("entry fc i1 o2 | f32 | 128\n", "6 `|`-separated columns"),
            (
                "entry fc i1 o2 | f64 | 128 | simt 128x64x8 8x4 | 1 | 1\n",
                "line 1",
            ),
            (
                "entry fc i1 o2 | f32 | 128 | simt 128x64x8 8x4 | -1 | 1\n",
                "not a time",
            ),
            (
                "entry fc i1 o2 | f32 | 128 | simt 128x64x8 8x4 | 1 | 1\ngpu x\n",
                "after the entries",
            ),
        ] {
            let err = Table::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn the_committed_tables_parse() {
        for (arch, _) in TABLES {
            let t = Table::builtin(arch).unwrap();
            assert_eq!(t.fact("arch"), Some(*arch));
            for e in &t.entries {
                assert_eq!(e.batch, e.batch.max(1), "{arch}: {e:?}");
            }
        }
        assert!(Table::builtin("sm_1").is_none());
    }
}
