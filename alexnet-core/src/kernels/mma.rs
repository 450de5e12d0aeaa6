//! The tensor-core GEMM (`kernels_templates/gemm_mma.cuh` on the primitives of
//! `mma.cuh`): `y[m, n] = relu?(bias?[n] + sum_k x[m, k] * w[n, k])` with f32 accumulators,
//! 16-bit inputs (bf16 or f16: `mma.m16n8k16`) or f32 inputs rounded to tf32
//! (`mma.m16n8k8`), a multi-stage `cp.async` pipeline into XOR-swizzled shared memory and
//! `ldmatrix` fragments. `x` is `M x K` with `M = batch * rows_per_image`, `w` is `N x K`
//! (a fully connected layer's weights), `y` is `M x N` f32.
//!
//! Used under [`Precision::Tf32`], [`Precision::Bf16`] and [`Precision::F16`] by the fully connected layers'
//! forward pass (`layers::fc`, split along K where the grid is small), by the
//! convolutions' (an implicit GEMM whose im2col tile the threads gather:
//! [`MmaGemm::conv`]), and in training by both kinds' input gradients (the transposed
//! convolution, both tiles gathered: [`MmaGemm::conv_data_grad`]) and weight and bias
//! gradients (dy against the im2col of the input, the sum over the batch in chunks whose
//! partial sums the f32 kernel adds in order: [`MmaGemm::conv_weight_grad`]). bf16 reads f32 operands and rounds them as it stages them
//! ([`MmaInputs::Bf16OfF32`], `gemm_mma_bf16r`): the activations between stages stay f32,
//! as in the CPU backend's bf16. The forms that read 16-bit operands are built and checked
//! (emulation, NVRTC) but no layer uses them yet: the runtime has no 16-bit activations to
//! bind them to.
//!

use super::precision::Precision;
pub use super::spec::MmaTile;
use super::spec::{
    int, read, write, Access, ArgTy, Elem, Epilogue, GemmInfo, GemmStage, GemmTile, Header,
    Instance, KernelLaunch, KernelSpec, Len, Param, Role, Template, Value, EW_THREADS,
};
use crate::shape::Shape;

/// The headers of the tensor-core GEMM.
pub const HEADERS: &[Header] = &[
    Header {
        name: "mma.cuh",
        text: include_str!("../../../kernels_templates/mma.cuh"),
    },
    Header {
        name: "gemm_mma.cuh",
        text: include_str!("../../../kernels_templates/gemm_mma.cuh"),
    },
];

const fn ptr(name: &'static str, elem: Elem, access: Access) -> Param {
    Param {
        name,
        ty: ArgTy::Ptr(elem, access),
    }
}

/// A template of `gemm_mma.cuh`.
const fn template(function: &'static str, params: &'static [Param]) -> Template {
    Template {
        header: "gemm_mma.cuh",
        function,
        params,
    }
}

const F32_PARAMS: [Param; 5] = params(Elem::F32);
const BF16_PARAMS: [Param; 5] = params(Elem::Bf16);
const F16_PARAMS: [Param; 5] = params(Elem::F16);

/// The parameters of `gemm_mma_<elem>`: the operands in `elem`, the rest f32.
const fn params(elem: Elem) -> [Param; 5] {
    [
        ptr("x", elem, Access::Read),
        ptr("w", elem, Access::Read),
        ptr("bias", Elem::F32, Access::Read),
        ptr("y", Elem::F32, Access::Write),
        Param {
            name: "batch",
            ty: ArgTy::Int,
        },
    ]
}

pub const GEMM_BF16: Template = template("gemm_mma_bf16", &BF16_PARAMS);

pub const GEMM_F16: Template = template("gemm_mma_f16", &F16_PARAMS);

/// f32 operands, rounded to tf32 (`cvt.rna`) in the kernel.
pub const GEMM_TF32: Template = template("gemm_mma_tf32", &F32_PARAMS);

/// A convolution's forward pass on tensor cores (tf32): the implicit GEMM over its im2col.
pub const CONV_TF32: Template = template("conv_mma_tf32", &F32_PARAMS);

/// f32 operands, each rounded to bf16 as the kernel stages it: bf16 products.
pub const GEMM_BF16R: Template = template("gemm_mma_bf16r", &F32_PARAMS);

/// A convolution's forward pass on tensor cores with f32 input and weights rounded to bf16.
pub const CONV_BF16R: Template = template("conv_mma_bf16r", &F32_PARAMS);

const DGRAD_PARAMS: [Param; 4] = [read("dy"), read("w"), write("dx"), int("batch")];

const WGRAD_PARAMS: [Param; 6] = [
    read("x"),
    read("dy"),
    write("dw"),
    write("db"),
    write("ws"),
    int("batch"),
];

/// A convolution's weight and bias gradients on tensor cores (tf32), the sum over the
/// batch in chunks.
pub const CONV_WGRAD_TF32: Template = template("conv_mma_wgrad_tf32", &WGRAD_PARAMS);

/// [`CONV_WGRAD_TF32`] with the output gradient and the input rounded to bf16.
pub const CONV_WGRAD_BF16R: Template = template("conv_mma_wgrad_bf16r", &WGRAD_PARAMS);

/// A convolution's input gradient on tensor cores (tf32): the transposed convolution of
/// the output gradient as an implicit GEMM.
pub const CONV_DGRAD_TF32: Template = template("conv_mma_dgrad_tf32", &DGRAD_PARAMS);

/// [`CONV_DGRAD_TF32`] with the output gradient and the filters rounded to bf16.
pub const CONV_DGRAD_BF16R: Template = template("conv_mma_dgrad_bf16r", &DGRAD_PARAMS);

const SPLIT_PARAMS: [Param; 4] = [read("x"), read("w"), write("ws"), int("batch")];

/// f32 operands, each rounded to f16 as the kernel stages it: f16 products.
pub const GEMM_F16R: Template = template("gemm_mma_f16r", &F32_PARAMS);

