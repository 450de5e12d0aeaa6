//! A generated kernel as typed data: what it computes ([`Role`]), the template it
//! instantiates ([`Template`]) with which constants, its arguments ([`Arg`]: name, type and
//! how many values each buffer must hold) and its launch geometry ([`KernelLaunch`]).
//!
//! The CUDA signature and the Rust launch code come from the same [`Template::params`]:
//! the generated stub declares the `extern "C"` kernel with exactly those parameters and
//! passes them on, by name, to the template's device function; the runtime binds its
//! buffers to the same names and checks each one's type and length against the spec
//! before it launches. So the two cannot disagree, and a short buffer is an error instead
//! of an out-of-bounds access.

use std::borrow::Cow;
use std::fmt::Write;

use super::precision::Precision;

/// Threads per block of the element-wise kernels.
pub const EW_THREADS: u32 = 256;

/// Element type of a buffer, or of a kernel's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    F16,
    Bf16,
    /// Bytes: 8-bit images (a prepared set's pixels), never a layer's storage.
    U8,
}

impl Elem {
    /// Bytes per element.
    pub const fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::Bf16 => 2,
            Elem::U8 => 1,
        }
    }

    /// The CUDA C++ type (`cuda_fp16.h` / `cuda_bf16.h` for the 16-bit ones).
    pub const fn c_type(self) -> &'static str {
        match self {
            Elem::F32 => "float",
            Elem::F16 => "__half",
            Elem::Bf16 => "__nv_bfloat16",
            Elem::U8 => "unsigned char",
        }
    }

    /// `f32`, `f16`, `bf16`.
    pub const fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F16 => "f16",
            Elem::Bf16 => "bf16",
            Elem::U8 => "u8",
        }
    }
}

/// How a kernel uses a pointer argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Only read (`const T* __restrict__`).
    Read,
    /// Only written (`T* __restrict__`).
    Write,
    /// Read and written in place (`T*`, no `__restrict__`).
    Update,
}

/// The type of a kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArgTy {
    /// A pointer to device memory.
    Ptr(Elem, Access),
    /// A C `int` (the batch size).
    Int,
    /// A C `unsigned`.
    Uint,
    /// A C `float`.
    Float,
    /// A struct passed by value, declared by the template's header (its name).
    Struct(&'static str),
}

impl ArgTy {
    /// The C declaration of a parameter `name` of this type.
    pub fn c_decl(self, name: &str) -> String {
        match self {
            ArgTy::Ptr(e, Access::Read) => format!("const {}* __restrict__ {name}", e.c_type()),
            ArgTy::Ptr(e, Access::Write) => format!("{}* __restrict__ {name}", e.c_type()),
            ArgTy::Ptr(e, Access::Update) => format!("{}* {name}", e.c_type()),
            ArgTy::Int => format!("int {name}"),
            ArgTy::Uint => format!("unsigned {name}"),
            ArgTy::Float => format!("float {name}"),
            ArgTy::Struct(s) => format!("{s} {name}"),
        }
    }
}

/// A parameter of a template's device function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: &'static str,
    pub ty: ArgTy,
}

/// Shorthands for template parameter lists.
pub const fn read(name: &'static str) -> Param {
    Param {
        name,
        ty: ArgTy::Ptr(Elem::F32, Access::Read),
    }
}

pub const fn write(name: &'static str) -> Param {
    Param {
        name,
        ty: ArgTy::Ptr(Elem::F32, Access::Write),
    }
}

pub const fn update(name: &'static str) -> Param {
    Param {
        name,
        ty: ArgTy::Ptr(Elem::F32, Access::Update),
    }
}

pub const fn int(name: &'static str) -> Param {
    Param {
        name,
        ty: ArgTy::Int,
    }
}

/// How many values a pointer argument must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Len {
    /// This many per image of the batch.
    PerImage(u64),
    /// A fixed count (a layer's parameters, the loss statistics).
    Fixed(u64),
    /// The partial sums of a split-K GEMM: `per_chunk` values for each of the
    /// `ceil(batch * per_image / chunk)` chunks when there are several; nothing when there
    /// is one (the GEMM then writes its result directly).
    Split {
        per_chunk: u64,
        per_image: u64,
        chunk: u64,
    },
}

