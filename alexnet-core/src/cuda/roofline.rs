//! Where a generated kernel's time should go on a GPU, from its spec alone (no GPU
//! needed): how many of its blocks fit on a multiprocessor (from the registers and shared
//! memory ptxas reports), the arithmetic it does, the bytes it must move at the least,
//! and the time the roofline model allows for them with the GPU's measured ceilings.
//!
//! The model is deliberately simple: the compute ceiling is scaled by the fraction of the
//! multiprocessors a grid can occupy (a fully connected layer with 32 output tiles leaves
//! most of an H200 idle), and the bytes are each buffer read or written once (caches and
//! im2col re-reads are not counted). It says where a kernel is far from what the hardware
//! allows, not how fast it will run; `alexnet kernels --report` prints it.

use crate::ir::Plan;
use crate::kernels::spec::{Access, ArgTy, Elem, KernelSpec, Role};

/// A GPU's limits as the roofline model and the occupancy calculation use them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpu {
    pub name: &'static str,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// 32-bit registers per multiprocessor.
    pub regs_per_sm: u32,
    /// Registers are allocated per warp in units of this many.
    pub reg_unit: u32,
    /// Shared memory per multiprocessor usable by blocks, bytes.
    pub smem_per_sm: u32,
    /// Shared memory the driver reserves per block, bytes.
    pub smem_reserved_per_block: u32,
    pub max_threads_per_sm: u32,
    pub max_blocks_per_sm: u32,
    /// Arithmetic ceilings, FLOP/s: f32 on the CUDA cores, and the tensor cores' tf32 and
    /// 16-bit (f32 accumulation) rates.
    pub f32_flops: f64,
    pub tf32_flops: f64,
    pub f16_flops: f64,
    /// Memory bandwidth, bytes/s (reads plus writes).
    pub bandwidth: f64,
}

/// The H200 this project's GPU sessions run on (132 SMs, Hopper), with the ceilings
/// measured there on 2026-11-27 (`../shared/gpu/README.md`): fp32 GEMM ~51 TFLOP/s,
/// TF32 ~405 TFLOP/s, bf16 GEMM ~770 TFLOP/s, a device copy ~4.3 TB/s.
pub const H200: Gpu = Gpu {
    name: "H200",
    sms: 132,
    regs_per_sm: 65536,
    reg_unit: 256,
    smem_per_sm: 233_472,
    smem_reserved_per_block: 1024,
    max_threads_per_sm: 2048,
    max_blocks_per_sm: 32,
    f32_flops: 51e12,
    tf32_flops: 405e12,
    f16_flops: 770e12,
    bandwidth: 4.3e12,
};

impl Gpu {
    /// How many blocks of `threads` threads using `registers` registers per thread and
    /// `smem` bytes of shared memory run at once on one multiprocessor (0: none fits).
    pub fn blocks_per_sm(&self, threads: u32, registers: u32, smem: u32) -> u32 {
        let warps = threads.div_ceil(32).max(1);
        let regs_per_warp = (registers.max(1) * 32).div_ceil(self.reg_unit) * self.reg_unit;
        let by_regs = self.regs_per_sm / (regs_per_warp * warps);
        let by_threads = self.max_threads_per_sm / (warps * 32);
        let by_smem = match smem {
            0 => self.max_blocks_per_sm,
            s => self.smem_per_sm / (s + self.smem_reserved_per_block),
        };
        by_regs
            .min(by_threads)
            .min(by_smem)
            .min(self.max_blocks_per_sm)
    }
}

/// What limits a kernel in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Arithmetic (at the ceiling scaled by how much of the GPU the grid fills).
    Compute,
    /// Moving its bytes.
    Memory,
}

/// A kernel's roofline estimate at one batch size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Floating-point operations (a multiply-add counts two); 0 for kernels other than
    /// the GEMMs, whose few operations per element never bound them.
    pub flops: u64,
    /// Bytes read and written, each buffer once.
    pub bytes: u64,
    /// Blocks in the grid.
    pub blocks: u64,
    /// Blocks that run at once on one multiprocessor.
    pub blocks_per_sm: u32,
    /// The fraction of the multiprocessors that get a block (at most 1): the compute
    /// ceiling is scaled by it.
    pub fill: f64,
    /// The time the model allows, seconds.
    pub seconds: f64,
    pub bound: Bound,
}