/// A convolution's forward pass on tensor cores with f32 input and weights rounded to f16.
pub const CONV_F16R: Template = template("conv_mma_f16r", &F32_PARAMS);

/// Split-K partial sums of f32 operands rounded to f16, into slice `blockIdx.z` of `ws`.
pub const GEMM_F16R_SPLIT: Template = template("gemm_mma_split_f16r", &SPLIT_PARAMS);

/// [`CONV_DGRAD_TF32`] with the output gradient and the filters rounded to f16.
pub const CONV_DGRAD_F16R: Template = template("conv_mma_dgrad_f16r", &DGRAD_PARAMS);

/// [`CONV_WGRAD_TF32`] with the output gradient and the input rounded to f16.
pub const CONV_WGRAD_F16R: Template = template("conv_mma_wgrad_f16r", &WGRAD_PARAMS);

/// Split-K partial sums of f32 operands rounded to bf16, into slice `blockIdx.z` of `ws`.
pub const GEMM_BF16R_SPLIT: Template = template("gemm_mma_split_bf16r", &SPLIT_PARAMS);

/// Split-K partial sums of f32 operands rounded to tf32, into slice `blockIdx.z` of `ws`.
pub const GEMM_TF32_SPLIT: Template = template("gemm_mma_split_tf32", &SPLIT_PARAMS);

/// The ordered sum of a split-K GEMM's slices, with bias and ReLU.
pub const GEMM_REDUCE: Template = Template {
    header: "gemm_mma.cuh",
    function: "gemm_mma_reduce",
    params: &[
        ptr("ws", Elem::F32, Access::Read),
        ptr("bias", Elem::F32, Access::Read),
        ptr("y", Elem::F32, Access::Write),
        Param {
            name: "batch",
            ty: ArgTy::Int,
        },
    ],
};

/// Every tensor-core template.
pub const TEMPLATES: &[Template] = &[
    GEMM_BF16,
    GEMM_F16,
    GEMM_TF32,
    CONV_TF32,
    GEMM_TF32_SPLIT,
    GEMM_BF16R,
    CONV_BF16R,
    GEMM_BF16R_SPLIT,
    GEMM_REDUCE,
    CONV_DGRAD_TF32,
    CONV_DGRAD_BF16R,
    CONV_WGRAD_TF32,
    CONV_WGRAD_BF16R,
    GEMM_F16R,
    CONV_F16R,
    GEMM_F16R_SPLIT,
    CONV_DGRAD_F16R,
    CONV_WGRAD_F16R,
];

/// What a tensor-core GEMM reads and what its products multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmaInputs {
    /// bf16 operands in memory (`mma.m16n8k16`).
    Bf16,
    /// f16 operands in memory (`mma.m16n8k16`).
    F16,
    /// f32 operands, rounded to tf32 (`cvt.rna`) before each `mma.m16n8k8`.
    Tf32,
    /// f32 operands, rounded to bf16 (to nearest, ties to even) as the threads stage them
    /// in shared memory, for `mma.m16n8k16`: `Precision::Bf16` on f32 storage.
    Bf16OfF32,
    /// f32 operands, rounded to f16 (to nearest, ties to even) as the threads stage them:
    /// `Precision::F16` on f32 storage.
    F16OfF32,
}

impl MmaInputs {
    /// The operands' type in memory.
    pub const fn storage(self) -> Elem {
        match self {
            MmaInputs::Bf16 => Elem::Bf16,
            MmaInputs::F16 => Elem::F16,
            MmaInputs::Tf32 | MmaInputs::Bf16OfF32 | MmaInputs::F16OfF32 => Elem::F32,
        }
    }

    /// The type staged in shared memory and multiplied (`F32`: tf32 products).
    pub const fn staged(self) -> Elem {
        match self {
            MmaInputs::Bf16 | MmaInputs::Bf16OfF32 => Elem::Bf16,
            MmaInputs::F16 | MmaInputs::F16OfF32 => Elem::F16,
            MmaInputs::Tf32 => Elem::F32,
        }
    }

    /// The inputs of a GEMM whose operands are `elem` in memory, multiplied as they are
    /// (f32 as tf32); `None` for bytes.
    pub const fn of(elem: Elem) -> Option<MmaInputs> {
        match elem {
            Elem::Bf16 => Some(MmaInputs::Bf16),
            Elem::F16 => Some(MmaInputs::F16),
            Elem::F32 => Some(MmaInputs::Tf32),
            Elem::U8 => None,
        }
    }

    /// What the tensor-core GEMMs of the forward pass and of the gradients multiply in
    /// `precision` (`None`: f32 on the CUDA cores). The operands stay f32 in memory in
    /// every precision for now.
    pub const fn for_precision(precision: Precision) -> Option<MmaInputs> {
        match precision {
            Precision::F32 => None,
            Precision::Tf32 => Some(MmaInputs::Tf32),
            Precision::Bf16 => Some(MmaInputs::Bf16OfF32),
            Precision::F16 => Some(MmaInputs::F16OfF32),
        }
    }

    /// In kernel names: `bf16`, `f16`, `tf32`, `bf16r`, `f16r` (rounded from f32).
    pub const fn name(self) -> &'static str {
        match self {
            MmaInputs::Bf16 => "bf16",
            MmaInputs::F16 => "f16",
            MmaInputs::Tf32 => "tf32",
            MmaInputs::Bf16OfF32 => "bf16r",
            MmaInputs::F16OfF32 => "f16r",
        }
    }

    /// Reads f32 (a convolution's implicit GEMM can: its threads gather the tile).
    const fn reads_f32(self) -> bool {
        matches!(self.storage(), Elem::F32)
    }

    /// Reads f32 and rounds it to 16 bits as the threads stage it (bf16r, f16r): reads
    /// rows of any length.
    const fn rounds_f32(self) -> bool {
        matches!(self, MmaInputs::Bf16OfF32 | MmaInputs::F16OfF32)
    }
}