impl Len {
    /// The values needed for a batch of `batch` images.
    pub const fn needed(self, batch: usize) -> u64 {
        match self {
            Len::PerImage(n) => n * batch as u64,
            Len::Fixed(n) => n,
            Len::Split {
                per_chunk,
                per_image,
                chunk,
            } => {
                let chunks = (batch as u64 * per_image).div_ceil(chunk);
                if chunks > 1 {
                    chunks * per_chunk
                } else {
                    0
                }
            }
        }
    }
}

/// An argument of a generated kernel: the template's parameter and, for a pointer, how
/// much it must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg {
    pub name: &'static str,
    pub ty: ArgTy,
    pub len: Option<Len>,
}

/// A CUDA header of `kernels_templates/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The file name, as `#include`d.
    pub name: &'static str,
    pub text: &'static str,
}

/// A device function template of a header: `template <class Cfg> __device__ void
/// function(params...)`, reading its constants from `Cfg` (a struct of `static constexpr`
/// members that the generated stub defines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    pub header: &'static str,
    pub function: &'static str,
    pub params: &'static [Param],
}

/// A constant of a template's `Cfg`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Uint(u64),
    Float(f32),
    Bool(bool),
    /// A list of unsigned constants, as a type: `using NAME = UintList<...>` (the
    /// template's header declares `UintList`, and unpacks it into a local array, which
    /// device code can index at run time).
    Uints(Vec<u64>),
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as i64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::Float(v)
    }
}

/// A GEMM tile: a block computes `tm x tn` outputs, each thread `rm x rn` of them, K in
/// steps of `tk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    pub tm: usize,
    pub rm: usize,
    pub tn: usize,
    pub rn: usize,
    pub tk: usize,
}

impl Tile {
    /// Threads per block.
    pub const fn threads(&self) -> usize {
        (self.tm / self.rm) * (self.tn / self.rn)
    }
}

/// Which product of a convolution or fully connected layer a GEMM computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmStage {
    /// The output (implicit GEMM over the input's im2col).
    Forward,
    /// The input gradient.
    DataGrad,
    /// The weight and bias gradients.
    WeightGrad,
}

/// What a GEMM kernel does after its main loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epilogue {
    /// Adds the layer's bias (forward).
    pub bias: bool,
    /// Applies the fused ReLU (forward).
    pub relu: bool,
}

/// A tensor-core GEMM's block tile (`gemm_mma.cuh`): `bm x bn` outputs, K in steps of
/// `bk`, `warps_m x warps_n` warps (each a `bm / warps_m x bn / warps_n` tile of 16 x 8 mma
/// tiles), `stages` K steps in flight. `kernels::mma` has the presets and the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmaTile {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub warps_m: usize,
    pub warps_n: usize,
    pub stages: usize,
}

impl MmaTile {
    /// Threads per block.
    pub const fn threads(&self) -> usize {
        32 * self.warps_m * self.warps_n
    }
}

/// How a GEMM kernel computes its products, with its block tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmTile {
    /// f32 multiply-adds on the CUDA cores, each thread a register tile (`gemm_core.cuh`).
    Simt(Tile),
    /// `mma.sync` on tensor cores (`gemm_mma.cuh`): for `Elem::F32` operands, rounded to
    /// tf32; the tile's `bk` as the kernel runs it (f32 rows hold half the values of 16-bit
    /// ones).
    Mma(MmaTile),
}

impl GemmTile {
    /// Outputs per block: rows, columns.
    pub const fn block(&self) -> (usize, usize) {
        match self {
            GemmTile::Simt(t) => (t.tm, t.tn),
            GemmTile::Mma(t) => (t.bm, t.bn),
        }
    }

    /// Threads per block.
    pub const fn threads(&self) -> usize {
        match self {
            GemmTile::Simt(t) => t.threads(),
            GemmTile::Mma(t) => t.threads(),
        }
    }

    /// The products run on tensor cores.
    pub const fn tensor_cores(&self) -> bool {
        matches!(self, GemmTile::Mma(_))
    }
}

