//! The GEMM kernels of convolution and fully connected layers (an fc layer is a 1x1
//! convolution of its flattened input): the forward pass with bias and a fused ReLU in
//! its epilogue, the input gradient, and the weight and bias gradients split over the
//! batch (split-K) with an ordered reduction. One main loop (`gemm_core.cuh`) under three
//! kernels (`gemm_fwd.cuh`, `gemm_bwd_data.cuh`, `gemm_bwd_weight.cuh`).
//!
//! Tile heuristic (fixed for now; tuning comes later): convolutions use 128-pixel tiles by
//! 128, 96 or 64 output channels (whichever wastes least; narrower groups round up to 16),
//! 8 x 8 outputs per thread (8 x 4 for the narrow ones), K in steps of 8; fully connected
//! layers, whose M is the (small) batch, use 32 x 64 tiles with 2 x 4 per thread. The
//! data gradient tiles like the forward (input pixels x input channels); the weight
//! gradient tiles (output channels x filter weights + bias) with the same edges and picks
//! the chunk length so that batch 128 gives about 528 blocks (four per SM of an
//! H100/H200).

use super::spec::{
    int, read, write, Elem, Epilogue, GemmInfo, GemmStage, GemmTile, Header, Instance,
    KernelLaunch, KernelSpec, Len, Role, Template, Tile, Value, EW_THREADS,
};
use crate::shape::Shape;

/// The headers of the GEMM kernels.
pub const HEADERS: &[Header] = &[
    Header {
        name: "gemm_core.cuh",
        text: include_str!("../../../kernels_templates/gemm_core.cuh"),
    },
    Header {
        name: "gemm_fwd.cuh",
        text: include_str!("../../../kernels_templates/gemm_fwd.cuh"),
    },
    Header {
        name: "gemm_bwd_data.cuh",
        text: include_str!("../../../kernels_templates/gemm_bwd_data.cuh"),
    },
    Header {
        name: "gemm_bwd_weight.cuh",
        text: include_str!("../../../kernels_templates/gemm_bwd_weight.cuh"),
    },
];

pub const FORWARD: Template = Template {
    header: "gemm_fwd.cuh",
    function: "gemm_fwd",
    params: &[read("x"), read("w"), read("bias"), write("y"), int("batch")],
};

pub const DATA_GRAD: Template = Template {
    header: "gemm_bwd_data.cuh",
    function: "gemm_bwd_data",
    params: &[read("dy"), read("w"), write("dx"), int("batch")],
};

pub const WEIGHT_GRAD: Template = Template {
    header: "gemm_bwd_weight.cuh",
    function: "gemm_bwd_weight",
    params: &[
        read("x"),
        read("dy"),
        write("dw"),
        write("db"),
        write("ws"),
        int("batch"),
    ],
};

pub const WEIGHT_REDUCE: Template = Template {
    header: "gemm_bwd_weight.cuh",
    function: "gemm_bwd_weight_reduce",
    params: &[read("ws"), write("dw"), write("db"), int("batch")],
};

/// Every GEMM template.
pub const TEMPLATES: &[Template] = &[FORWARD, DATA_GRAD, WEIGHT_GRAD, WEIGHT_REDUCE];

/// Fully connected layers, whose M (the batch) is small: 32 x 64, 2 x 4 per thread.
pub const FC_TILE: Tile = Tile {
    tm: 32,
    rm: 2,
    tn: 64,
    rn: 4,
    tk: 16,
};

/// Blocks of the weight gradient aimed at for a batch of 128.
const WGRAD_TARGET_BLOCKS: usize = 528;

/// K steps in flight in `gemm_core.cuh`'s main loop.
const PIPELINE: u32 = 2;

/// The backward GEMMs add nothing after their main loop.
const NO_EPILOGUE: Epilogue = Epilogue {
    bias: false,
    relu: false,
};

/// The tile edge for `n` columns: 128 when that wastes under a tenth of the work, else the
/// one of 128, 96 and 64 that wastes least (the larger on a tie), or `n` rounded up to 16
/// below 64; with the columns per thread (8, or 4 for edges of 64 and below).
pub fn tile_edge(n: usize) -> (usize, usize) {
    if n < 64 {
        return (n.next_multiple_of(16), 4);
    }
    let waste = |t: usize| n.div_ceil(t) * t - n;
    if waste(128) * 10 < n {
        return (128, 8);
    }
    let t = [128, 96, 64]
        .into_iter()
        .min_by_key(|&t| (waste(t), usize::MAX - t))
        .unwrap_or(128);
    (t, if t == 64 { 4 } else { 8 })
}

