//! A plan's CUDA: for every stage, the kernels its layer kind generates (forward and
//! training, [`crate::layers::LayerKind`]), the network-level ones (the fused loss, the
//! SGD update) and, in a tower's plan, the exchanges between the towers. Every kernel is a
//! [`KernelSpec`]: a stub that instantiates a template of `kernels_templates/` with every
//! shape and tile size a constant, its launch geometry and its arguments.
//!
//! `network!` generates these at compile time and embeds them in the plan
//! ([`Plan::generated`]); [`kernels`] hands them to a backend, generating them only for a
//! plan built at run time (`plan_from_str`).

pub mod augment;
mod exchange;
mod forward;
pub mod roofline;
mod training;

use std::borrow::Cow;

pub use exchange::exchanges;
pub use forward::{forward, forward_with};
pub use training::{logits_of, training, FINITE_TEMPLATE, LOSS_TEMPLATE, SGD_SLOTS, SGD_TEMPLATE};

use crate::ir::{Plan, Precision, Stage};
use crate::kernels::spec::{inline_headers, Header, KernelSpec, Kernels, Template};
use crate::kernels::tuning::{Choice, Source, Table, DEFAULT_ARCH, TUNED_BATCH};
use crate::kernels::{gemm, mma};
use crate::layers::{self, KernelCx};

/// The headers of the network-level kernels: the loss, the optimiser, the exchanges, the
/// input augmentation.
const HEADERS: &[Header] = &[
    Header {
        name: "loss.cuh",
        text: include_str!("../../../kernels_templates/loss.cuh"),
    },
    Header {
        name: "sgd.cuh",
        text: include_str!("../../../kernels_templates/sgd.cuh"),
    },
    Header {
        name: "finite.cuh",
        text: include_str!("../../../kernels_templates/finite.cuh"),
    },
    Header {
        name: "exchange.cuh",
        text: include_str!("../../../kernels_templates/exchange.cuh"),
    },
    Header {
        name: "augment.cuh",
        text: include_str!("../../../kernels_templates/augment.cuh"),
    },
];

/// Every header of `kernels_templates/`, by name.
pub fn header(name: &str) -> Option<&'static str> {
    headers().find(|h| h.name == name).map(|h| h.text)
}

/// Every header of `kernels_templates/`.
pub fn headers() -> impl Iterator<Item = &'static Header> {
    gemm::HEADERS
        .iter()
        .chain(mma::HEADERS.iter())
        .chain(layers::headers())
        .chain(HEADERS.iter())
}

/// Every device function template.
pub fn templates() -> impl Iterator<Item = &'static Template> {
    gemm::TEMPLATES
        .iter()
        .chain(mma::TEMPLATES.iter())
        .chain(layers::templates())
        .chain([&LOSS_TEMPLATE, &FINITE_TEMPLATE, &SGD_TEMPLATE])
        .chain(exchange::TEMPLATES.iter())
        .chain([&augment::AUGMENT_TEMPLATE])
}

/// A plan's kernels: the ones `network!` generated for it, or, for a plan built at run
/// time (or changed since the macro ran: its fingerprint differs), generated now. Tiled
/// for [`DEFAULT_ARCH`]; [`kernels_for`] for another architecture.
pub fn kernels(plan: &Plan) -> Cow<'static, Kernels> {
    match plan.generated {
        Some(g) if g.fingerprint == plan.fingerprint() => Cow::Borrowed(&g.kernels),
        _ => Cow::Owned(generate(plan)),
    }
}

/// A plan's kernels for a GPU of architecture `arch` (`sm_80`): [`kernels`] for
/// [`DEFAULT_ARCH`], generated from `arch`'s own table for another architecture, and
/// with the heuristic's tiles where `arch` has no table.
pub fn kernels_for(plan: &Plan, arch: &str) -> Cow<'static, Kernels> {
    if arch == DEFAULT_ARCH {
        return kernels(plan);
    }
    Cow::Owned(generate_with(plan, Table::builtin(arch)))
}

/// Generates every kernel of `plan`, tiled by [`DEFAULT_ARCH`]'s table (the heuristic
/// where it has no entry).
pub fn generate(plan: &Plan) -> Kernels {
    generate_with(plan, Table::builtin(DEFAULT_ARCH))
}