/// The choices that make a GEMM kernel: element type, tile, pipeline, split-K, epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmInfo {
    pub stage: GemmStage,
    /// The type the products read (`F32` with an `Mma` tile: tf32 products; `Bf16` with
    /// an `Mma` tile may be f32 operands rounded as they are staged, `gemm_mma_bf16r`,
    /// whose parameters say so).
    pub elem: Elem,
    pub tile: GemmTile,
    /// K steps in flight in the main loop: 2 for the SIMT GEMM (the next step's operands
    /// load from global memory into registers while the current one computes from shared
    /// memory, `gemm_core.cuh`); the `cp.async` stages of a tensor-core GEMM.
    pub pipeline: u32,
    /// Split-K: the sum over K (the batch's pixels, for weight gradients) runs in chunks of
    /// this many, each block writing partial sums that a second kernel adds in order
    /// (deterministic); 0 when K is not split.
    pub split_k: usize,
    pub epilogue: Epilogue,
}

/// What a generated kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A stage's forward pass.
    Forward,
    /// An inference stage's forward pass with the pooling after its layer fused (an
    /// LRN's: `Plan::inference_stages`); training runs the layer's `Forward`
    /// kernel and the pooling's apart.
    ForwardPooled,
    /// The ordered sum of a split-K forward GEMM's parts, with its epilogue: launched
    /// after the stage's `Forward` kernel, through the workspace `ws`.
    ForwardReduce,
    /// The gradient through a ReLU fused into conv/fc, applied to the output gradient in
    /// place.
    ReluMask,
    /// A conv/fc input gradient.
    DataGrad,
    /// A conv/fc weight and bias gradients (in chunks when split-K).
    WeightGrad,
    /// The ordered sum of the weight gradient's chunks: launched only when it has several.
    WeightReduce,
    /// The backward pass of a layer without parameters.
    Backward,
    /// Training-time dropout, the same kernel forward and backward.
    Dropout,
    /// The fused softmax cross-entropy.
    Loss,
    /// Which gradients of tensors `first .. first + count` of `Plan::params` are not
    /// finite (one flag each), checked before their update.
    Finite { first: usize, count: usize },
    /// The SGD update of tensors `first .. first + count` of `Plan::params`.
    Sgd { first: usize, count: usize },
    /// A tower's forward exchange: both towers' outputs side by side.
    Gather,
    /// A tower's backward exchange, sending: the other tower's part of the gradient.
    Pack,
    /// A tower's backward exchange, receiving: its part plus the part received.
    Reduce,
    /// A batch of network inputs cut from 8-bit images (`cuda::augment`).
    Augment,
}

impl Role {
    /// A kernel of the forward pass (`Forward`, `ForwardPooled`, `ForwardReduce`).
    pub const fn is_forward(self) -> bool {
        matches!(
            self,
            Role::Forward | Role::ForwardPooled | Role::ForwardReduce
        )
    }
}

/// How to launch one generated CUDA kernel: its name and its geometry, fixed at compile
/// time except for the batch size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLaunch {
    /// Index in `Plan::layers` of the stage's layer.
    pub layer: usize,
    pub name: Cow<'static, str>,
    /// Threads per block (one-dimensional blocks).
    pub block: u32,
    /// `grid.x = x_fixed + ceil(batch * x_per_image / x_per_block)`.
    pub x_per_image: u64,
    pub x_per_block: u32,
    /// Blocks that do not depend on the batch (reductions over parameters, the optimiser).
    pub x_fixed: u32,
    pub grid_y: u32,
    pub grid_z: u32,
}

impl KernelLaunch {
    /// The grid for a batch of `batch` images.
    pub const fn grid(&self, batch: usize) -> [u32; 3] {
        let x = (batch as u64 * self.x_per_image).div_ceil(self.x_per_block as u64);
        [self.x_fixed + x as u32, self.grid_y, self.grid_z]
    }

    /// One thread per element, `per_image` elements per image, [`EW_THREADS`] per block.
    pub fn elementwise(layer: usize, name: &str, per_image: u64) -> Self {
        KernelLaunch {
            layer,
            name: name.to_string().into(),
            block: EW_THREADS,
            x_per_image: per_image,
            x_per_block: EW_THREADS,
            x_fixed: 0,
            grid_y: 1,
            grid_z: 1,
        }
    }

    /// `blocks` blocks of `block` threads whatever the batch.
    pub fn fixed(layer: usize, name: &str, block: u32, blocks: u32) -> Self {
        KernelLaunch {
            layer,
            name: name.to_string().into(),
            block,
            x_per_image: 0,
            x_per_block: 1,
            x_fixed: blocks,
            grid_y: 1,
            grid_z: 1,
        }
    }
}

