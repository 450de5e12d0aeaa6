//! `alexnet tune`: times the candidate tiles of every conv and fc stage's forward GEMM on
//! a GPU, in one process, and writes the fastest of each into a tuning table
//! (`kernels_templates/tuning/<arch>.txt`, the format of `alexnet::codegen::kernels::tuning`),
//! which code generation then takes the tiles from. Needs a CUDA GPU.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use alexnet::codegen::cuda;
use alexnet::codegen::kernels::tuning::{Entry, Table, TUNED_BATCH};
use alexnet::ir::Precision;
use alexnet::runtime::cuda::nvrtc;
use alexnet::runtime::{Cuda, Memory};
use clap::Args;
use rayon::prelude::*;

use crate::args::{Net, PrecisionArg};
use crate::{AnyError, Ctx};

#[derive(Args)]
pub struct TuneArgs {
    /// The networks whose stages to tune (a split network's towers' stages too).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Net::Alexnet])]
    net: Vec<Net>,
    /// The GPU to time on (`cuda` or `cuda:N`; tuning needs a GPU).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// The precisions to tune.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [PrecisionArg::F32, PrecisionArg::Tf32, PrecisionArg::Bf16])]
    precision: Vec<PrecisionArg>,
    /// The batch to time at; the generated kernels take the entries at 128.
    #[arg(long, default_value_t = TUNED_BATCH as u64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    batch: u64,
    /// Timed rounds (the candidates of a stage interleaved in each); the median counts.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,
    /// The table to write, replaced whole (every network that needs entries goes in one
    /// run's --net), after each precision. Default: `kernels_templates/tuning/<arch>.txt`
    /// under the current folder (the repository's, when run from its root).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `YYYY-MM-DD` of the system clock, in UTC (days to a civil date, Howard Hinnant's
/// algorithm).
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Writes `table` to `out` whole: to a temporary file, then renamed over it.
fn write_table(table: &Table, out: &std::path::Path) -> Result<(), AnyError> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = out.with_extension("txt.tmp");
    std::fs::write(&tmp, table.to_text())?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

pub fn tune(ctx: &mut Ctx, a: TuneArgs) -> Result<(), AnyError> {
    let ordinal = match a.device.as_str() {
        "cuda" => 0,
        d => d
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                format!("tune times kernels on a GPU: --device is `cuda` or `cuda:N`, not `{d}`")
            })?,
    };
    if let Some(why) = Cuda::unavailable_reason() {
        return Err(format!("tune times kernels on a GPU, and {why}").into());
    }
    let plans: Vec<_> = a.net.iter().map(|n| n.plan()).collect();
    let names: Vec<String> = plans.iter().map(|p| p.name.to_string()).collect();
    let batch = a.batch as usize;
    let probe = Cuda::new(ordinal)?;
    let arch = probe.arch().to_string();
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("kernels_templates/tuning/{arch}.txt")));
    let mut table = Table::default();
    let (major, minor) = alexnet::runtime::cuda::nvrtc::version()?;
    let precisions: Vec<String> = a
        .precision
        .iter()
        .map(|p| Precision::from(*p).to_string())
        .collect();
    table.facts = vec![
        ("arch".into(), arch.clone()),
        ("gpu".into(), probe.name()),
        ("nvrtc".into(), format!("{major}.{minor}")),
        ("measured".into(), today()),
        (
            "command".into(),
            format!(
                "alexnet tune --net {} --precision {} --batch {batch} --rounds {}",
                names.join(",").to_lowercase(),
                precisions.join(","),
                a.rounds
            ),
        ),
    ];
    writeln!(
        ctx.out,
        "tuning {} on {} ({arch}) at batch {batch}, {} rounds",
        names.join(", "),
        probe.name(),
        a.rounds
    )?;
    let t0 = Instant::now();
    for &p in &a.precision {
        let precision = Precision::from(p);
        let gpu = Cuda::new(ordinal)?.with_precision(precision)?;
        let stages = plans.iter().flat_map(|p| cuda::tunable(p, precision));
        for mut stage in stages {
            if stage.candidates.is_empty() {
                // No tile to choose (a tensor-core GEMM the shape refuses: the f32 kernel).
                continue;
            }
            // Only candidates that compile without spilling (ptxas's report, in parallel;
            // the heuristic's never spills: tests/nvrtc_kernels.rs).
            let free: Vec<bool> = stage
                .candidates
                .par_iter()
                .map(|(_, specs)| {
                    specs.iter().try_fold(true, |ok, s| {
                        Ok::<_, alexnet::runtime::Error>(ok && nvrtc::spill_free(s, &arch)?)
                    })
                })
                .collect::<Result<_, _>>()?;
            if !free.first().copied().unwrap_or(false) {
                return Err(format!("{}: the heuristic's tile spills on {arch}", stage.key).into());
            }
            let mut keep = free.iter();
            stage.candidates.retain(|_| *keep.next().unwrap_or(&false));
            let specs: Vec<Vec<_>> = stage.candidates.iter().map(|(_, s)| s.clone()).collect();
            let times = gpu.time_candidates(&specs, batch, a.rounds as usize, 20)?;
            let (best, ms) = times
                .iter()
                .enumerate()
                .min_by(|x, y| x.1.total_cmp(y.1))
                .map(|(i, t)| (i, t * 1e3))
                .ok_or_else(|| format!("{}: no candidate tiles", stage.key))?;
            // The heuristic's tile is the first candidate, and never spills.
            let heuristic_ms = times[0] * 1e3;
            let choice = stage.candidates[best].0;
            writeln!(
                ctx.out,
                "  {precision:<5} {:<14} {:<36} {} candidates: heuristic {heuristic_ms:.4} ms, best {ms:.4} ms ({choice})",
                stage.label,
                stage.key,
                times.len()
            )?;
            table.set(Entry {
                key: stage.key,
                precision,
                batch,
                choice,
                ms,
                heuristic_ms,
            });
        }
        gpu.synchronize()?;
        // After each precision, so that a run cut short keeps what it measured.
        write_table(&table, &out)?;
    }
    writeln!(
        ctx.out,
        "wrote {} ({} entries) in {:.0} s",
        out.display(),
        table.entries.len(),
        t0.elapsed().as_secs_f64()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn today_is_a_date() {
        let d = super::today();
        assert_eq!(d.len(), 10, "{d}");
        assert!(d.starts_with("20"), "{d}");
        assert_eq!(&d[4..5], "-");
    }
}