/// Generates every kernel of `plan` with the forward GEMMs' tiles from `table` (the
/// heuristic where it has no entry, or with no table).
pub fn generate_with(plan: &Plan, table: Option<&Table>) -> Kernels {
    let f32 = forward_with(plan, Precision::F32, table);
    let f32_training = training(plan, Precision::F32);
    let differing = |p: Precision| {
        let forward = forward_with(plan, p, table)
            .into_iter()
            .filter(|k| !f32.contains(k));
        let training = training(plan, p)
            .into_iter()
            .filter(|k| !f32_training.contains(k));
        forward.chain(training).collect::<Vec<_>>()
    };
    let (tf32, bf16, f16) = (
        differing(Precision::Tf32),
        differing(Precision::Bf16),
        differing(Precision::F16),
    );
    Kernels {
        forward: f32.into(),
        tf32: tf32.into(),
        bf16: bf16.into(),
        f16: f16.into(),
        training: f32_training.into(),
        exchanges: exchanges(plan).into(),
    }
}

/// A stage whose forward GEMM a tuning table can tile (`kernels::tuning`).
#[derive(Clone, Debug)]
pub struct Tunable {
    /// The GEMM's key in a table ([`crate::layers::LayerKind::tuning_key`]).
    pub key: String,
    /// The stage, as timings name it (`conv1+relu`).
    pub label: String,
    /// Each tile worth timing with the stage's forward kernels on it, the heuristic's
    /// first.
    pub candidates: Vec<(Choice, Vec<KernelSpec>)>,
}

/// The stages of `plan` and, for a split network, of its towers' plans whose forward GEMM
/// a tuning table can tile, in `precision`: each key once, in stage order.
pub fn tunable(plan: &Plan, precision: Precision) -> Vec<Tunable> {
    let towers = (0..plan.split).filter_map(|t| plan.tower(t));
    let mut out: Vec<Tunable> = Vec::new();
    for p in std::iter::once(plan.clone()).chain(towers) {
        for stage in p.inference_stages() {
            let layer = &p.layers[stage.layer];
            let kind = layer.op.kind();
            let Some(key) = kind.tuning_key(layer.input, layer.output) else {
                continue;
            };
            if out.iter().any(|t| t.key == key) {
                continue;
            }
            let cx = context(&p, stage, false, precision, None);
            let mut candidates: Vec<(Choice, Vec<KernelSpec>)> = Vec::new();
            for c in kind.candidates(&cx) {
                let specs = kind.forward_kernels(&KernelCx {
                    tuned: Some(c),
                    ..cx
                });
                if !candidates.iter().any(|(_, s)| *s == specs) {
                    candidates.push((c, specs));
                }
            }
            out.push(Tunable {
                key,
                label: p.stage_label(stage),
                candidates,
            });
        }
    }
    out
}

/// Where each tunable stage of `plan` in `precision` takes its tile from on a GPU of
/// architecture `arch` (as [`kernels_for`] generates them): `(stage label, key, source)`.
pub fn tile_sources(
    plan: &Plan,
    precision: Precision,
    arch: &str,
) -> Vec<(String, String, Source)> {
    // As kernels_for: each architecture its own table, none for one without.
    tile_sources_in(plan, precision, Table::builtin(arch), arch)
}

/// [`tile_sources`] with `table` (of architecture `name`) as the one the kernels are
/// generated from.
pub fn tile_sources_in(
    plan: &Plan,
    precision: Precision,
    table: Option<&Table>,
    name: &str,
) -> Vec<(String, String, Source)> {
    plan.inference_stages()
        .into_iter()
        .filter_map(|stage| {
            let layer = &plan.layers[stage.layer];
            let kind = layer.op.kind();
            let key = kind.tuning_key(layer.input, layer.output)?;
            let source = match table.and_then(|t| t.get(&key, precision, TUNED_BATCH)) {
                // A kind that refuses a tile generates the heuristic's kernels: the
                // entry is taken if its kernels differ from those, or if it is the
                // heuristic's own tile (a kind's first candidate).
                Some(e) => {
                    let tuned = context(plan, stage, false, precision, table);
                    let plain = KernelCx {
                        tuned: None,
                        ..tuned
                    };
                    let taken = kind.forward_kernels(&tuned) != kind.forward_kernels(&plain)
                        || kind.candidates(&plain).first() == Some(&e.choice);
                    if taken {
                        Source::Table(name.to_string())
                    } else {
                        Source::Refused(name.to_string())
                    }
                }
                None => Source::Heuristic,
            };
            Some((plan.stage_label(stage), key, source))
        })
        .collect()
}