/// One generated kernel: a self-contained stub (`#include`s of its template's header, a
/// `Cfg` struct of constants, and an `extern "C"` kernel that calls the template) with
/// everything needed to launch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    pub role: Role,
    /// Geometry, name and layer (`launch.layer`: the stage's layer; the last layer for the
    /// loss, 0 for the optimiser).
    pub launch: KernelLaunch,
    /// The stub; `cuda::source` inlines its headers into one translation unit.
    pub stub: Cow<'static, str>,
    /// The kernel's parameters in order, with how much each buffer must hold.
    pub args: Cow<'static, [Arg]>,
    /// For a GEMM: its element type, tile, pipeline, split-K and epilogue.
    pub gemm: Option<GemmInfo>,
}

impl KernelSpec {
    pub fn name(&self) -> &str {
        &self.launch.name
    }

    pub fn layer(&self) -> usize {
        self.launch.layer
    }

    /// Values of scratch memory per block along x (a split-K GEMM's partial sums; 0 for
    /// the rest).
    pub fn workspace_per_chunk(&self) -> usize {
        self.args
            .iter()
            .find_map(|a| match a.len {
                Some(Len::Split { per_chunk, .. }) => Some(per_chunk as usize),
                _ => None,
            })
            .unwrap_or(0)
    }
}

/// Every kernel of one plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernels {
    /// The forward pass: one per stage of training's schedule that runs a kernel (a
    /// split-K GEMM two), then the `ForwardPooled` ones of inference's fused stages.
    pub forward: Cow<'static, [KernelSpec]>,
    /// Training: every stage's backward kernels, training-time dropout, the loss, SGD.
    pub training: Cow<'static, [KernelSpec]>,
    /// A tower's exchanges with the other tower (none for a whole network).
    pub exchanges: Cow<'static, [KernelSpec]>,
    /// The kernels that differ under `Precision::Tf32`: the forward kernels of the
    /// convolutions and fully connected layers on tensor cores (with the fc layers'
    /// split-K sums), which replace a layer's f32 forward kernels, then their weight
    /// gradients (with the sum of their chunks) and input gradients on tensor cores, which
    /// replace the f32 ones of the same layer and role.
    pub tf32: Cow<'static, [KernelSpec]>,
    /// The same under `Precision::Bf16` (f32 operands rounded to bf16 in the kernels).
    pub bf16: Cow<'static, [KernelSpec]>,
    /// The same under `Precision::F16` (f32 operands rounded to f16 in the kernels).
    pub f16: Cow<'static, [KernelSpec]>,
}

impl Kernels {
    /// The forward pass in `precision`: [`Kernels::forward`], with each stage whose kernels
    /// differ in that precision running those instead, in launch order.
    pub fn forward_in(&self, precision: Precision) -> Vec<KernelSpec> {
        let other: Vec<&KernelSpec> = self.differing_forward(precision).collect();
        let mut out: Vec<KernelSpec> = Vec::with_capacity(self.forward.len() + other.len());
        for k in self.forward.iter() {
            let layer = k.layer();
            if other.iter().any(|o| o.layer() == layer) {
                if !out.iter().any(|o| o.layer() == layer) {
                    out.extend(
                        other
                            .iter()
                            .filter(|o| o.layer() == layer)
                            .map(|&o| o.clone()),
                    );
                }
            } else {
                out.push(k.clone());
            }
        }
        out
    }

    /// The training kernels in `precision`: [`Kernels::training`], each replaced by the
    /// kernel of the same layer and role that differs in that precision (the learned
    /// layers' gradients on tensor cores), in launch order.
    pub fn training_in(&self, precision: Precision) -> Vec<KernelSpec> {
        let other = self.differing(precision);
        self.training
            .iter()
            .map(|k| {
                other
                    .iter()
                    .find(|o| o.role == k.role && o.layer() == k.layer())
                    .unwrap_or(k)
                    .clone()
            })
            .collect()
    }

    /// The forward kernels that differ in `precision` from the f32 ones, in launch order.
    pub fn differing_forward(&self, precision: Precision) -> impl Iterator<Item = &KernelSpec> {
        self.differing(precision)
            .iter()
            .filter(|k| k.role.is_forward())
    }

