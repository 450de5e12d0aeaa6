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
/// `compile_error!`s spanned at the offending tokens, beside a stub of each network (see
/// [`emit::network`]). A network named like an earlier one of the invocation gets one
/// error, on its name, and no items (they would clash with the first's).
pub fn expand(input: TokenStream) -> TokenStream {
    let nets: ast::Networks = match syn::parse2(input) {
        Ok(n) => n,
        Err(e) => return e.to_compile_error(),
    };
    let names: Vec<_> = nets.0.iter().map(|def| &def.name).collect();
    let repeated = check::repeated_names(&names);
    let mut out = TokenStream::new();
    for (def, repeated) in nets.0.iter().zip(repeated) {
        let checked = check::check(def);
        if let Some(e) = repeated {
            out.extend(e.to_compile_error());
            if let Some(e) = &checked.errors {
                out.extend(e.to_compile_error());
            }
            continue;
        }
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
            checked.tail_output,
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
    fn messages_quote_values_as_written() {
        let err =
            |layers: &str| plan_from_str(&format!("N<3, 32, 32> {{ {layers} }}")).unwrap_err();
        let cases = [
            (
                "conv(16, 5.0)",
                "argument `k` must be a positive integer, found `5.0`",
            ),
            (
                "conv(16, 3, pad = -1)",
                "must be a non-negative integer, found `-1`",
            ),
            ("conv(16, -5.0)", "found `-5.0`"),
            ("maxpool(2f32)", "must be a positive integer, found `2f32`"),
            ("conv(0, 3)", "argument `out` must be at least 1, found `0`"),
            (
                "fc(0x1_0000_0000)",
                "argument `out` = 0x1_0000_0000 overflows",
            ),
            ("dropout(5u8)", "argument `p` = 5u8 must be in [0, 1)"),
            ("dropout(1.0)", "argument `p` = 1.0 must be in [0, 1)"),
            ("dropout(-0.5)", "argument `p` = -0.5 must be in [0, 1)"),
            (
                "lrn(5, alpha = 1e39)",
                "argument `alpha` = 1e39 does not fit a 32-bit float",
            ),
            (
                "fc(99999999999999999999)",
                "`99999999999999999999` is too large",
            ),
            ("fc(-x)", "`-x` is not a number"),
        ];
        for (layers, want) in cases {
            let got = err(layers);
            assert!(got.contains(want), "{layers}: {got}");
        }
        // Suffixes that keep the kind are accepted, as in Rust.
        let plan = plan_from_str("N<3, 32, 32> { conv(16u32, 3) dropout(0.5f32) fc(10usize) }");
        assert_eq!(
            plan.unwrap().layer("fc2").unwrap().output.to_array(),
            [10, 1, 1]
        );
    }

    #[test]
    fn a_repeated_network_name_is_one_error_on_the_second_name() {
        let src = "pub Net<3, 8, 8> { fc(10) } Other<3, 8, 8> { fc(2) } pub Net<3, 4, 4> { fc(3) }";
        let out = expand(src.parse().unwrap()).to_string();
        let errors: Vec<_> = out.split("compile_error ! ").skip(1).collect();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with(
            "{ \"network `Net` is already declared (network 1 of this `network!`); \
             give each network its own name\" }"
        ));
        // The first `Net` and `Other` are emitted; the second `Net` is not.
        assert_eq!(out.matches("struct Net <").count(), 1);
        assert_eq!(out.matches("struct Other <").count(), 1);
        assert!(!out.contains("[3 , 4 , 4]"));

        let nets: ast::Networks = syn::parse_str(src).unwrap();
        let names: Vec<_> = nets.0.iter().map(|d| &d.name).collect();
        let repeated = check::repeated_names(&names);
        assert!(repeated[0].is_none() && repeated[1].is_none());
        let e = repeated[2].as_ref().unwrap();
        assert!(e.to_string().contains("network 1"), "{e}");
    }

    #[test]
    fn a_repeated_network_still_has_its_own_mistakes_reported() {
        let src = "Net<3, 8, 8> { fc(10) } Net<3, 8, 8> { fc(10) relu(1) }";
        let out = expand(src.parse().unwrap()).to_string();
        let errors: Vec<_> = out.split("compile_error ! ").skip(1).collect();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].contains("is already declared"), "{}", errors[0]);
        assert!(errors[1].contains("takes no arguments"), "{}", errors[1]);
        assert_eq!(out.matches("struct Net <").count(), 1);
    }

    #[test]
    fn the_stub_returns_what_the_last_fc_layer_makes() {
        let check = |src: &str| {
            let nets: ast::Networks = syn::parse_str(src).unwrap();
            let c = check::check(&nets.0[0]);
            assert!(c.errors.is_some() && c.plan.is_none(), "{src}");
            (
                c.output.map(|s| s.to_array()),
                c.tail_output.map(|s| s.to_array()),
            )
        };
        // Inference stops at the pool; the fc layer and the softmax after it still fix the
        // output.
        assert_eq!(
            check("N<3, 32, 32> { conv(16, 3) maxpool(64) fc(10) relu dropout softmax }"),
            (None, Some([10, 1, 1]))
        );
        assert_eq!(
            check("N<3, 32, 32> split 2 { conv(16, 3) maxpool(64) fc(10) }"),
            (None, Some([10, 1, 1]))
        );
        // Unknown after a broken layer at the tail, or with no fc layer at all.
        assert_eq!(
            check("N<3, 32, 32> { maxpool(64) fc(10) relu(2) }"),
            (None, None)
        );
        assert_eq!(
            check("N<3, 32, 32> { maxpool(64) fc(10) conv(3, 1) }"),
            (None, None)
        );
        assert_eq!(
            check("N<3, 32, 32> { fc(10) maxpool(64) relu }"),
            (None, None)
        );
        assert_eq!(check("N<3, 32, 32> { conv(16, 40) relu }"), (None, None));
        // Known outright when inference reached the end despite an error.
        assert_eq!(
            check("N<3, 8, 8> { fc(10) softmax fc(3) }"),
            (Some([3, 1, 1]), Some([3, 1, 1]))
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
