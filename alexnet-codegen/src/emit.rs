//! Code emission: the typed Rust for a checked network, or a stub beside its errors.
//!
//! Generated code names the facade crate `::alexnet` (which re-exports the runtime and
//! the IR), so a user depends on `alexnet` alone.

use alexnet_core::cuda;
use alexnet_core::ir::{KernelLaunch, KernelSpec, Kernels, Layer, Op, Plan, Shape};
use alexnet_core::kernels::spec::{Arg, ArgTy, Elem, GemmInfo, GemmTile, Len, Role};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

use crate::ast::NetworkDef;

fn usize_lit(v: usize) -> Literal {
    Literal::usize_unsuffixed(v)
}

fn shape_tokens(s: Shape) -> TokenStream {
    let (c, h, w) = (usize_lit(s.c), usize_lit(s.h), usize_lit(s.w));
    quote!(::alexnet::ir::Shape { c: #c, h: #h, w: #w })
}

/// The operation as an expression: its derived `Debug` (`Conv(Conv { out: 96, .. })`, every
/// field a number or a bool), with the kinds in scope where the plan is emitted.
fn op_tokens(op: &Op) -> TokenStream {
    let text = format!("::alexnet::ir::Op::{op:?}");
    text.parse().unwrap_or_else(|e| {
        let msg = format!("alexnet: cannot embed `{op:?}` ({e}); please report this");
        quote!(::core::compile_error!(#msg))
    })
}

fn layer_tokens(l: &Layer) -> TokenStream {
    let name = l.name.as_ref();
    let op = op_tokens(&l.op);
    let (input, output) = (shape_tokens(l.input), shape_tokens(l.output));
    quote! {
        ::alexnet::ir::Layer {
            name: ::std::borrow::Cow::Borrowed(#name),
            op: #op,
            input: #input,
            output: #output,
        }
    }
}

/// The layer table as a constant expression.
fn layer_infos(plan: &Plan) -> TokenStream {
    let rows = plan.layers.iter().map(|l| {
        let (name, op) = (l.name.as_ref(), l.op.keyword());
        let (c, h, w) = (usize_lit(l.output.c), usize_lit(l.output.h), usize_lit(l.output.w));
        let (params, macs) = (usize_lit(l.param_count()), Literal::u64_unsuffixed(l.macs()));
        quote!(::alexnet::ir::LayerInfo { name: #name, op: #op, output: [#c, #h, #w], params: #params, macs: #macs })
    });
    quote!(&[#(#rows),*])
}

/// A launch; `short` when the items of [`scope`] are in scope, otherwise with full paths.
fn launch_tokens(k: &KernelLaunch, short: bool) -> TokenStream {
    let name = k.name.as_ref();
    let layer = usize_lit(k.layer);
    let (block, xpb, gy, gz) = (
        Literal::u32_unsuffixed(k.block),
        Literal::u32_unsuffixed(k.x_per_block),
        Literal::u32_unsuffixed(k.grid_y),
        Literal::u32_unsuffixed(k.grid_z),
    );
    let xpi = Literal::u64_unsuffixed(k.x_per_image);
    let xf = Literal::u32_unsuffixed(k.x_fixed);
    let (ty, cow) = if short {
        (quote!(KernelLaunch), quote!(Cow))
    } else {
        (
            quote!(::alexnet::ir::KernelLaunch),
            quote!(::std::borrow::Cow),
        )
    };
    quote! {
        #ty {
            layer: #layer,
            name: #cow::Borrowed(#name),
            block: #block,
            x_per_image: #xpi,
            x_per_block: #xpb,
            x_fixed: #xf,
            grid_y: #gy,
            grid_z: #gz,
        }
    }
}

/// The kernels' launch table as a constant expression.
fn kernel_launches(specs: &[KernelSpec]) -> TokenStream {
    let rows = specs.iter().map(|k| launch_tokens(&k.launch, false));
    quote!(&[#(#rows),*])
}

/// What the embedded kernels name by their short names: brought into the scope of the
/// statics that hold them, so that each of the hundreds of specs of a network is a few
/// dozen tokens (the macro's and the compiler's time grows with the tokens).
fn scope() -> TokenStream {
    quote! {
        #[allow(unused_imports)]
        use ::alexnet::ir::kernels::spec::{
            Access, Arg, ArgTy, Elem, Epilogue, GemmInfo, GemmStage, GemmTile, Len, MmaTile,
            Role, Tile,
        };
        #[allow(unused_imports)]
        use ::alexnet::ir::{Generated, KernelLaunch, KernelSpec, Kernels};
        #[allow(unused_imports)]
        use ::core::option::Option::{None, Some};
        #[allow(unused_imports)]
        use ::std::borrow::Cow;
    }
}

/// A variant name as an identifier (`Forward`, `F32`, `Read`, ...).
fn variant(v: impl std::fmt::Debug) -> proc_macro2::Ident {
    format_ident!("{}", format!("{v:?}"))
}

fn role_tokens(r: Role) -> TokenStream {
    match r {
        Role::Sgd { first, count } => {
            let (first, count) = (usize_lit(first), usize_lit(count));
            quote!(Role::Sgd { first: #first, count: #count })
        }
        Role::Finite { first, count } => {
            let (first, count) = (usize_lit(first), usize_lit(count));
            quote!(Role::Finite { first: #first, count: #count })
        }
        other => {
            let v = variant(other);
            quote!(Role::#v)
        }
    }
}

fn elem_tokens(e: Elem) -> TokenStream {
    let v = variant(e);
    quote!(Elem::#v)
}

fn arg_tokens(a: &Arg) -> TokenStream {
    let name = a.name;
    let ty = match a.ty {
        ArgTy::Ptr(e, access) => {
            let (e, access) = (elem_tokens(e), variant(access));
            quote!(ArgTy::Ptr(#e, Access::#access))
        }
        ArgTy::Struct(s) => quote!(ArgTy::Struct(#s)),
        other => {
            let v = variant(other);
            quote!(ArgTy::#v)
        }
    };
    let u = |v: u64| Literal::u64_unsuffixed(v);
    let len = match a.len {
        None => quote!(None),
        Some(Len::PerImage(n)) => {
            let n = u(n);
            quote!(Some(Len::PerImage(#n)))
        }
        Some(Len::Fixed(n)) => {
            let n = u(n);
            quote!(Some(Len::Fixed(#n)))
        }
        Some(Len::Split {
            per_chunk,
            per_image,
            chunk,
        }) => {
            let (a, b, c) = (u(per_chunk), u(per_image), u(chunk));
            quote!(Some(Len::Split { per_chunk: #a, per_image: #b, chunk: #c }))
        }
    };
    quote!(Arg { name: #name, ty: #ty, len: #len })
}

fn gemm_tokens(g: Option<GemmInfo>) -> TokenStream {
    let Some(g) = g else {
        return quote!(None);
    };
    let st = variant(g.stage);
    let e = elem_tokens(g.elem);
    let tile = match g.tile {
        GemmTile::Simt(t) => {
            let [tm, rm, tn, rn, tk] = [t.tm, t.rm, t.tn, t.rn, t.tk].map(usize_lit);
            quote!(GemmTile::Simt(Tile { tm: #tm, rm: #rm, tn: #tn, rn: #rn, tk: #tk }))
        }
        GemmTile::Mma(t) => {
            let [bm, bn, bk, wm, wn, st] =
                [t.bm, t.bn, t.bk, t.warps_m, t.warps_n, t.stages].map(usize_lit);
            quote!(GemmTile::Mma(MmaTile {
                bm: #bm, bn: #bn, bk: #bk, warps_m: #wm, warps_n: #wn, stages: #st
            }))
        }
    };
    let (pipeline, split_k) = (Literal::u32_unsuffixed(g.pipeline), usize_lit(g.split_k));
    let (bias, relu) = (g.epilogue.bias, g.epilogue.relu);
    quote! {
        Some(GemmInfo {
            stage: GemmStage::#st,
            elem: #e,
            tile: #tile,
            pipeline: #pipeline,
            split_k: #split_k,
            epilogue: Epilogue { bias: #bias, relu: #relu },
        })
    }
}

fn spec_tokens(k: &KernelSpec) -> TokenStream {
    let role = role_tokens(k.role);
    let launch = launch_tokens(&k.launch, true);
    let stub = k.stub.as_ref();
    let args = k.args.iter().map(arg_tokens);
    let gemm = gemm_tokens(k.gemm);
    quote! {
        KernelSpec {
            role: #role,
            launch: #launch,
            stub: Cow::Borrowed(#stub),
            args: Cow::Borrowed(&[#(#args),*]),
            gemm: #gemm,
        }
    }
}

fn kernels_tokens(k: &Kernels) -> TokenStream {
    let list = |specs: &[KernelSpec]| {
        let items = specs.iter().map(spec_tokens);
        quote!(Cow::Borrowed(&[#(#items),*]))
    };
    let (f, t, e) = (list(&k.forward), list(&k.training), list(&k.exchanges));
    let (tf32, bf16, f16) = (list(&k.tf32), list(&k.bf16), list(&k.f16));
    quote!(Kernels { forward: #f, training: #t, exchanges: #e, tf32: #tf32, bf16: #bf16, f16: #f16 })
}

/// The kernels `network!` generates for `plan` and, for a split network, for each tower's
/// plan (with their fingerprints), as a constant expression of `Generated` (in [`scope`]).
fn generated_tokens(plan: &Plan, kernels: &Kernels) -> TokenStream {
    let one = |p: &Plan, k: &Kernels, towers: TokenStream| {
        let k = kernels_tokens(k);
        let f = Literal::u64_unsuffixed(p.fingerprint());
        quote!(Generated { fingerprint: #f, kernels: #k, towers: #towers })
    };
    let towers = (0..plan.split)
        .filter_map(|t| plan.tower(t))
        .map(|t| one(&t, &cuda::generate(&t), quote!(&[])));
    one(plan, kernels, quote!(&[#(#towers),*]))
}

/// The `Plan` as a constant expression, with `generated` (a path to a static of its
/// generated kernels) in it. The layer kinds must be in scope (`::alexnet::ir::kinds::*`).
pub fn plan_tokens(plan: &Plan, generated: Option<TokenStream>) -> TokenStream {
    let name = plan.name.as_ref();
    let input = shape_tokens(plan.input);
    let split = usize_lit(plan.split);
    // Generated networks are whole; tower plans are made at run time by `Plan::tower`.
    debug_assert!(plan.tower.is_none());
    let layers = plan.layers.iter().map(layer_tokens);
    let generated = match generated {
        Some(g) => quote!(::std::option::Option::Some(&#g)),
        None => quote!(::std::option::Option::None),
    };
    quote! {
        ::alexnet::ir::Plan {
            name: ::std::borrow::Cow::Borrowed(#name),
            input: #input,
            split: #split,
            layers: ::std::borrow::Cow::Borrowed(&[#(#layers),*]),
            tower: ::std::option::Option::None,
            generated: #generated,
        }
    }
}

/// The items of one network. `plan` is `None` for the stub emitted beside errors: the same
/// items with bodies that never run (compilation has already failed), so that code using
/// the network reports no further errors.
pub fn network(
    def: &NetworkDef,
    plan: Option<&Plan>,
    input: Option<Shape>,
    output: Option<Shape>,
) -> TokenStream {
    let attrs = &def.attrs;
    let vis = &def.vis;
    let name = &def.name;
    let rt = quote!(::alexnet::runtime);
    let dims = |s: Shape| {
        let (c, h, w) = (usize_lit(s.c), usize_lit(s.h), usize_lit(s.w));
        quote!(#c, #h, #w)
    };
    let in_dims = input.map(dims);
    let in_ty = match &in_dims {
        Some(d) => quote!(#rt::Batch<#d>),
        None => quote!(#rt::Batch<IC, IH, IW>),
    };
    let out_ty = match output.map(dims) {
        Some(d) => quote!(#rt::Batch<#d>),
        None => quote!(#rt::Batch<OC, OH, OW>),
    };
    let mut generics = Vec::new();
    if input.is_none() {
        generics.extend([
            quote!(const IC: usize),
            quote!(const IH: usize),
            quote!(const IW: usize),
        ]);
    }
    if output.is_none() {
        generics.extend([
            quote!(const OC: usize),
            quote!(const OH: usize),
            quote!(const OW: usize),
        ]);
    }
    let fwd_generics = if generics.is_empty() {
        quote!()
    } else {
        quote!(<#(#generics),*>)
    };
    let arr = |s: Option<Shape>| match s {
        Some(s) => {
            let d = dims(s);
            quote!([#d])
        }
        None => quote!([0, 0, 0]),
    };
    let (in_arr, out_arr) = (arr(input), arr(output));
    let kernels = plan.map(cuda::generate);
    let (cuda_source, cuda_kernels, cuda_training) = match (plan, &kernels) {
        (Some(p), Some(k)) => (
            Literal::string(&cuda::forward_source(p, k)),
            kernel_launches(&k.forward),
            Literal::string(&cuda::training_source(p, k)),
        ),
        _ => (Literal::string(""), quote!(&[]), Literal::string("")),
    };
    let (param_count, macs, layer_table, plan_body, forward_body) = match plan {
        Some(p) => {
            let generated = kernels.as_ref().map(|k| generated_tokens(p, k));
            let pt = plan_tokens(p, generated.is_some().then(|| quote!(GENERATED)));
            let generated = generated.map(|g| {
                let scope = scope();
                quote!(#scope static GENERATED: Generated = #g;)
            });
            (
                usize_lit(p.param_count()),
                Literal::u64_unsuffixed(p.macs()),
                layer_infos(p),
                quote! {
                    #[allow(unused_imports)]
                    use ::alexnet::ir::kinds::*;
                    #generated
                    static PLAN: ::alexnet::ir::Plan = #pt;
                    &PLAN
                },
                quote!(#rt::Batch::from_tensor(self.model.forward(input.as_tensor())?)),
            )
        }
        None => {
            // Never runs: the network failed to compile, and `compile_error!` says why.
            let never = quote!(::core::panic!(
                "network `{}` failed to compile",
                stringify!(#name)
            ));
            (
                usize_lit(0),
                Literal::u64_unsuffixed(0),
                quote!(&[]),
                never.clone(),
                never,
            )
        }
    };
    let plan_fn = format_ident!("plan");
    let doc_in = format!(
        "Per-image input shape `[C, H, W]`: {}.",
        input.map_or("unknown".into(), |s| format!("{:?}", s.to_array()))
    );
    let doc_out = format!(
        "Per-image output shape `[C, H, W]`: {}.",
        output.map_or("unknown".into(), |s| format!("{:?}", s.to_array()))
    );
    quote! {
        #(#attrs)*
        #vis struct #name<B: #rt::Inference = #rt::Cpu> {
            model: #rt::Model<B>,
        }

        impl<B: #rt::Inference> ::core::fmt::Debug for #name<B> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Debug::fmt(&self.model, f)
            }
        }

        impl #name {
            #[doc = #doc_in]
            pub const INPUT_SHAPE: [usize; 3] = #in_arr;
            #[doc = #doc_out]
            pub const OUTPUT_SHAPE: [usize; 3] = #out_arr;
            /// Learned parameters (weights and biases).
            pub const PARAM_COUNT: usize = #param_count;
            /// Multiply-adds of one image's forward pass.
            pub const MACS_PER_IMAGE: u64 = #macs;
            /// The layer table: name, operation, output shape, parameters, multiply-adds.
            pub const LAYERS: &'static [::alexnet::ir::LayerInfo] = #layer_table;
            /// The network's CUDA C++: one kernel per stage, every size a constant
            /// (rendered from `kernels_templates/`).
            pub const CUDA_SOURCE: &'static str = #cuda_source;
            /// How to launch each kernel of `CUDA_SOURCE`, in stage order.
            pub const CUDA_KERNELS: &'static [::alexnet::ir::KernelLaunch] = #cuda_kernels;
            /// The training kernels (backward of every stage, loss, dropout, SGD), every
            /// size a constant; the runtime compiles them when training starts.
            pub const CUDA_TRAINING_SOURCE: &'static str = #cuda_training;

            /// The planned network: every layer with its shapes, as the macro inferred them.
            pub fn #plan_fn() -> &'static ::alexnet::ir::Plan {
                #plan_body
            }

            /// The layer table (name, operation, output shape, parameters, multiply-adds).
            pub fn summary() -> ::std::string::String {
                Self::#plan_fn().summary()
            }
        }

        impl<B: #rt::Inference> #name<B> {
            /// A network on `backend` with the paper's initialisation (weights N(0, 0.01),
            /// biases 1 in conv2, conv4, conv5 and the hidden fc layers, 0 elsewhere), from
            /// a seeded RNG.
            pub fn new(backend: B, seed: u64) -> #rt::Result<Self> {
                ::core::result::Result::Ok(Self { model: #rt::Model::init(backend, #name::#plan_fn().clone(), seed)? })
            }

            /// Loads weights from a safetensors file (PyTorch names and layouts).
            pub fn load(backend: B, path: impl ::core::convert::AsRef<::std::path::Path>) -> #rt::Result<Self> {
                ::core::result::Result::Ok(Self { model: #rt::Model::load(backend, #name::#plan_fn().clone(), path.as_ref())? })
            }

            /// Wraps a model, which must have been built from this network's plan.
            pub fn from_model(model: #rt::Model<B>) -> #rt::Result<Self> {
                model.expect_plan(#name::#plan_fn())?;
                ::core::result::Result::Ok(Self { model })
            }

            /// Saves the weights to a safetensors file, atomically.
            pub fn save(&self, path: impl ::core::convert::AsRef<::std::path::Path>) -> #rt::Result<()> {
                self.model.save(path.as_ref())
            }

            /// The forward pass (inference: dropout is the identity).
            pub fn forward #fwd_generics(&self, input: &#in_ty) -> #rt::Result<#out_ty> {
                #forward_body
            }

            pub fn model(&self) -> &#rt::Model<B> {
                &self.model
            }

            pub fn into_model(self) -> #rt::Model<B> {
                self.model
            }
        }
    }
}