/// A convolution GEMM with many rows (output pixels of the batch) and `n` columns:
/// 128-row tiles, 8 x 8 outputs per thread where the columns allow, K in steps of 8.
pub fn conv_tile(n: usize) -> Tile {
    let (tn, rn) = tile_edge(n);
    Tile {
        tm: 128,
        rm: 8,
        tn,
        rn,
        tk: 8,
    }
}

/// A conv or fc layer as the convolution its GEMMs compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    /// The input as the convolution sees it (fc: `[I, 1, 1]`).
    pub input: Shape,
    pub output: Shape,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
    /// A fully connected layer (named and tiled as one).
    pub fc: bool,
}

/// Who a GEMM kernel belongs to: the layer's index and name, and its description.
pub struct Owner<'a> {
    pub layer: usize,
    /// The layer's name as a C identifier.
    pub name: &'a str,
    /// The layer in the DSL, e.g. `conv(96, 11, stride = 4)`.
    pub desc: &'a str,
    pub label: &'a str,
}

impl Gemm {
    /// A convolution.
    pub fn conv(
        input: Shape,
        output: Shape,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Self {
        Gemm {
            input,
            output,
            k,
            stride,
            pad,
            groups,
            fc: false,
        }
    }

    /// A fully connected layer over the flattened `input`.
    pub fn fc(input: Shape, output: Shape) -> Self {
        Gemm {
            input: Shape::new(input.len(), 1, 1),
            output,
            k: 1,
            stride: 1,
            pad: 0,
            groups: 1,
            fc: true,
        }
    }

    fn cg(&self) -> usize {
        self.input.c / self.groups
    }

    fn og(&self) -> usize {
        self.output.c / self.groups
    }

    /// Filter weights per output channel (the weight gradient's columns, before the bias;
    /// the rows of one group's im2col matrix).
    pub fn kcol(&self) -> usize {
        self.cg() * self.k * self.k
    }

    fn weight_len(&self) -> u64 {
        (self.output.c * self.kcol()) as u64
    }

    fn sizes(&self) -> Vec<(&'static str, Value)> {
        let (i, o) = (self.input, self.output);
        vec![
            ("C", i.c.into()),
            ("H", i.h.into()),
            ("W", i.w.into()),
            ("O", o.c.into()),
            ("P", o.h.into()),
            ("Q", o.w.into()),
            ("R", self.k.into()),
            ("STRIDE", self.stride.into()),
            ("PAD", self.pad.into()),
            ("GROUPS", self.groups.into()),
        ]
    }

    /// The constants of a GEMM kernel's `Cfg`: the sizes, and every choice of `info` (the
    /// templates check the ones they implement one way only: f32, two K steps in flight).
    fn consts(&self, tile: Tile, info: &GemmInfo) -> Vec<(&'static str, Value)> {
        let e = info.epilogue;
        let mut v = self.sizes();
        v.extend([
            ("TM", tile.tm.into()),
            ("TN", tile.tn.into()),
            ("TK", tile.tk.into()),
            ("RM", tile.rm.into()),
            ("RN", tile.rn.into()),
            ("THREADS", tile.threads().into()),
            ("ELEM_BYTES", info.elem.bytes().into()),
            ("PIPELINE", (info.pipeline as usize).into()),
        ]);
        match info.stage {
            GemmStage::Forward => v.extend([("BIAS", e.bias.into()), ("RELU", e.relu.into())]),
            GemmStage::WeightGrad => v.push(("CHUNK", info.split_k.into())),
            GemmStage::DataGrad => {}
        }
        v
    }

    fn info(stage: GemmStage, tile: Tile, split_k: usize, epilogue: Epilogue) -> GemmInfo {
        GemmInfo {
            stage,
            elem: Elem::F32,
            tile: GemmTile::Simt(tile),
            pipeline: PIPELINE,
            split_k,
            epilogue,
        }
    }

    /// The heuristic's tile of the forward pass: [`FC_TILE`] or [`conv_tile`].
    pub fn forward_tile(&self) -> Tile {
        if self.fc {
            FC_TILE
        } else {
            conv_tile(self.og())
        }
    }

    /// The forward pass: bias and, with `relu`, the fused ReLU in the epilogue; the
    /// heuristic's tile.
    pub fn forward(&self, owner: &Owner<'_>, relu: bool) -> KernelSpec {
        self.forward_tiled(owner, relu, self.forward_tile())
    }

    /// [`Gemm::forward`] with `tile` (a tuning table's); its name says the thread tile and
    /// K step too where they are not the heuristic's.
    pub fn forward_tiled(&self, owner: &Owner<'_>, relu: bool, tile: Tile) -> KernelSpec {
        let (cg, og, o) = (self.cg(), self.og(), self.output);
        let usual = self.forward_tile();
        let extra = if (tile.rm, tile.rn, tile.tk) == (usual.rm, usual.rn, usual.tk) {
            String::new()
        } else {
            format!("_r{}x{}k{}", tile.rm, tile.rn, tile.tk)
        };
        let lname = owner.name;
        let name = if self.fc {
            format!(
                "{lname}_fwd_i{}_o{og}_t{}x{}{extra}",
                self.input.c, tile.tm, tile.tn
            )
        } else {
            format!(
                "{lname}_fwd_c{cg}_k{og}_r{}_t{}x{}{extra}",
                self.k, tile.tm, tile.tn
            )
        };
        let info = Self::info(GemmStage::Forward, tile, 0, Epilogue { bias: true, relu });
        let consts = self.consts(tile, &info);
        Instance {
            role: Role::Forward,
            launch: KernelLaunch {
                layer: owner.layer,
                name: name.into(),
                block: tile.threads() as u32,
                x_per_image: (o.h * o.w) as u64,
                x_per_block: tile.tm as u32,
                x_fixed: 0,
                grid_y: og.div_ceil(tile.tn) as u32,
                grid_z: self.groups as u32,
            },
            template: &FORWARD,
            doc: format!("forward of `{}` ({})", owner.label, owner.desc),
            consts,
            lens: vec![
                ("x", Len::PerImage(self.input.len() as u64)),
                ("w", Len::Fixed(self.weight_len())),
                ("bias", Len::Fixed(o.c as u64)),
                ("y", Len::PerImage(o.len() as u64)),
            ],
            gemm: Some(info),
        }
        .spec()
    }

    /// The input gradient: rows are input pixels, columns the group's input channels.
    pub fn data_grad(&self, owner: &Owner<'_>) -> KernelSpec {
        let (cg, og) = (self.cg(), self.og());
        let tile = if self.fc { FC_TILE } else { conv_tile(cg) };
        let name = format!(
            "{}_bwd_data_c{cg}_k{og}_r{}_t{}x{}",
            owner.name, self.k, tile.tm, tile.tn
        );
        let info = Self::info(GemmStage::DataGrad, tile, 0, NO_EPILOGUE);
        let mut consts = self.consts(tile, &info);
        consts.push(("B_K_FAST", (self.k > 1).into()));
        Instance {
            role: Role::DataGrad,
            launch: KernelLaunch {
                layer: owner.layer,
                name: name.into(),
                block: tile.threads() as u32,
                x_per_image: (self.input.h * self.input.w) as u64,
                x_per_block: tile.tm as u32,
                x_fixed: 0,
                grid_y: cg.div_ceil(tile.tn) as u32,
                grid_z: self.groups as u32,
            },
            template: &DATA_GRAD,
            doc: format!("input gradient of `{}` ({})", owner.label, owner.desc),
            consts,
            lens: vec![
                ("dy", Len::PerImage(self.output.len() as u64)),
                ("w", Len::Fixed(self.weight_len())),
                ("dx", Len::PerImage(self.input.len() as u64)),
            ],
            gemm: Some(info),
        }
        .spec()
    }

    /// Rows are the group's output channels, columns its filter weights and the bias.
    fn wgrad_tile(&self) -> Tile {
        let (tm, rm) = tile_edge(self.og());
        let (tn, rn) = tile_edge(self.kcol() + 1);
        Tile {
            tm,
            rm,
            tn,
            rn,
            tk: 8,
        }
    }

    /// Rows of the batch's sum each block of the weight gradient takes.
    fn chunk(&self) -> usize {
        let t = self.wgrad_tile();
        let tiles = self.og().div_ceil(t.tm) * (self.kcol() + 1).div_ceil(t.tn) * self.groups;
        let chunks = WGRAD_TARGET_BLOCKS.div_ceil(tiles).max(1);
        let rows = 128 * self.output.h * self.output.w;
        rows.div_ceil(chunks).max(4 * t.tk).next_multiple_of(t.tk)
    }

    /// The workspace of the chunks' partial sums: `G * OG * (KCOL + 1)` values a chunk,
    /// one chunk per `chunk` pixels of the batch's output.
    fn workspace(&self, chunk: usize) -> Len {
        let pq = (self.output.h * self.output.w) as u64;
        Len::Split {
            per_chunk: (self.output.c * (self.kcol() + 1)) as u64,
            per_image: pq,
            chunk: chunk as u64,
        }
    }

    /// The weight gradient's choices: split-K in chunks of [`Gemm::chunk`].
    fn weight_info(&self) -> GemmInfo {
        Self::info(
            GemmStage::WeightGrad,
            self.wgrad_tile(),
            self.chunk(),
            NO_EPILOGUE,
        )
    }

    /// The constants the weight gradient and its reduction share.
    fn weight_consts(&self) -> Vec<(&'static str, Value)> {
        let mut v = self.consts(self.wgrad_tile(), &self.weight_info());
        let spatial = self.output.h * self.output.w > 1;
        v.extend([("A_K_FAST", spatial.into()), ("B_K_FAST", spatial.into())]);
        v
    }

    /// The weight and bias gradients: rows are the group's output channels, columns its
    /// filter weights and the bias (whose input is 1); the sum over the batch's pixels in
    /// chunks of [`GemmInfo::split_k`].
    pub fn weight_grad(&self, owner: &Owner<'_>) -> KernelSpec {
        let t = self.wgrad_tile();
        let (og, kcol) = (self.og(), self.kcol());
        let name = format!("{}_bwd_weight_o{og}_k{kcol}_t{}x{}", owner.name, t.tm, t.tn);
        Instance {
            role: Role::WeightGrad,
            launch: KernelLaunch {
                layer: owner.layer,
                name: name.into(),
                block: t.threads() as u32,
                x_per_image: (self.output.h * self.output.w) as u64,
                x_per_block: self.chunk() as u32,
                x_fixed: 0,
                grid_y: (og.div_ceil(t.tm) * (kcol + 1).div_ceil(t.tn)) as u32,
                grid_z: self.groups as u32,
            },
            template: &WEIGHT_GRAD,
            doc: format!(
                "weight and bias gradients of `{}` ({})",
                owner.label, owner.desc
            ),
            consts: self.weight_consts(),
            lens: vec![
                ("x", Len::PerImage(self.input.len() as u64)),
                ("dy", Len::PerImage(self.output.len() as u64)),
                ("dw", Len::Fixed(self.weight_len())),
                ("db", Len::Fixed(self.output.c as u64)),
                ("ws", self.workspace(self.chunk())),
            ],
            gemm: Some(self.weight_info()),
        }
        .spec()
    }

    /// The ordered sum of the weight gradient's chunks (run only when there are several).
    pub fn weight_reduce(&self, owner: &Owner<'_>) -> KernelSpec {
        self.reduce_chunks(owner, self.chunk(), "")
    }

    /// The ordered sum of another weight gradient's chunks of `chunk` output pixels, in
    /// the same workspace layout (a tensor-core one's: `MmaGemm::conv_weight_grad`),
    /// named for its chunk.
    pub fn weight_reduce_of(&self, owner: &Owner<'_>, chunk: usize) -> KernelSpec {
        self.reduce_chunks(owner, chunk, &format!("_c{chunk}"))
    }

    fn reduce_chunks(&self, owner: &Owner<'_>, chunk: usize, suffix: &str) -> KernelSpec {
        let e = self.output.c * (self.kcol() + 1);
        let name = format!("{}_bwd_weight_reduce_n{e}{suffix}", owner.name);
        let mut consts = self.weight_consts();
        for (name, v) in consts.iter_mut() {
            if *name == "CHUNK" {
                *v = chunk.into();
            }
        }
        Instance {
            role: Role::WeightReduce,
            launch: KernelLaunch::fixed(
                owner.layer,
                &name,
                EW_THREADS,
                e.div_ceil(EW_THREADS as usize) as u32,
            ),
            template: &WEIGHT_REDUCE,
            doc: format!(
                "ordered sum of the weight gradient's chunks of `{}` ({})",
                owner.label, owner.desc
            ),
            consts,
            lens: vec![
                ("ws", self.workspace(chunk)),
                ("dw", Len::Fixed(self.weight_len())),
                ("db", Len::Fixed(self.output.c as u64)),
            ],
            gemm: None,
        }
        .spec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_edges() {
        assert_eq!(
            (tile_edge(48), tile_edge(192), tile_edge(364)),
            ((48, 4), (96, 8), (128, 8))
        );
    }
}
