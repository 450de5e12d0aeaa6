//! The `network!` front end as an ordinary library: parse the DSL with spans ([`ast`]),
//! bind arguments and infer shapes with spanned errors ([`check`], over the layer kinds of
//! `alexnet_core::layers`), and emit the typed Rust of each network with its plan and its
//! generated CUDA kernels embedded ([`emit`]). The proc-macro crate only calls [`expand`];
//! [`plan_from_str`] gives tools and tests the same front end at run time. The IR and the
//! kernel generator are `alexnet-core`, which the runtime uses without `syn`.

pub mod ast;
pub mod check;
pub mod emit;

pub use alexnet_core::{cuda, ir, kernels, layers};

use proc_macro2::TokenStream;

/// Expands the body of a `network!` invocation. Never panics: malformed input becomes
/// `compile_error!`s spanned at the offending tokens, beside a stub of each network.
pub fn expand(input: TokenStream) -> TokenStream {
    let nets: ast::Networks = match syn::parse2(input) {
        Ok(n) => n,
        Err(e) => return e.to_compile_error(),
    };
    let mut out = TokenStream::new();
    for def in &nets.0 {
        let checked = check::check(def);
        if let Some(e) = &checked.errors {
            out.extend(e.to_compile_error());
        }
        if let (Some(plan), Ok(dir)) = (&checked.plan, std::env::var("ALEXNET_DUMP_CUDA")) {
            if let Err(e) = dump_cuda(plan, std::path::Path::new(&dir)) {
                let msg = format!(
                    "ALEXNET_DUMP_CUDA: could not write `{}`'s CUDA to {dir}: {e}",
                    def.name
                );
                out.extend(syn::Error::new(def.name.span(), msg).to_compile_error());
            }
        }
        out.extend(emit::network(
            def,
            checked.plan.as_ref(),
            checked.input,
            checked.output,
        ));
    }
    out
}

/// Writes a network's generated forward CUDA to `<dir>/<Network>.cu` (what
/// `ALEXNET_DUMP_CUDA` does while the macro runs).
pub fn dump_cuda(plan: &ir::Plan, dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.cu", plan.name));
    let kernels = cuda::kernels(plan);
    std::fs::write(&path, cuda::forward_source(plan, &kernels))?;
    Ok(path)
}

/// Parses and checks one network written in the DSL, e.g.
/// `"Net<3, 32, 32> { conv(16, 3) relu fc(10) }"`. Errors are rendered as text.
pub fn plan_from_str(src: &str) -> Result<ir::Plan, String> {
    let tokens: TokenStream = src.parse().map_err(|e| format!("{e}"))?;
    let nets: ast::Networks = syn::parse2(tokens).map_err(|e| e.to_string())?;
    let [def] = nets.0.as_slice() else {
        return Err(format!("expected one network, found {}", nets.0.len()));
    };
    let checked = check::check(def);
    match (checked.errors, checked.plan) {
        (None, Some(plan)) => Ok(plan),
        (Some(e), _) => Err(e
            .into_iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")),
        (None, None) => Err("the network has no plan".into()),
    }
}

/// The paper's AlexNet, for the crate's unit tests.
#[cfg(test)]
pub(crate) const ALEXNET: &str = "AlexNet<3, 227, 227> split 2 {
        conv(96, 11, stride = 4) relu lrn(5, alpha = 1e-4, beta = 0.75, k = 2.0) maxpool(3, stride = 2)
        conv(256, 5, pad = 2, groups = 2) relu lrn(5, alpha = 1e-4, beta = 0.75, k = 2.0) maxpool(3, stride = 2)
        conv(384, 3, pad = 1) relu conv(384, 3, pad = 1, groups = 2) relu conv(256, 3, pad = 1, groups = 2) relu maxpool(3, stride = 2)
        dropout(0.5) fc(4096) relu dropout(0.5) fc(4096) relu fc(1000) softmax
    }";

#[cfg(test)]
mod tests {
    use super::*;
    use alexnet_core::ir::{Lrn, Op};

    #[test]
    fn alexnet_plan() {
        let plan = plan_from_str(ALEXNET).unwrap();
        assert_eq!(plan.param_count(), 60_965_224);
        let shape = |n: &str| plan.layer(n).unwrap().output.to_array();
        assert_eq!(shape("conv1"), [96, 55, 55]);
        assert_eq!(shape("pool1"), [96, 27, 27]);
        assert_eq!(shape("conv2"), [256, 27, 27]);
        assert_eq!(shape("pool2"), [256, 13, 13]);
        assert_eq!(shape("conv5"), [256, 13, 13]);
        assert_eq!(shape("pool5"), [256, 6, 6]);
        assert_eq!(shape("fc6"), [4096, 1, 1]);
        assert_eq!(shape("fc8"), [1000, 1, 1]);
        assert_eq!(plan.macs(), 724_406_816);
        let names: Vec<_> = plan.layers.iter().map(|l| l.name.to_string()).collect();
        assert_eq!(
            names.join(" "),
            "conv1 relu1 lrn1 pool1 conv2 relu2 lrn2 pool2 conv3 relu3 conv4 relu4 conv5 relu5 pool5 \
             drop6 fc6 relu6 drop7 fc7 relu7 fc8 softmax"
        );
        assert!(matches!(
            plan.layer("lrn2").unwrap().op,
            Op::Lrn(Lrn {
                channel_groups: 2,
                ..
            })
        ));
    }

    #[test]
    fn several_errors_are_reported_together() {
        let err = plan_from_str("N<3, 8, 8> { conv(4, 3, strid = 2) relu maxpol(2) fc(10) }")
            .unwrap_err();
        assert!(err.contains("unknown argument `strid`"), "{err}");
        assert!(err.contains("did you mean `stride`"), "{err}");
        assert!(
            err.contains("unknown layer `maxpol`; did you mean `maxpool`?"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 2, "{err}");
    }

    #[test]
    fn shape_error_names_layer_and_source() {
        let err = plan_from_str("N<3, 8, 8> { conv(4, 3) maxpool(2) conv(8, 7) }").unwrap_err();
        assert_eq!(
            err,
            "conv2: kernel 7 exceeds input 3x3 (input 4x3x3 from `pool1`)"
        );
    }

    #[test]
    fn every_op_embeds_as_a_rust_expression() {
        let plan = plan_from_str(
            "N<8, 9, 9> split 2 { conv(8, 3, pad = 1, groups = 2) relu tanh lrn(3, alpha = 1e-5) \
             maxpool(3, stride = 2) avgpool(2) dropout(0.25) fc(4) softmax }",
        )
        .unwrap();
        for l in plan.layers.iter() {
            let tokens = emit::plan_tokens(&plan, None).to_string();
            assert!(!tokens.contains("compile_error"), "{tokens}");
            let text = format!("{:?}", l.op);
            let parsed: syn::Expr = syn::parse_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let _ = parsed;
        }
    }
}
