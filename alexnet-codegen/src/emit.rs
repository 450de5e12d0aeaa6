//! Code emission: the typed Rust for a checked network, or a stub beside its errors.
//!
//! Generated code names the facade crate `::alexnet` (which re-exports the runtime and
//! the IR), so a user depends on `alexnet` alone.

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

use crate::ast::NetworkDef;
use crate::ir::{Layer, Op, Plan, Shape};

fn usize_lit(v: usize) -> Literal {
    Literal::usize_unsuffixed(v)
}

fn shape_tokens(s: Shape) -> TokenStream {
    let (c, h, w) = (usize_lit(s.c), usize_lit(s.h), usize_lit(s.w));
    quote!(::alexnet::ir::Shape { c: #c, h: #h, w: #w })
}

fn op_tokens(op: &Op) -> TokenStream {
    let u = |v: usize| usize_lit(v);
    let f = |v: f32| Literal::f32_suffixed(v);
    match *op {
        Op::Conv {
            out,
            k,
            stride,
            pad,
            groups,
        } => {
            let (out, k, stride, pad, groups) = (u(out), u(k), u(stride), u(pad), u(groups));
            quote!(::alexnet::ir::Op::Conv { out: #out, k: #k, stride: #stride, pad: #pad, groups: #groups })
        }
        Op::Relu => quote!(::alexnet::ir::Op::Relu),
        Op::MaxPool { k, stride } => {
            let (k, stride) = (u(k), u(stride));
            quote!(::alexnet::ir::Op::MaxPool { k: #k, stride: #stride })
        }
        Op::AvgPool { k, stride } => {
            let (k, stride) = (u(k), u(stride));
            quote!(::alexnet::ir::Op::AvgPool { k: #k, stride: #stride })
        }
        Op::Lrn {
            size,
            alpha,
            beta,
            k,
            channel_groups,
        } => {
            let (size, g) = (u(size), u(channel_groups));
            let (alpha, beta, k) = (f(alpha), f(beta), f(k));
            quote!(::alexnet::ir::Op::Lrn { size: #size, alpha: #alpha, beta: #beta, k: #k, channel_groups: #g })
        }
        Op::Dropout { p } => {
            let p = f(p);
            quote!(::alexnet::ir::Op::Dropout { p: #p })
        }
        Op::Fc { out } => {
            let out = u(out);
            quote!(::alexnet::ir::Op::Fc { out: #out })
        }
        Op::Softmax => quote!(::alexnet::ir::Op::Softmax),
    }
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

/// The kernels' launch table as a constant expression.
fn kernel_launches(cuda: &crate::cuda::CudaPlan) -> TokenStream {
    let rows = cuda.kernels.iter().map(|k| {
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
        quote! {
            ::alexnet::ir::KernelLaunch {
                layer: #layer,
                name: ::std::borrow::Cow::Borrowed(#name),
                block: #block,
                x_per_image: #xpi,
                x_per_block: #xpb,
                x_fixed: #xf,
                grid_y: #gy,
                grid_z: #gz,
            }
        }
    });
    quote!(&[#(#rows),*])
}

/// The `Plan` as a constant expression.
pub fn plan_tokens(plan: &Plan) -> TokenStream {
    let name = plan.name.as_ref();
    let input = shape_tokens(plan.input);
    let split = usize_lit(plan.split);
    // Generated networks are whole; tower plans are made at run time by `Plan::tower`.
    debug_assert!(plan.tower.is_none());
    let layers = plan.layers.iter().map(layer_tokens);
    quote! {
        ::alexnet::ir::Plan {
            name: ::std::borrow::Cow::Borrowed(#name),
            input: #input,
            split: #split,
            layers: ::std::borrow::Cow::Borrowed(&[#(#layers),*]),
            tower: ::std::option::Option::None,
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
    let (cuda_source, cuda_kernels, cuda_training) = match plan {
        Some(p) => {
            let cuda = crate::cuda::render(p);
            let training = crate::cuda_train::render(p);
            (
                Literal::string(&cuda.source),
                kernel_launches(&cuda),
                Literal::string(&training.source),
            )
        }
        None => (Literal::string(""), quote!(&[]), Literal::string("")),
    };
    let (param_count, macs, layer_table, plan_body, forward_body) = match plan {
        Some(p) => {
            let pt = plan_tokens(p);
            (
                usize_lit(p.param_count()),
                Literal::u64_unsuffixed(p.macs()),
                layer_infos(p),
                quote! {
                    static PLAN: ::alexnet::ir::Plan = #pt;
                    &PLAN
                },
                quote!(#rt::Batch::from_tensor(self.model.forward(input.as_tensor())?)),
            )
        }
        None => {
            let never = quote!(::core::unreachable!(
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
        #vis struct #name<B: #rt::Backend = #rt::Cpu> {
            model: #rt::Model<B>,
        }

        impl<B: #rt::Backend> ::core::fmt::Debug for #name<B> {
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

        impl<B: #rt::Backend> #name<B> {
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