    /// Every kernel that differs in `precision` from the f32 ones, forward then training
    /// ([`Kernels::tf32`], [`Kernels::bf16`], [`Kernels::f16`]; none in f32).
    pub fn differing(&self, precision: Precision) -> &[KernelSpec] {
        match precision {
            Precision::F32 => &[],
            Precision::Tf32 => &self.tf32,
            Precision::Bf16 => &self.bf16,
            Precision::F16 => &self.f16,
        }
    }

    /// The kernel of `role` for layer `layer` (for the exchanges, the layer they feed).
    pub fn find(&self, layer: usize, role: Role) -> Option<&KernelSpec> {
        self.all().find(|k| k.role == role && k.layer() == layer)
    }

    /// Every kernel: forward (f32), training, exchanges; not the other precisions'.
    pub fn all(&self) -> impl Iterator<Item = &KernelSpec> {
        self.forward
            .iter()
            .chain(self.training.iter())
            .chain(self.exchanges.iter())
    }
}

/// What `network!` generated for a plan: its kernels and, for a split network, those of
/// each tower's plan.
#[derive(Debug, PartialEq, Eq)]
pub struct Generated {
    /// The fingerprint of the plan they were generated for (`Plan::fingerprint`): a plan
    /// changed after the macro ran no longer matches, and gets its own kernels.
    pub fingerprint: u64,
    pub kernels: Kernels,
    pub towers: &'static [Generated],
}

/// A kernel to generate: which template, the constants of its `Cfg`, and what it is.
pub struct Instance<'a> {
    pub role: Role,
    pub launch: KernelLaunch,
    pub template: &'a Template,
    /// One comment line saying what the kernel computes.
    pub doc: String,
    /// The `Cfg` members, in order.
    pub consts: Vec<(&'static str, Value)>,
    /// How much each pointer parameter must hold, by name (every pointer needs one).
    pub lens: Vec<(&'static str, Len)>,
    pub gemm: Option<GemmInfo>,
}

impl Instance<'_> {
    /// The kernel's spec, with its stub rendered.
    ///
    /// # Panics
    /// If a pointer parameter has no length or a length names no parameter: a bug in the
    /// generator that its tests catch.
    pub fn spec(self) -> KernelSpec {
        let args: Vec<Arg> = self
            .template
            .params
            .iter()
            .map(|p| {
                let len = self.lens.iter().find(|(n, _)| *n == p.name).map(|l| l.1);
                assert!(
                    len.is_some() == matches!(p.ty, ArgTy::Ptr(..)),
                    "{}: parameter `{}` and its length",
                    self.launch.name,
                    p.name
                );
                Arg {
                    name: p.name,
                    ty: p.ty,
                    len,
                }
            })
            .collect();
        for (n, _) in &self.lens {
            assert!(
                self.template.params.iter().any(|p| p.name == *n),
                "{}: no parameter `{n}`",
                self.launch.name
            );
        }
        let stub = self.stub();
        KernelSpec {
            role: self.role,
            launch: self.launch,
            stub: stub.into(),
            args: args.into(),
            gemm: self.gemm,
        }
    }

    fn stub(&self) -> String {
        let name = &self.launch.name;
        let t = self.template;
        let mut s = format!(
            "#include \"{}\"\n\n// {name}: {}.\nstruct {name}_cfg {{\n",
            t.header, self.doc
        );
        for (k, v) in &self.consts {
            let _ = match v {
                // Integers are enumerators, which never become variables of the module
                // (NVRTC emits every `static constexpr` member as a global).
                Value::Int(i) => writeln!(s, "    enum : int {{ {k} = {i} }};"),
                Value::Uint(u) => writeln!(s, "    enum : unsigned {{ {k} = {u}u }};"),
                Value::Bool(b) => writeln!(s, "    enum : bool {{ {k} = {b} }};"),
                // A float cannot be an enumerator; a constexpr function is no variable either.
                Value::Float(f) => writeln!(
                    s,
                    "    static constexpr __host__ __device__ float {k}() {{ return {}; }}",
                    c_float(*f)
                ),
                Value::Uints(list) => {
                    let items: Vec<String> = list.iter().map(|u| format!("{u}u")).collect();
                    writeln!(s, "    using {k} = UintList<{}>;", items.join(", "))
                }
            };
        }
        let decls: Vec<String> = t.params.iter().map(|p| p.ty.c_decl(p.name)).collect();
        let names: Vec<&str> = t.params.iter().map(|p| p.name).collect();
        let _ = write!(
            s,
            "}};\nextern \"C\" __global__ void __launch_bounds__({})\n{name}({}) {{\n    {}<{name}_cfg>({});\n}}\n",
            self.launch.block,
            decls.join(", "),
            t.function,
            names.join(", ")
        );
        s
    }
}