/// The convolution a tensor-core GEMM computes as an implicit GEMM (`conv_mma_tf32`,
/// `conv_mma_bf16r`): rows
/// are output pixels, columns a group's output channels, K a group's `channel x ky x kx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmaConv {
    pub input: Shape,
    pub output: Shape,
    /// The kernel's side.
    pub r: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl MmaTile {
    /// Many rows (a convolution's pixels): 128 x 128, 8 warps of 64 x 32, K in 64-byte
    /// steps (32 values in 16 bits, 16 in f32), three stages (48 KiB of shared memory).
    pub const LARGE: MmaTile = MmaTile {
        bm: 128,
        bn: 128,
        bk: 32,
        warps_m: 2,
        warps_n: 4,
        stages: 3,
    };

    /// Few rows (a fully connected layer's batch): 32 x 128, 4 warps of 32 x 32, K in
    /// 64-byte steps, four stages (40 KiB).
    pub const SMALL_M: MmaTile = MmaTile {
        bm: 32,
        bn: 128,
        bk: 32,
        warps_m: 1,
        warps_n: 4,
        stages: 4,
    };

    /// A convolution's tile for `inputs`: [`MmaTile::LARGE`]; with f32 operands rounded to
    /// bf16 (whose threads load and round every value of both tiles, holding them in
    /// registers on the way), K steps of 16 values in four stages, so that a thread stages
    /// one chunk of each tile a step and the kernel fits 128 registers (two blocks an SM)
    /// without spilling.
    pub const fn conv_for(inputs: MmaInputs) -> MmaTile {
        match inputs {
            MmaInputs::Bf16OfF32 | MmaInputs::F16OfF32 => MmaTile {
                bk: 16,
                stages: 4,
                ..MmaTile::LARGE
            },
            _ => MmaTile::LARGE,
        }
    }

    /// A convolution's input gradient's tile for `inputs`, `n` its columns (a group's
    /// input channels): [`MmaTile::conv_for`], or where `n` is at most 64 (AlexNet's
    /// conv2, 48 channels a group) half as many columns over 4 x 2 warps, so that most of
    /// the tile's columns hold channels. A fully connected layer's (few rows, the batch):
    /// [`MmaTile::SMALL_M`].
    pub const fn dgrad_for(inputs: MmaInputs, n: usize, few_rows: bool) -> MmaTile {
        let t = MmaTile::conv_for(inputs);
        if few_rows {
            MmaTile {
                bk: t.bk,
                stages: t.stages,
                ..MmaTile::SMALL_M
            }
        } else if n <= 64 {
            MmaTile {
                bn: 64,
                warps_m: 4,
                warps_n: 2,
                ..t
            }
        } else {
            t
        }
    }

    /// A convolution's weight gradient's tile for `inputs` (rows: a group's output
    /// channels; columns: its filter values and the bias): [`MmaTile::conv_for`]; with f32
    /// operands rounded to bf16, 64 x 128 over 1 x 4 warps: with the 128 x 128 tile ptxas
    /// spilled a few bytes for conv1 on sm_80 (its 11 x 11 windows at stride 4 gathered in
    /// both tiles), as it did for some of AlexNet's layers with 64 x 128 over 2 x 4 warps,
    /// 128 x 64 or 64 x 64; this one spills for none of them on sm_80 or sm_90.
    pub const fn wgrad_for(inputs: MmaInputs) -> MmaTile {
        let t = MmaTile::conv_for(inputs);
        match inputs {
            MmaInputs::Bf16OfF32 | MmaInputs::F16OfF32 => MmaTile {
                bm: 64,
                warps_m: 1,
                warps_n: 4,
                ..t
            },
            _ => t,
        }
    }

    /// The tile for `elem`: `bk` is given for 16-bit values; f32 rows hold half as many
    /// in the same bytes.
    const fn for_elem(self, elem: Elem) -> MmaTile {
        MmaTile {
            bk: self.bk * 2 / elem.bytes(),
            ..self
        }
    }

    /// Shared memory of the pipeline, in bytes.
    pub const fn smem_bytes(&self, elem: Elem) -> usize {
        self.stages * (self.bm + self.bn) * self.bk * elem.bytes()
    }
}

/// Why a tensor-core GEMM cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MmaError {
    /// A row of `x` or `w` (`k` values) is not a whole number of 16-byte chunks: the
    /// pipeline copies 16 bytes at a time from row starts it assumes aligned.
    UnalignedK { k: usize, elem: Elem },
    /// Operands of a type tensor cores do not take here.
    Elem(Elem),
    /// The tile breaks a rule of the template (no empty side, at most 32 warps, warp tiles
    /// multiples of 16 x 16, a K step of 2, 4 or 8 chunks, at least two stages, at most 48
    /// KiB of static shared memory).
    Tile(MmaTile),
    /// An empty dimension.
    Empty,
    /// A split-K of `split` parts: at least one, at most one part per K step, and only of
    /// f32 operands (tf32, bf16r or f16r: the split templates).
    Split { split: usize, elem: Elem },
    /// A convolution's implicit GEMM reads f32 input (tf32, bf16r or f16r products).
    ConvInputs(MmaInputs),
    /// A grid of more blocks along y than a launch takes (65,535): a weight gradient's
    /// tiles of a very wide layer.
    Grid(usize),
}

impl std::fmt::Display for MmaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MmaError::UnalignedK { k, elem } => write!(
                f,
                "K = {k} {} values is not a multiple of 16 bytes (pad K)",
                elem.name()
            ),
            MmaError::Tile(t) => write!(f, "tile {t:?} breaks gemm_mma.cuh's rules"),
            MmaError::Empty => write!(f, "an empty GEMM"),
            MmaError::Elem(e) => write!(f, "no tensor-core GEMM of {} operands", e.name()),
            MmaError::Split { split, elem } => write!(
                f,
                "no split-K in {split} parts of a GEMM of {} operands here",
                elem.name()
            ),
            MmaError::Grid(y) => write!(f, "{y} blocks along y, over the 65535 a launch takes"),
            MmaError::ConvInputs(i) => write!(
                f,
                "no tensor-core convolution of {} operands (it reads f32: tf32, bf16r or f16r)",
                i.name()
            ),
        }
    }
}