/// One kernel's translation unit: its stub with the headers it includes inlined.
pub fn source(spec: &KernelSpec) -> String {
    inline_headers(&spec.stub, &header).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (every template's header is registered)",
            spec.name()
        )
    })
}

/// Several kernels in one translation unit (each header once), under a title comment.
pub fn translation_unit(title: &str, specs: &[KernelSpec]) -> String {
    let stubs: String = specs.iter().map(|k| format!("\n{}", k.stub)).collect();
    let body = inline_headers(&stubs, &header)
        .unwrap_or_else(|e| panic!("{e} (every template's header is registered)"));
    format!("{title}{body}")
}

/// `plan`'s forward kernels in one translation unit (what `network!` emits as
/// `CUDA_SOURCE`).
pub fn forward_source(plan: &Plan, kernels: &Kernels) -> String {
    translation_unit(
        &format!(
            "// Generated by alexnet-core for network `{}` (input {}); do not edit.\n\
             // Templates: kernels_templates/. Every size below is a compile-time constant.\n",
            plan.name, plan.input
        ),
        &kernels.forward,
    )
}

/// `plan`'s training kernels in one translation unit (`CUDA_TRAINING_SOURCE`).
pub fn training_source(plan: &Plan, kernels: &Kernels) -> String {
    translation_unit(
        &format!(
            "// Generated by alexnet-core: training kernels of network `{}`; do not edit.\n",
            plan.name
        ),
        &kernels.training,
    )
}

/// What a layer's kernels are told of its stage; its forward GEMM's tile from `table`'s
/// entry at [`TUNED_BATCH`] where it has one.
fn context<'a>(
    plan: &'a Plan,
    stage: Stage,
    needs_dx: bool,
    precision: Precision,
    table: Option<&Table>,
) -> KernelCx<'a> {
    let layer = &plan.layers[stage.layer];
    let tuned = layer
        .op
        .kind()
        .tuning_key(layer.input, layer.output)
        .and_then(|key| table?.get(&key, precision, TUNED_BATCH))
        .map(|e| e.choice);
    KernelCx {
        tuned,
        layer: stage.layer,
        name: &layer.name,
        input: layer.input,
        output: layer.output,
        fused_relu: stage.fused_relu,
        pool: plan.stage_pool(stage).map(|(p, output)| p.fused(output)),
        needs_dx,
        tower: plan.tower,
        precision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameters of each template's device function, as its header declares them.
    fn declared(t: &Template) -> String {
        let text = header(t.header).unwrap_or_else(|| panic!("no header {}", t.header));
        let at = text
            .find(&format!(" {}(", t.function))
            .unwrap_or_else(|| panic!("{} not in {}", t.function, t.header));
        let rest = &text[at + t.function.len() + 2..];
        let params = &rest[..rest.find(')').unwrap()];
        params.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn every_template_declares_the_parameters_its_spec_passes() {
        let mut n = 0;
        for t in templates() {
            let want: Vec<String> = t.params.iter().map(|p| p.ty.c_decl(p.name)).collect();
            assert_eq!(declared(t), want.join(", "), "{}::{}", t.header, t.function);
            n += 1;
        }
        assert!(n >= 18, "{n} templates");
    }

    #[test]
    fn headers_have_unique_names_and_guards() {
        let names: Vec<&str> = headers().map(|h| h.name).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "{n} twice");
        }
        for h in headers() {
            assert!(
                h.text.contains("#ifndef ALEXNET_"),
                "{} has no guard",
                h.name
            );
            assert!(!h.text.contains("{{"), "{} has an unrendered key", h.name);
        }
    }
}