/// The roofline estimate of `spec`, a kernel of `plan`, at batch `batch` on `gpu`, given
/// the registers per thread and static shared memory that ptxas reported for it.
pub fn estimate(
    spec: &KernelSpec,
    plan: &Plan,
    batch: usize,
    gpu: &Gpu,
    registers: u32,
    smem: u32,
) -> Estimate {
    // The three GEMMs of a conv or fc layer (output, input gradient, weight gradient) each
    // do the layer's multiply-adds.
    let flops = match spec.gemm {
        Some(_) => 2 * plan.layers[spec.layer()].macs() * batch as u64,
        None => 0,
    };
    let mut bytes: u64 = spec
        .args
        .iter()
        .filter_map(|a| {
            let (ArgTy::Ptr(elem, access), Some(len)) = (a.ty, a.len) else {
                return None;
            };
            let once = len.needed(batch) * elem.bytes() as u64;
            Some(if access == Access::Update {
                2 * once
            } else {
                once
            })
        })
        .sum();
    // The optimiser's kernels reach their tensors through a struct of pointers: the SGD
    // update reads weights, gradients and momentum and writes weights and momentum; the
    // finite check reads the gradients.
    let tensors = |first: usize, count: usize| -> u64 {
        let params = plan.params();
        let values: usize = params.iter().skip(first).take(count).map(|p| p.len()).sum();
        4 * values as u64
    };
    if let Role::Sgd { first, count } = spec.role {
        bytes += 5 * tensors(first, count);
    }
    if let Role::Finite { first, count } = spec.role {
        bytes += tensors(first, count);
    }
    let [x, y, z] = spec.launch.grid(batch);
    let blocks = u64::from(x) * u64::from(y) * u64::from(z);
    let per_sm = gpu.blocks_per_sm(spec.launch.block, registers, smem);
    // A grid of fewer blocks than SMs leaves SMs idle; each SM's own peak needs a few
    // blocks too, but the model charges only for the idle SMs.
    let fill = if per_sm == 0 {
        0.0
    } else {
        (blocks as f64 / f64::from(gpu.sms)).min(1.0)
    };
    let peak = match spec.gemm.map(|g| (g.elem, g.tile.tensor_cores())) {
        Some((Elem::F16 | Elem::Bf16, _)) => gpu.f16_flops,
        Some((Elem::F32, true)) => gpu.tf32_flops,
        Some((Elem::F32 | Elem::U8, _)) | None => gpu.f32_flops,
    };
    let compute = if flops == 0 {
        0.0
    } else if fill > 0.0 {
        flops as f64 / (peak * fill)
    } else {
        f64::INFINITY
    };
    let memory = bytes as f64 / gpu.bandwidth;
    let (seconds, bound) = if compute > memory {
        (compute, Bound::Compute)
    } else {
        (memory, Bound::Memory)
    };
    Estimate {
        flops,
        bytes,
        blocks,
        blocks_per_sm: per_sm,
        fill,
        seconds,
        bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_follows_registers_threads_and_shared_memory() {
        let g = H200;
        // 256 threads, 32 registers: 8 warps of 1024 registers = 8192; threads allow 8.
        assert_eq!(g.blocks_per_sm(256, 32, 0), 8);
        // 128 registers per thread: 256 threads x 128 = 32768 per block, two fit.
        assert_eq!(g.blocks_per_sm(256, 128, 0), 2);
        // 255 registers round up to 256 per thread: one block of 256 threads.
        assert_eq!(g.blocks_per_sm(256, 255, 0), 1);
        // Shared memory: 100 KB blocks, two fit in 228 KB.
        assert_eq!(g.blocks_per_sm(128, 32, 100_000), 2);
        // Tiny blocks stop at 32 per SM.
        assert_eq!(g.blocks_per_sm(32, 16, 0), 32);
        // Too much shared memory: none.
        assert_eq!(g.blocks_per_sm(128, 32, 240_000), 0);
    }
}