impl std::error::Error for MmaError {}

/// A tensor-core GEMM: `rows_per_image` rows of `a` per image, `n` columns, `k` terms,
/// operands in `elem` in memory, multiplied as `inputs` says, f32 result.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmaGemm {
    pub rows_per_image: usize,
    pub n: usize,
    pub k: usize,
    /// What the operands are in memory and what the products multiply.
    pub inputs: MmaInputs,
    /// The tile as for 16-bit operands ([`MmaTile::LARGE`], [`MmaTile::SMALL_M`]); for
    /// f32 its K step holds the same bytes, half the values.
    pub tile: MmaTile,
    pub epilogue: Epilogue,
    /// Split-K parts (1: none): [`MmaGemm::with_split`].
    pub split: usize,
    /// A convolution's implicit GEMM ([`MmaGemm::conv`]); `None`: `x` is the `M x K`
    /// matrix itself.
    pub conv: Option<MmaConv>,
    /// Which pass of the convolution it computes (its output unless it is one).
    pub pass: MmaPass,
}

/// The pass of a convolution a tensor-core GEMM computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmaPass {
    /// The output (or, for a plain GEMM, `y = x * w^T`).
    Forward,
    /// The input gradient ([`MmaGemm::conv_data_grad`]).
    DataGrad,
    /// The weight and bias gradients ([`MmaGemm::conv_weight_grad`]), the sum over the
    /// batch's output pixels in chunks of `k` (one block each).
    WeightGrad,
}

impl MmaGemm {
    /// Checks the shape and tile against the template's rules: operands `elem` multiplied
    /// as they are (f32 as tf32).
    pub fn new(
        rows_per_image: usize,
        n: usize,
        k: usize,
        elem: Elem,
        tile: MmaTile,
        epilogue: Epilogue,
    ) -> Result<Self, MmaError> {
        let inputs = MmaInputs::of(elem).ok_or(MmaError::Elem(elem))?;
        MmaGemm::with_inputs(rows_per_image, n, k, inputs, tile, epilogue)
    }

    /// [`MmaGemm::new`] with the products' inputs said: [`MmaInputs::Bf16OfF32`] for f32
    /// operands multiplied in bf16.
    pub fn with_inputs(
        rows_per_image: usize,
        n: usize,
        k: usize,
        inputs: MmaInputs,
        tile: MmaTile,
        epilogue: Epilogue,
    ) -> Result<Self, MmaError> {
        if rows_per_image == 0 || n == 0 || k == 0 {
            return Err(MmaError::Empty);
        }
        let elem = inputs.storage();
        // cp.async copies whole 16-byte chunks of a row; bf16r's threads read rows of any
        // length (16 bytes at a time where K % 8 == 0, value by value otherwise).
        if !inputs.rounds_f32() && !(k * elem.bytes()).is_multiple_of(16) {
            return Err(MmaError::UnalignedK { k, elem });
        }
        // The tile's rules are those of the values in shared memory.
        let staged = inputs.staged();
        let t = tile.for_elem(staged);
        let chunks = t.bk * staged.bytes() / 16;
        // A block is at most 1024 threads (32 warps); empty tiles would divide by zero.
        let ok = t.warps_m > 0
            && t.warps_n > 0
            && t.warps_m * t.warps_n <= 32
            && t.bm > 0
            && t.bn > 0
            && t.bk > 0
            && t.bm.is_multiple_of(16 * t.warps_m)
            && t.bn.is_multiple_of(16 * t.warps_n)
            && (t.bk * staged.bytes()).is_multiple_of(16)
            && matches!(chunks, 2 | 4 | 8)
            && t.stages >= 2
            && t.smem_bytes(staged) <= 48 * 1024;
        if !ok {
            return Err(MmaError::Tile(tile));
        }
        Ok(MmaGemm {
            rows_per_image,
            n,
            k,
            inputs,
            tile,
            epilogue,
            split: 1,
            conv: None,
            pass: MmaPass::Forward,
        })
    }

    /// A convolution's forward pass as an implicit GEMM on tensor cores, on f32 input and
    /// weights: tf32 products (`conv_mma_tf32`) or bf16 ones (`conv_mma_bf16r`, each value
    /// rounded as it is staged). Per group, `P * Q` rows per image, `O / groups` columns,
    /// `K = C / groups * r * r`. Any K: the threads gather the im2col tile, and the
    /// weights' tile too where a filter is not whole 16-byte rows (AlexNet's conv1, K =
    /// 363) or must be rounded to bf16; `cp.async` copies it otherwise.
    pub fn conv(
        conv: MmaConv,
        inputs: MmaInputs,
        tile: MmaTile,
        epilogue: Epilogue,
    ) -> Result<Self, MmaError> {
        let (i, o, g) = (conv.input, conv.output, conv.groups);
        if g == 0 || !i.c.is_multiple_of(g) || !o.c.is_multiple_of(g) {
            return Err(MmaError::Empty);
        }
        if !inputs.reads_f32() {
            return Err(MmaError::ConvInputs(inputs));
        }
        let k = i.c / g * conv.r * conv.r;
        // The tile's rules, checked at the next whole chunk (the alignment is the kernel's).
        let gemm = MmaGemm::with_inputs(
            o.h * o.w,
            o.c / g,
            k.next_multiple_of(4),
            inputs,
            tile,
            epilogue,
        )?;
        Ok(MmaGemm {
            k,
            conv: Some(conv),
            ..gemm
        })
    }

