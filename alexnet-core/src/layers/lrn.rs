//! `lrn(size, alpha = 1e-4, beta = 0.75, k = 2)`: local response normalisation across
//! channels (section 3.3 of the paper), `y = x / (k + alpha / size * sum x^2)^beta` over a
//! window of `size` channels centred on the channel (the PyTorch/ONNX/Caffe convention,
//! where alpha is divided by `size`), never crossing the towers of a split network. The
//! GPU kernels are `kernels_templates/lrn.cuh`.

use super::dsl::{err, int, real, ArgSpec, Culprit, Default, Keyword, Naming, ShapeError};
use super::kind::{FusedPool, KernelCx, Kind, LayerKind, ShapeContext};
use super::pool::Pool;
use crate::kernels::spec::{
    int as int_arg, read, write, Header, Instance, KernelLaunch, KernelSpec, Len, Role, Template,
    Value, EW_THREADS,
};
use crate::shape::Shape;

/// Local response normalisation across channels (PyTorch/ONNX/Caffe convention):
/// `y = x / (k + alpha / size * sum_{window} x^2)^beta`. The window never crosses a
/// boundary between the `channel_groups` equal channel groups (the towers of a `split 2`
/// network, as on the paper's two GPUs); 1 means one group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lrn {
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
    pub channel_groups: usize,
}

/// The paper's constants (section 3.3): n = 5, alpha = 1e-4, beta = 0.75, k = 2.
const SIGNATURE: &[ArgSpec] = &[
    int("size", 1, Default::Required, true),
    real("alpha", 0.0, f64::MAX, 1e-4),
    real("beta", 0.0, f64::MAX, 0.75),
    real("k", 0.0, f64::MAX, 2.0),
];

const FORWARD: Template = Template {
    header: "lrn.cuh",
    function: "lrn_fwd",
    params: &[read("x"), write("y"), int_arg("batch")],
};

/// The largest plane (`H x W` f32 values) the fused LRN and pooling normalise in shared
/// memory, one block per (image, channel): 32 KiB, AlexNet's 55 x 55 (12 kB) and 27 x 27.
const PLANE_BYTES: usize = 32 * 1024;

/// Threads of a block of the fused LRN and pooling that normalises one plane.
const PLANE_THREADS: u32 = 256;

/// The LRN and the pooling after it, in one pass ([`LayerKind::fuses_pool`]).
const FORWARD_POOL: Template = Template {
    header: "lrn.cuh",
    function: "lrn_pool_fwd",
    params: &[read("x"), write("y"), int_arg("batch")],
};

const BACKWARD: Template = Template {
    header: "lrn.cuh",
    function: "lrn_bwd",
    params: &[read("x"), read("dy"), write("dx"), int_arg("batch")],
};

impl Kind for Lrn {
    const KEYWORDS: &'static [Keyword] = &[Keyword {
        name: "lrn",
        signature: SIGNATURE,
        naming: Naming::AfterLearned("lrn"),
    }];
    const HEADERS: &'static [Header] = &[Header {
        name: "lrn.cuh",
        text: include_str!("../../../kernels_templates/lrn.cuh"),
    }];
    const TEMPLATES: &'static [Template] = &[FORWARD, FORWARD_POOL, BACKWARD];

    fn build(_keyword: &str, v: &[f64]) -> Self {
        Lrn {
            size: v[0] as usize,
            alpha: v[1] as f32,
            beta: v[2] as f32,
            k: v[3] as f32,
            channel_groups: 1,
        }
    }

    fn in_tower(&self, towers: usize, _own: bool) -> Self {
        Lrn {
            channel_groups: (self.channel_groups / towers).max(1),
            ..*self
        }
    }
}

impl Lrn {
    /// The constants its two templates share.
    fn consts(&self, cx: &KernelCx<'_>) -> Vec<(&'static str, Value)> {
        let i = cx.input;
        vec![
            ("THREADS", (EW_THREADS as usize).into()),
            ("C", i.c.into()),
            ("HW", (i.h * i.w).into()),
            ("SIZE", self.size.into()),
            ("GROUPS", self.channel_groups.into()),
            ("ALPHA", self.alpha.into()),
            ("BETA", self.beta.into()),
            ("KB", self.k.into()),
        ]
    }