/// A C identifier from a layer name (Rust identifiers may hold non-ASCII letters).
pub fn c_ident(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A C float literal with the shortest round-trip digits: `1e-4f`, `0.75f`, `2.0f`.
pub fn c_float(v: f32) -> String {
    format!("{v:?}f")
}

/// `source` with every `#include "name"` of a known header replaced by the header's text
/// (recursively), each header once: one translation unit that NVRTC, or a host compiler,
/// compiles without include paths. An unknown header is an error.
pub fn inline_headers(
    source: &str,
    lookup: &dyn Fn(&str) -> Option<&'static str>,
) -> Result<String, String> {
    let mut out = String::with_capacity(source.len() * 4);
    let mut seen = Vec::new();
    inline_into(source, lookup, &mut seen, &mut out)?;
    Ok(out)
}

fn inline_into(
    source: &str,
    lookup: &dyn Fn(&str) -> Option<&'static str>,
    seen: &mut Vec<String>,
    out: &mut String,
) -> Result<(), String> {
    for line in source.split_inclusive('\n') {
        let included = line
            .trim()
            .strip_prefix("#include \"")
            .and_then(|r| r.strip_suffix('"'));
        match included {
            Some(name) => {
                if seen.iter().any(|s| s == name) {
                    continue;
                }
                seen.push(name.to_string());
                let text = lookup(name).ok_or_else(|| format!("unknown header `{name}`"))?;
                inline_into(text, lookup, seen, out)?;
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_literals_are_valid_c() {
        assert_eq!(c_float(2.0), "2.0f");
        assert_eq!(c_float(1e-4), "0.0001f");
        assert_eq!(c_float(0.75), "0.75f");
        assert_eq!(c_ident("conv1"), "conv1");
        assert_eq!(c_ident("cönv"), "c_nv");
    }

    #[test]
    fn headers_are_inlined_once_and_unknown_ones_refused() {
        let lookup = |n: &str| match n {
            "a.cuh" => Some("// a\n"),
            "b.cuh" => Some("#include \"a.cuh\"\n// b\n"),
            _ => None,
        };
        let src = "#include \"b.cuh\"\n#include \"a.cuh\"\nint x;\n";
        assert_eq!(
            inline_headers(src, &lookup).unwrap(),
            "// a\n// b\nint x;\n"
        );
        assert!(inline_headers("#include \"c.cuh\"\n", &lookup)
            .unwrap_err()
            .contains("c.cuh"));
    }

    #[test]
    fn a_stub_declares_the_template_parameters_and_passes_them_by_name() {
        const T: Template = Template {
            header: "t.cuh",
            function: "scale",
            params: &[read("x"), write("y"), int("batch")],
        };
        let spec = Instance {
            role: Role::Forward,
            launch: KernelLaunch::elementwise(0, "k", 8),
            template: &T,
            doc: "a test".into(),
            consts: vec![("LEN", 8usize.into()), ("S", 0.5f32.into())],
            lens: vec![("x", Len::PerImage(8)), ("y", Len::PerImage(8))],
            gemm: None,
        }
        .spec();
        assert_eq!(
            spec.stub,
            "#include \"t.cuh\"\n\n// k: a test.\nstruct k_cfg {\n    enum : int { LEN = 8 };\n    static constexpr __host__ __device__ float S() { return 0.5f; }\n};\n\
             extern \"C\" __global__ void __launch_bounds__(256)\n\
             k(const float* __restrict__ x, float* __restrict__ y, int batch) {\n    scale<k_cfg>(x, y, batch);\n}\n"
        );
        assert_eq!(spec.args.len(), 3);
        assert_eq!(spec.args[2].len, None);
    }
}