    /// A convolution's input gradient on tensor cores, from f32 `dy` and filters: tf32
    /// products (`conv_mma_dgrad_tf32`) or bf16 ones (`conv_mma_dgrad_bf16r`), summed in
    /// f32, `dx` overwritten. Per group, `H * W` rows per image (input pixels), `C /
    /// groups` columns, `K = O / groups * r * r`; the threads gather both tiles (dy by the
    /// transposed convolution, the filters across output channels). A fully connected
    /// layer is the case of a 1 x 1 image and filter.
    pub fn conv_data_grad(
        conv: MmaConv,
        inputs: MmaInputs,
        tile: MmaTile,
    ) -> Result<Self, MmaError> {
        let (i, o, g) = (conv.input, conv.output, conv.groups);
        if g == 0 || !i.c.is_multiple_of(g) || !o.c.is_multiple_of(g) {
            return Err(MmaError::Empty);
        }
        if !inputs.reads_f32() {
            return Err(MmaError::ConvInputs(inputs));
        }
        let k = o.c / g * conv.r * conv.r;
        let plain = Epilogue {
            bias: false,
            relu: false,
        };
        let gemm = MmaGemm::with_inputs(
            i.h * i.w,
            i.c / g,
            k.next_multiple_of(4),
            inputs,
            tile,
            plain,
        )?;
        Ok(MmaGemm {
            k,
            conv: Some(conv),
            pass: MmaPass::DataGrad,
            ..gemm
        })
    }

    /// A convolution's weight and bias gradients on tensor cores, from f32 `x` and `dy`:
    /// tf32 products (`conv_mma_wgrad_tf32`) or bf16 ones (`conv_mma_wgrad_bf16r`), summed
    /// in f32. Per group, `O / groups` rows, `C / groups * r * r + 1` columns (the last
    /// the bias, whose input is 1), K the batch's output pixels in chunks, each a block
    /// (as many as fill the GPU at batch 128: [`MmaGemm::weight_chunk`]); with several
    /// chunks their partial sums go to the workspace `ws`, which the f32 weight
    /// gradient's ordered sum adds (`gemm_bwd_weight_reduce`). The threads gather both
    /// tiles. A fully connected layer is the case of a 1 x 1 image and filter.
    pub fn conv_weight_grad(
        conv: MmaConv,
        inputs: MmaInputs,
        tile: MmaTile,
    ) -> Result<Self, MmaError> {
        let (i, o, g) = (conv.input, conv.output, conv.groups);
        if g == 0 || !i.c.is_multiple_of(g) || !o.c.is_multiple_of(g) {
            return Err(MmaError::Empty);
        }
        if !inputs.reads_f32() {
            return Err(MmaError::ConvInputs(inputs));
        }
        let (og, kcol) = (o.c / g, i.c / g * conv.r * conv.r);
        let plain = Epilogue {
            bias: false,
            relu: false,
        };
        // The tile's rules first, at a K of one step.
        let bk = tile.for_elem(inputs.staged()).bk;
        let gemm = MmaGemm::with_inputs(og, kcol + 1, bk, inputs, tile, plain)?;
        let t = gemm.kernel_tile();
        let grid_y = og.div_ceil(t.bm) * (kcol + 1).div_ceil(t.bn);
        if grid_y > 65535 {
            return Err(MmaError::Grid(grid_y));
        }
        let chunk = gemm.weight_chunk(conv);
        Ok(MmaGemm {
            k: chunk,
            conv: Some(conv),
            pass: MmaPass::WeightGrad,
            ..gemm
        })
    }

    /// Output pixels of the batch a block of the weight gradient sums: enough chunks for
    /// about 528 blocks (4 per SM of an H200) at batch 128 with this GEMM's tiles, each at
    /// least 4 K steps, a whole number of K steps.
    pub fn weight_chunk(&self, conv: MmaConv) -> usize {
        let t = self.kernel_tile();
        let tiles = self.rows_per_image.div_ceil(t.bm) * self.n.div_ceil(t.bn) * conv.groups;
        let chunks = 528usize.div_ceil(tiles).max(1);
        let pixels = 128 * conv.output.h * conv.output.w;
        pixels.div_ceil(chunks).max(4 * t.bk).next_multiple_of(t.bk)
    }

    /// The operands' type in memory.
    pub const fn elem(&self) -> Elem {
        self.inputs.storage()
    }

    /// The tile as the kernel runs it (`bk` in the staged type's values).
    fn kernel_tile(&self) -> MmaTile {
        self.tile.for_elem(self.inputs.staged())
    }

    /// K steps of the tile (`bk` values each) in K.
    fn k_steps(&self) -> usize {
        self.k.div_ceil(self.kernel_tile().bk)
    }

    /// This GEMM with K split in `split` parts (`blockIdx.z`), each block writing partial
    /// sums to a workspace that a second kernel adds in order (deterministic), with the
    /// epilogue. Only f32 operands (tf32, bf16r or f16r products) have a split template; every
    /// part gets a K step.
    pub fn with_split(self, split: usize) -> Result<Self, MmaError> {
        let ok = split >= 1
            && (split == 1 || (self.inputs.reads_f32() && self.conv.is_none()))
            && self.k_steps().div_ceil(split) * (split - 1) < self.k_steps();
        if !ok {
            return Err(MmaError::Split {
                split,
                elem: self.elem(),
            });
        }
        Ok(MmaGemm { split, ..self })
    }

    /// The split-K for a grid of at least `blocks` blocks at one image (few rows: a fully
    /// connected layer's batch), at most 8 parts and each part at least 8 K steps: 1 when
    /// the output tiles alone are enough or K is short. Fully connected layers at a small
    /// batch have a handful of output tiles for 132 SMs (fc8: 8); at batch 128 the parts
    /// cost a workspace of `split x batch x N` values written and read once.
    pub fn split_for(&self, blocks: usize) -> usize {
        let t = self.kernel_tile();
        let tiles = self.rows_per_image.div_ceil(t.bm) * self.n.div_ceil(t.bn);
        let want = blocks.div_ceil(tiles).clamp(1, 8);
        let most = (self.k_steps() / 8).max(1);
        if self.inputs.reads_f32() && self.conv.is_none() {
            want.min(most)
        } else {
            1
        }
    }