    /// The forward kernel of the LRN with the pooling `f` fused: one thread per pooled
    /// value, normalising the pixels of its window as the LRN's own kernel does.
    fn pooled(&self, cx: &KernelCx<'_>, f: &FusedPool) -> KernelSpec {
        let (i, o) = (cx.input, f.output);
        let pool = Pool::of_fused(f);
        let name = format!(
            "{}_fwd_{}pool_c{}_n{}_g{}_k{}s{}",
            cx.c_name(),
            pool.mode(),
            i.c,
            self.size,
            self.channel_groups,
            f.k,
            f.stride
        );
        // A plane that fits in shared memory is normalised once into it by a block of its
        // own; larger ones take a thread per pooled value.
        let plane = 4 * i.h * i.w <= PLANE_BYTES;
        let mut consts = self.consts(cx);
        consts.extend(
            pool.consts_of(i, o)
                .into_iter()
                .filter(|(k, _)| !matches!(*k, "THREADS" | "C")),
        );
        consts.push(("PLANE", plane.into()));
        let launch = if plane {
            KernelLaunch {
                block: PLANE_THREADS,
                x_per_image: i.c as u64,
                x_per_block: 1,
                ..KernelLaunch::elementwise(cx.layer, &name, 0)
            }
        } else {
            KernelLaunch::elementwise(cx.layer, &name, o.len() as u64)
        };
        // The template's THREADS is the launch's block, whichever form.
        consts.retain(|(k, _)| *k != "THREADS");
        consts.push(("THREADS", (launch.block as usize).into()));
        Instance {
            role: Role::ForwardPooled,
            launch,
            template: &FORWARD_POOL,
            doc: format!(
                "forward of `{}` ({}) with the {} after it ({}) fused",
                cx.name,
                self.describe(),
                pool.keyword(),
                pool.describe()
            ),
            consts,
            lens: vec![
                ("x", Len::PerImage(i.len() as u64)),
                ("y", Len::PerImage(o.len() as u64)),
            ],
            gemm: None,
        }
        .spec()
    }

    fn kernel(&self, cx: &KernelCx<'_>, role: Role, template: &Template, what: &str) -> KernelSpec {
        let i = cx.input;
        let name = format!(
            "{}_{what}_c{}_n{}_g{}",
            cx.c_name(),
            i.c,
            self.size,
            self.channel_groups
        );
        let per = Len::PerImage(i.len() as u64);
        let lens = match role {
            Role::Forward => vec![("x", per), ("y", per)],
            _ => vec![("x", per), ("dy", per), ("dx", per)],
        };
        let doc = match role {
            Role::Forward => "forward",
            _ => "gradient",
        };
        Instance {
            role,
            launch: KernelLaunch::elementwise(cx.layer, &name, i.len() as u64),
            template,
            doc: format!("{doc} of `{}` ({})", cx.name, self.describe()),
            consts: self.consts(cx),
            lens,
            gemm: None,
        }
        .spec()
    }
}

impl LayerKind for Lrn {
    fn keyword(&self) -> &'static str {
        "lrn"
    }

    fn describe(&self) -> String {
        format!(
            "lrn({}, alpha = {:e}, beta = {}, k = {})",
            self.size, self.alpha, self.beta, self.k
        )
    }

    fn check_args(&self) -> Option<(&'static str, String)> {
        let size = self.size;
        size.is_multiple_of(2).then(|| {
            (
                "size",
                format!("size {size} must be odd, so that the window is centred on its channel"),
            )
        })
    }

    fn infer(&mut self, input: Shape, cx: &ShapeContext<'_>) -> Result<Shape, ShapeError> {
        let (size, split) = (self.size, cx.split);
        let ctx = cx.input(input);
        let per_tower = input.c / split.max(1);
        if split > 1 && !input.c.is_multiple_of(split) {
            return Err(err(
                Culprit::Layer,
                format!(
                    "{} channels cannot be split evenly between {split} towers ({ctx})",
                    input.c
                ),
            ));
        }
        if size > per_tower {
            let whose = if split > 1 {
                format!("the {per_tower} channels of each tower")
            } else {
                format!("the {} channels", input.c)
            };
            return Err(err(
                Culprit::Arg("size"),
                format!("size {size} exceeds {whose} ({ctx})"),
            ));
        }
        self.channel_groups = split.max(1);
        Ok(input)
    }

    fn reads_own_tower(&self, towers: usize) -> bool {
        self.channel_groups.is_multiple_of(towers)
    }

    fn fuses_pool(&self) -> bool {
        true
    }

    fn forward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        match cx.pool {
            Some(f) => vec![self.pooled(cx, &f)],
            None => vec![self.kernel(cx, Role::Forward, &FORWARD, "fwd")],
        }
    }

    fn backward_kernels(&self, cx: &KernelCx<'_>) -> Vec<KernelSpec> {
        if !cx.needs_dx {
            return Vec::new();
        }
        vec![self.kernel(cx, Role::Backward, &BACKWARD, "bwd")]
    }
}
