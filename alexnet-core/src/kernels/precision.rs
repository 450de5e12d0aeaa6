//! The arithmetic a network's generated kernels run in, chosen at run time: a backend is
//! built with a [`Precision`] and loads that precision's kernels (`Kernels::forward_in`,
//! `Kernels::training_in`).

use std::fmt;
use std::str::FromStr;

/// The arithmetic of a network's products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 storage and f32 products, the same functions as the CPU backend (the default,
    /// and the reference every other precision is checked against).
    #[default]
    F32,
    /// f32 storage; the convolutions' and fully connected layers' products on tensor
    /// cores, forward and, in training, their input and weight gradients' too, each input
    /// rounded to tf32 (10-bit mantissa, round to nearest, ties away: `cvt.rna`, as
    /// PyTorch's `allow_tf32`) and accumulated in f32. The forward pass of a fully
    /// connected layer whose input rows are not whole 16-byte chunks (inputs not a
    /// multiple of 4) stays f32. CUDA only, compute capability 8.0 or later.
    Tf32,
    /// The convolutions' and fully connected layers' forward products with both operands
    /// rounded to bf16 (8-bit mantissa, to nearest, ties to even) and summed in f32; the
    /// other layers and the activations between stages stay f32.
    /// On the CPU AVX512_BF16's `vdpbf16ps` where it pays (AMD), an AVX-512 kernel that
    /// widens the bf16 operands to f32 for FMAs elsewhere, a portable kernel without
    /// AVX-512; the CPU's backward pass is f32. On a GPU (compute capability 8.0 or
    /// later) `mma.m16n8k16` on tensor cores, each f32 operand rounded as the kernel
    /// stages it in shared memory (`gemm_mma_bf16r`, `conv_mma_bf16r`), and in training
    /// the input and weight gradients too (`conv_mma_dgrad_bf16r`,
    /// `conv_mma_wgrad_bf16r`: dy, the filters and the input rounded), so a GPU's bf16
    /// gradients differ from the CPU's by bf16's error. Activations stored in
    /// 16 bits are not built yet.
    Bf16,
    /// bf16's kernels on a GPU with the operands rounded to f16 instead (10-bit mantissa,
    /// 5-bit exponent: to nearest, ties to even, overflow to infinity, subnormals kept;
    /// `gemm_mma_f16r`, `conv_mma_f16r`, `conv_mma_dgrad_f16r`, `conv_mma_wgrad_f16r`),
    /// `mma.m16n8k16` with f32 sums. Inference only for now: f16's range needs a loss
    /// scale in training (small gradients fall below its smallest normal, 6.1e-5), which
    /// is not built, so a trainer refuses it. CUDA only, compute capability 8.0 or later.
    F16,
}

impl Precision {
    /// Every precision, in the order of `--help`.
    pub const ALL: [Precision; 4] = [
        Precision::F32,
        Precision::Tf32,
        Precision::Bf16,
        Precision::F16,
    ];

    /// The name `--precision` takes: `f32`, `tf32`, `bf16`, `f16`.
    pub const fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// Needs tensor cores on a GPU.
    pub const fn tensor_cores(self) -> bool {
        matches!(self, Precision::Tf32 | Precision::Bf16 | Precision::F16)
    }

    /// The CUDA backend computes in it.
    pub const fn on_gpu(self) -> bool {
        matches!(
            self,
            Precision::F32 | Precision::Tf32 | Precision::Bf16 | Precision::F16
        )
    }

    /// A trainer takes it (f16 needs a loss scale, not built yet).
    pub const fn trains(self) -> bool {
        !matches!(self, Precision::F16)
    }

    /// The CPU backend computes in it.
    pub const fn on_cpu(self) -> bool {
        matches!(self, Precision::F32 | Precision::Bf16)
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
                format!("unknown precision `{s}`: expected {}", names.join(" or "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert_eq!(
            "fp8".parse::<Precision>(),
            Err("unknown precision `fp8`: expected f32 or tf32 or bf16 or f16".into())
        );
        assert_eq!(Precision::default(), Precision::F32);
    }
}
