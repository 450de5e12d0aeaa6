//! Timing candidate kernels on this GPU, for `alexnet tune` (issue 17): each candidate is
//! a stage's forward kernels with one tile ([`alexnet_core::kernels::tuning::Choice`]),
//! compiled and loaded together, run on buffers of the sizes their specs say, and timed
//! in the same process, one after another in rounds.

use std::collections::HashMap;
use std::time::Instant;

use cudarc::driver::CudaSlice;

use super::binder::Binder;
use super::device::Cuda;
use crate::backend::Memory;
use crate::error::{Error, Result};
use crate::ir::KernelSpec;
use alexnet_core::kernels::spec::{Access, ArgTy};

impl Cuda {
    /// Median seconds of each candidate's kernels (launched in order, as a stage runs
    /// them) on `batch` images, over `rounds` rounds of `reps` back-to-back runs replayed
    /// as one CUDA graph (recorded as [`Model::capture`](crate::Model::capture) records:
    /// nothing else may use this GPU's context meanwhile), the
    /// candidates interleaved within each round so that a drift of the GPU's clock hits
    /// them alike. Every candidate's pointer arguments are named `x`, `w`, `bias`, `y`,
    /// `ws` (a forward GEMM's and its split-K sum's): one buffer of each name, as long as
    /// the longest candidate needs, filled with small values.
    pub fn time_candidates(
        &self,
        candidates: &[Vec<KernelSpec>],
        batch: usize,
        rounds: usize,
        reps: usize,
    ) -> Result<Vec<f64>> {
        let specs: Vec<KernelSpec> = candidates.iter().flatten().cloned().collect();
        let loaded = self.load(&specs)?;
        // The kernels index in 32 bits (as `launch::batch_i32` checks for a plan's).
        let b = i32::try_from(batch)
            .ok()
            .filter(|_| {
                specs
                    .iter()
                    .flat_map(|s| s.args.iter())
                    .all(|a| a.len.is_none_or(|l| l.needed(batch) <= i32::MAX as u64))
            })
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "cuda: batch {batch} too large to time (32-bit indexing)"
                ))
            })?;
        // One buffer per argument name, as long as the longest use.
        let mut need: HashMap<&'static str, usize> = HashMap::new();
        for s in &specs {
            for a in s.args.iter() {
                if let ArgTy::Ptr(..) = a.ty {
                    let len = a.len.map(|l| l.needed(batch) as usize).ok_or_else(|| {
                        Error::Internal(format!("{}: `{}` has no length", s.name(), a.name))
                    })?;
                    let e = need.entry(a.name).or_default();
                    *e = (*e).max(len);
                }
            }
        }
        let mut bufs: HashMap<&'static str, CudaSlice<f32>> = HashMap::new();
        for (name, len) in need {
            let data: Vec<f32> = (0..len).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
            bufs.insert(name, self.upload(&data)?);
        }
        let kernels = loaded.all();
        let mut at = 0;
        let ranges: Vec<std::ops::Range<usize>> = candidates
            .iter()
            .map(|c| {
                at += c.len();
                at - c.len()..at
            })
            .collect();
        let run = |range: &std::ops::Range<usize>,
                   bufs: &mut HashMap<&'static str, CudaSlice<f32>>|
         -> Result<()> {
            for k in &kernels[range.clone()] {
                // The outputs first (each taken mutably once), then the inputs.
                let mut outs: Vec<(&'static str, CudaSlice<f32>)> = Vec::new();
                for a in k.spec.args.iter() {
                    if let ArgTy::Ptr(_, access) = a.ty {
                        if access != Access::Read {
                            let buf = bufs.remove(a.name).ok_or_else(|| {
                                Error::Internal(format!(
                                    "{}: no buffer `{}`",
                                    k.spec.name(),
                                    a.name
                                ))
                            })?;
                            outs.push((a.name, buf));
                        }
                    }
                }
                let mut binder = Binder::new().int("batch", b);
                for a in k.spec.args.iter() {
                    if let (ArgTy::Ptr(..), Some(buf)) = (a.ty, bufs.get(a.name)) {
                        binder = binder.read(a.name, buf);
                    }
                }
                for (name, buf) in outs.iter_mut() {
                    binder = binder.write(name, buf);
                }
                let launched = self.launch(k, batch, binder);
                for (name, buf) in outs {
                    bufs.insert(name, buf);
                }
                launched?;
            }
            Ok(())
        };
        // A warm-up run of each (its first launch loads the module's code), then `reps`
        // runs of each recorded as one CUDA graph: replayed, the kernels run back to back
        // with no host work between them (a bf16 fc kernel at batch 128 takes ~10-20 us,
        // less than launching it from here).
        for r in &ranges {
            run(r, &mut bufs)?;
        }
        let mut graphs = Vec::with_capacity(ranges.len());
        for r in &ranges {
            let ((), graph) = self.record(|| {
                for _ in 0..reps.max(1) {
                    run(r, &mut bufs)?;
                }
                Ok(())
            })?;
            graph
                .upload()
                .map_err(self.err("uploading a timing graph"))?;
            graphs.push(graph);
        }
        self.synchronize()?;
        let mut times = vec![Vec::with_capacity(rounds); ranges.len()];
        for _ in 0..rounds.max(1) {
            for (g, t) in graphs.iter().zip(times.iter_mut()) {
                let t0 = Instant::now();
                g.launch().map_err(self.err("launching a timing graph"))?;
                self.synchronize()?;
                t.push(t0.elapsed().as_secs_f64() / reps.max(1) as f64);
            }
        }
        Ok(times
            .into_iter()
            .map(|mut t| {
                t.sort_by(f64::total_cmp);
                t[t.len() / 2]
            })
            .collect())
    }
}