    fn template(&self) -> &'static Template {
        // A convolution and split-K read f32 (`conv` and `with_split` refuse the others).
        let bf16 = self.inputs == MmaInputs::Bf16OfF32;
        let f16 = self.inputs == MmaInputs::F16OfF32;
        match (self.pass, bf16, f16) {
            (MmaPass::DataGrad, true, _) => return &CONV_DGRAD_BF16R,
            (MmaPass::DataGrad, _, true) => return &CONV_DGRAD_F16R,
            (MmaPass::DataGrad, ..) => return &CONV_DGRAD_TF32,
            (MmaPass::WeightGrad, true, _) => return &CONV_WGRAD_BF16R,
            (MmaPass::WeightGrad, _, true) => return &CONV_WGRAD_F16R,
            (MmaPass::WeightGrad, ..) => return &CONV_WGRAD_TF32,
            (MmaPass::Forward, ..) => {}
        }
        match (self.conv.is_some(), self.split > 1, self.inputs) {
            (true, _, _) if bf16 => &CONV_BF16R,
            (true, _, _) if f16 => &CONV_F16R,
            (true, _, _) => &CONV_TF32,
            (_, true, _) if bf16 => &GEMM_BF16R_SPLIT,
            (_, true, _) if f16 => &GEMM_F16R_SPLIT,
            (_, true, _) => &GEMM_TF32_SPLIT,
            (_, _, MmaInputs::Bf16) => &GEMM_BF16,
            (_, _, MmaInputs::F16) => &GEMM_F16,
            (_, _, MmaInputs::Tf32) => &GEMM_TF32,
            (_, _, MmaInputs::Bf16OfF32) => &GEMM_BF16R,
            (_, _, MmaInputs::F16OfF32) => &GEMM_F16R,
        }
    }

    /// The name of the mma's inputs: `bf16`, `f16`, `tf32`, `bf16r` ([`MmaInputs::name`]).
    pub const fn precision(&self) -> &'static str {
        self.inputs.name()
    }

    /// The kernels of layer `layer`, in launch order: the GEMM ([`MmaGemm::spec`]) and,
    /// with split-K, the ordered sum of its parts ([`MmaGemm::reduce`]).
    pub fn specs(&self, layer: usize, prefix: &str) -> Vec<KernelSpec> {
        let mut v = vec![self.spec(layer, prefix)];
        v.extend(self.reduce(layer, prefix));
        v
    }

    /// The GEMM `{prefix}_mma_{precision}_n{n}_k{k}_t{bm}x{bn}` of layer `layer` (with
    /// split-K, `..._s{split}`: the parts, into the workspace `ws`).
    pub fn spec(&self, layer: usize, prefix: &str) -> KernelSpec {
        let t = self.kernel_tile();
        let split = if self.split > 1 {
            format!("_s{}", self.split)
        } else {
            String::new()
        };
        let conv = match self.conv {
            Some(c) => format!(
                "_{}_r{}_s{}_g{}",
                match self.pass {
                    MmaPass::Forward => "conv",
                    MmaPass::DataGrad => "dgrad",
                    MmaPass::WeightGrad => "wgrad",
                },
                c.r,
                c.stride,
                c.groups
            ),
            None => String::new(),
        };
        let name = format!(
            "{prefix}_mma_{}{conv}_n{}_k{}_t{}x{}{split}",
            self.precision(),
            self.n,
            self.k,
            t.bm,
            t.bn
        );
        // Split-K: the epilogue is the reduction's.
        let e = if self.split > 1 {
            Epilogue {
                bias: false,
                relu: false,
            }
        } else {
            self.epilogue
        };
        let mut consts: Vec<(&'static str, Value)> = vec![
            ("ROWS", self.rows_per_image.into()),
            ("N", self.n.into()),
            ("K", self.k.into()),
            ("BM", t.bm.into()),
            ("BN", t.bn.into()),
            ("BK", t.bk.into()),
            ("WARPS_M", t.warps_m.into()),
            ("WARPS_N", t.warps_n.into()),
            ("STAGES", t.stages.into()),
            ("THREADS", t.threads().into()),
            ("ELEM_BYTES", self.inputs.staged().bytes().into()),
            ("BIAS", e.bias.into()),
            ("RELU", e.relu.into()),
            ("SPLIT", self.split.into()),
        ];
        if let Some(c) = self.conv {
            consts.extend([
                ("C", c.input.c.into()),
                ("H", c.input.h.into()),
                ("W", c.input.w.into()),
                ("O", c.output.c.into()),
                ("Q", c.output.w.into()),
                ("R", c.r.into()),
                ("STRIDE", c.stride.into()),
                ("PAD", c.pad.into()),
                ("GROUPS", c.groups.into()),
            ]);
            match self.pass {
                MmaPass::Forward => {}
                MmaPass::DataGrad => consts.push(("P", c.output.h.into())),
                MmaPass::WeightGrad => {
                    consts.extend([("P", c.output.h.into()), ("CHUNK", self.k.into())])
                }
            }
        }
        let (rows, n, k) = (self.rows_per_image as u64, self.n as u64, self.k as u64);
        let split = self.split as u64;
        // A convolution reads its whole input and writes every group's channels.
        let (groups, x_len) = match self.conv {
            Some(c) => (c.groups as u64, c.input.len() as u64),
            None => (1, rows * k),
        };
        let outputs = if self.pass != MmaPass::Forward {
            Vec::new()
        } else if self.split > 1 {
            vec![("ws", Len::PerImage(split * rows * n))]
        } else {
            vec![
                ("bias", Len::Fixed(if e.bias { groups * n } else { 0 })),
                ("y", Len::PerImage(groups * rows * n)),
            ]
        };
        // The launch's x: blocks of `bm` rows of the batch's, or the weight gradient's
        // chunks of output pixels (its tiles along y).
        let (mut x_per_image, mut x_per_block) = (rows, t.bm as u32);
        let mut grid_y = self.n.div_ceil(t.bn) as u32;
        let (role, stage, doc, lens) = match self.conv {
            Some(c) if self.pass == MmaPass::DataGrad => (
                Role::DataGrad,
                GemmStage::DataGrad,
                format!(
                    "dx = dy * w on tensor cores ({}), M = batch * {}, N = {}, K = {}",
                    self.precision(),
                    self.rows_per_image,
                    self.n,
                    self.k
                ),
                vec![
                    ("dy", Len::PerImage(c.output.len() as u64)),
                    ("w", Len::Fixed(groups * n * k)),
                    ("dx", Len::PerImage(c.input.len() as u64)),
                ],
            ),
            Some(c) if self.pass == MmaPass::WeightGrad => {
                let pq = (c.output.h * c.output.w) as u64;
                (x_per_image, x_per_block) = (pq, self.k as u32);
                grid_y *= self.rows_per_image.div_ceil(t.bm) as u32;
                let (o, kcol) = (c.output.c as u64, n - 1);
                (
                    Role::WeightGrad,
                    GemmStage::WeightGrad,
                    format!(
                        "dw, db = dy^T * [im2col(x), 1] on tensor cores ({}), M = {}, N = {}, K = batch * {pq} in chunks of {}",
                        self.precision(),
                        self.rows_per_image,
                        self.n,
                        self.k
                    ),
                    vec![
                        ("x", Len::PerImage(c.input.len() as u64)),
                        ("dy", Len::PerImage(c.output.len() as u64)),
                        ("dw", Len::Fixed(o * kcol)),
                        ("db", Len::Fixed(o)),
                        (
                            "ws",
                            Len::Split {
                                per_chunk: o * n,
                                per_image: pq,
                                chunk: k,
                            },
                        ),
                    ],
                )
            }
            _ => (
                Role::Forward,
                GemmStage::Forward,
                format!(
                    "y = x * w^T on tensor cores ({}), M = batch * {}, N = {}, K = {}",
                    self.precision(),
                    self.rows_per_image,
                    self.n,
                    self.k
                ),
                [
                    ("x", Len::PerImage(x_len)),
                    ("w", Len::Fixed(groups * n * k)),
                ]
                .into_iter()
                .chain(outputs)
                .collect(),
            ),
        };
        Instance {
            role,
            launch: KernelLaunch {
                layer,
                name: name.into(),
                block: t.threads() as u32,
                x_per_image,
                x_per_block,
                x_fixed: 0,
                grid_y,
                grid_z: (split * groups) as u32,
            },
            template: self.template(),
            doc,
            consts,
            lens,
            gemm: Some(GemmInfo {
                stage,
                elem: self.inputs.staged(),
                tile: GemmTile::Mma(t),
                pipeline: t.stages as u32,
                // Values of K per part (the weight gradient's chunk).
                split_k: match self.pass {
                    MmaPass::WeightGrad => self.k,
                    _ if self.split > 1 => self.k_steps().div_ceil(self.split) * t.bk,
                    _ => 0,
                },
                epilogue: e,
            }),
        }
        .spec()
    }

    /// With split-K, `{prefix}_mma_reduce_n{n}_s{split}`: the parts added in order, then
    /// the bias and the ReLU, `y = relu?((ws[0] + ws[1] + ...) + bias?)`, one thread an
    /// output; `None` without.
    pub fn reduce(&self, layer: usize, prefix: &str) -> Option<KernelSpec> {
        if self.split <= 1 {
            return None;
        }
        let (e, split) = (self.epilogue, self.split);
        let name = format!("{prefix}_mma_reduce_n{}_s{split}", self.n);
        let (rows, n) = (self.rows_per_image as u64, self.n as u64);
        Some(
            Instance {
                role: Role::ForwardReduce,
                launch: KernelLaunch::elementwise(layer, &name, rows * n),
                template: &GEMM_REDUCE,
                doc: format!(
                    "the ordered sum of {}'s {split} split-K parts",
                    self.precision()
                ),
                consts: vec![
                    ("ROWS", self.rows_per_image.into()),
                    ("N", self.n.into()),
                    ("SPLIT", split.into()),
                    ("THREADS", (EW_THREADS as usize).into()),
                    ("BIAS", e.bias.into()),
                    ("RELU", e.relu.into()),
                ],
                lens: vec![
                    ("ws", Len::PerImage(split as u64 * rows * n)),
                    ("bias", Len::Fixed(if e.bias { n } else { 0 })),
                    ("y", Len::PerImage(rows * n)),
                ],
                gemm: None,
            }
            .spec(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Epilogue = Epilogue {
        bias: false,
        relu: false,
    };

    #[test]
    fn k_must_fill_16_byte_chunks() {
        let t = MmaTile::SMALL_M;
        assert!(MmaGemm::new(1, 10, 9216, Elem::Bf16, t, PLAIN).is_ok());
        assert!(MmaGemm::new(1, 10, 12, Elem::F32, t, PLAIN).is_ok());
        assert_eq!(
            MmaGemm::new(1, 10, 363, Elem::F16, t, PLAIN),
            Err(MmaError::UnalignedK {
                k: 363,
                elem: Elem::F16
            })
        );
        assert!(MmaGemm::new(1, 10, 12, Elem::Bf16, t, PLAIN).is_err());
        assert!(MmaGemm::new(0, 10, 16, Elem::Bf16, t, PLAIN).is_err());
        let bad = MmaTile {
            stages: 8,
            ..MmaTile::LARGE
        };
        assert_eq!(
            MmaGemm::new(1, 10, 16, Elem::Bf16, bad, PLAIN),
            Err(MmaError::Tile(bad))
        );
        // Empty tiles (a division by zero in the launch) and blocks over 1024 threads.
        for bad in [
            MmaTile {
                bm: 0,
                ..MmaTile::LARGE
            },
            MmaTile {
                bn: 0,
                ..MmaTile::LARGE
            },
            MmaTile {
                bm: 1024,
                warps_m: 64,
                ..MmaTile::LARGE
            },
        ] {
            assert_eq!(
                MmaGemm::new(1, 10, 16, Elem::Bf16, bad, PLAIN),
                Err(MmaError::Tile(bad))
            );
        }
    }

    #[test]
    fn the_spec_names_its_precision_and_sizes() {
        let g = MmaGemm::new(1, 4096, 9216, Elem::F32, MmaTile::SMALL_M, PLAIN).unwrap();
        let k = g.spec(5, "fc6");
        assert_eq!(k.name(), "fc6_mma_tf32_n4096_k9216_t32x128");
        assert_eq!(k.launch.grid(8), [1, 32, 1]);
        assert_eq!(k.launch.block, 128);
        assert!(k
            .stub
            .contains("gemm_mma_tf32<fc6_mma_tf32_n4096_k9216_t32x128_cfg>"));
        assert!(k.stub.contains("enum : int { BK = 16 };"));
        assert_eq!(MmaTile::LARGE.smem_bytes(Elem::Bf16), 48 * 1024);
    }

    /// A convolution's gradients on tensor cores: the input gradient's GEMM is input
    /// pixels x a group's input channels x (output channels of the group x r x r); the
    /// weight gradient's is a group's output channels x (filter values + the bias) x the
    /// batch's output pixels, in chunks of whole K steps that the launch's x counts, with
    /// the f32 weight gradient's workspace layout; 16-bit storage is refused.
    #[test]
    fn the_gradients_of_a_convolution_are_gemms_of_its_own() {
        use crate::kernels::spec::Len;
        // AlexNet's conv2: 2 groups, 96 -> 256 channels, 5 x 5, 27 x 27.
        let conv = MmaConv {
            input: Shape::new(96, 27, 27),
            output: Shape::new(256, 27, 27),
            r: 5,
            stride: 1,
            pad: 2,
            groups: 2,
        };
        for inputs in [MmaInputs::Tf32, MmaInputs::Bf16OfF32] {
            let d = MmaGemm::conv_data_grad(conv, inputs, MmaTile::dgrad_for(inputs, 48, false))
                .unwrap();
            assert_eq!((d.rows_per_image, d.n, d.k), (27 * 27, 48, 128 * 25));
            let k = d.spec(1, "conv2");
            assert_eq!(k.role, Role::DataGrad);
            assert!(k.name().contains("_dgrad_r5_s1_g2_n48_k3200_t128x64"));
            assert_eq!(
                k.launch.grid(128),
                [(128 * 729usize).div_ceil(128) as u32, 1, 2]
            );
            let w = MmaGemm::conv_weight_grad(conv, inputs, MmaTile::wgrad_for(inputs)).unwrap();
            assert_eq!(w.pass, MmaPass::WeightGrad);
            let (chunk, t) = (w.k, w.kernel_tile());
            assert_eq!((w.rows_per_image, w.n, w.k), (128, 48 * 25 + 1, chunk));
            assert!(chunk.is_multiple_of(t.bk) && chunk >= 4 * t.bk);
            let k = w.spec(1, "conv2");
            assert_eq!(k.role, Role::WeightGrad);
            let tiles = 128usize.div_ceil(t.bm) * 1201usize.div_ceil(t.bn);
            assert_eq!(
                k.launch.grid(128),
                [(128 * 729usize).div_ceil(chunk) as u32, tiles as u32, 2]
            );
            let ws = k.args.iter().find(|a| a.name == "ws").unwrap().len;
            assert_eq!(
                ws,
                Some(Len::Split {
                    per_chunk: 256 * 1201,
                    per_image: 729,
                    chunk: chunk as u64
                })
            );
            assert!(k
                .stub
                .contains(&format!("enum : int {{ CHUNK = {chunk} }};")));
            assert_eq!(
                MmaGemm::conv_weight_grad(conv, MmaInputs::Bf16, MmaTile::LARGE),
                Err(MmaError::ConvInputs(MmaInputs::Bf16))
            );
        }
    }

    /// bf16 on f32 storage: f32 parameters, the tile of 16-bit values in shared memory (K
    /// steps of 32 values, not tf32's 16), a split template of its own, and a convolution
    /// only from f32.
    #[test]
    fn bf16_of_f32_reads_f32_and_stages_bf16() {
        let g = MmaGemm::with_inputs(1, 4096, 9216, MmaInputs::Bf16OfF32, MmaTile::SMALL_M, PLAIN)
            .unwrap();
        assert_eq!(g.elem(), Elem::F32);
        let k = g.spec(5, "fc6");
        assert_eq!(k.name(), "fc6_mma_bf16r_n4096_k9216_t32x128");
        assert!(
            k.stub.contains("gemm_mma_bf16r<") && k.stub.contains("const float* __restrict__ x")
        );
        assert!(k.stub.contains("enum : int { BK = 32 };"));
        assert!(k.stub.contains("enum : int { ELEM_BYTES = 2 };"));
        assert_eq!(k.gemm.unwrap().elem, Elem::Bf16);
        let split = g.with_split(g.split_for(128)).unwrap();
        assert_eq!(split.split, 4);
        assert!(split.spec(5, "fc6").stub.contains("gemm_mma_split_bf16r<"));
        // The threads read f32 rows of any length; cp.async needs whole 16-byte chunks.
        let t = MmaTile::SMALL_M;
        assert!(MmaGemm::with_inputs(1, 8, 75, MmaInputs::Bf16OfF32, t, PLAIN).is_ok());
        assert!(MmaGemm::with_inputs(1, 8, 75, MmaInputs::Tf32, t, PLAIN).is_err());
        assert!(MmaGemm::with_inputs(1, 8, 12, MmaInputs::Bf16, t, PLAIN).is_err());
        let conv = MmaConv {
            input: Shape::new(3, 23, 23),
            output: Shape::new(8, 4, 4),
            r: 11,
            stride: 4,
            pad: 0,
            groups: 1,
        };
        let tile = MmaTile::conv_for(MmaInputs::Bf16OfF32);
        let c = MmaGemm::conv(conv, MmaInputs::Bf16OfF32, tile, PLAIN).unwrap();
        assert!(c.spec(0, "conv1").stub.contains("conv_mma_bf16r<"));
        assert_eq!(
            MmaGemm::conv(conv, MmaInputs::Bf16, tile, PLAIN),
            Err(MmaError::ConvInputs(MmaInputs::Bf16))
        );
    }
}
