//! One place per layer kind. Each kind is a struct in a file of its own here
//! (`conv.rs`, `fc.rs`, `relu.rs`, `tanh.rs`, `pool.rs`, `lrn.rs`, `dropout.rs`,
//! `softmax.rs`) that says everything the compiler side knows about it: its DSL keywords,
//! arguments and defaults, its shape rule, its parameters, its summary line, how it
//! splits between towers, and its CUDA kernels, forward and backward, from its templates
//! in `kernels_templates/` ([`LayerKind`], [`Kind`]). The runtime's CPU backend adds one
//! file per kind beside it (`alexnet-runtime/src/cpu/<kind>.rs`).
//!
//! [`for_each_layer_kind!`](crate::for_each_layer_kind) is the registry: the one list of
//! kinds, from which [`Op`], its dispatch to [`LayerKind`], the keyword table and the
//! header table are generated, and with which the runtime generates its CPU dispatch.
//! A new kind is a file here, a file under `cpu/`, its template, and its name in that
//! list; every match over kinds is generated from the list, so none can skip a kind.

mod common;
mod conv;
mod dropout;
pub mod dsl;
mod fc;
mod kind;
mod lrn;
mod pool;
mod relu;
mod softmax;
mod tanh;

pub use conv::Conv;
pub use dropout::{dropout_threshold_scale, Dropout};
pub use dsl::{ArgSpec, ArgType, Culprit, Default, Keyword, Naming, ShapeError, MAX_ELEMENTS};
pub use fc::Fc;
pub use kind::{FusedPool, KernelCx, Kind, LayerKind, ShapeContext};
pub use lrn::Lrn;
pub use pool::Pool;
pub use relu::Relu;
pub use softmax::Softmax;
pub use tanh::Tanh;

use crate::kernels::spec::{Header, Template};

/// Calls `$callback!(Conv, Relu, ...)` with every layer kind, in the order the README
/// lists them. Each is a struct of [`crate::layers`] that implements [`Kind`], with the
/// same name as its [`Op`] variant. Adding a kind to this list is the only registration
/// it needs: the `Op` enum and every dispatch over kinds are generated from it (here, and
/// in the runtime's CPU backend).
#[macro_export]
macro_rules! for_each_layer_kind {
    ($callback:ident) => {
        $callback!(Conv, Relu, Tanh, Pool, Lrn, Dropout, Fc, Softmax);
    };
}

macro_rules! registry {
    ($($kind:ident),*) => {
        /// One layer's operation, every hyper-parameter resolved (defaults filled in): one
        /// variant per layer kind, holding the kind's struct. Its derived `Debug` is a
        /// valid Rust expression once the kinds are in scope (every field is an integer, a
        /// float or a bool), which is how the macro embeds a plan.
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub enum Op {
            $($kind($kind)),*
        }

        impl Op {
            /// The layer kind: everything about this layer's operation.
            pub fn kind(&self) -> &dyn LayerKind {
                match self {
                    $(Op::$kind(k) => k),*
                }
            }

            /// The kind, mutable (shape inference completes some operations).
            pub fn kind_mut(&mut self) -> &mut dyn LayerKind {
                match self {
                    $(Op::$kind(k) => k),*
                }
            }

            /// The layer as each of `towers` towers runs it ([`Kind::in_tower`]).
            pub fn in_tower(&self, towers: usize, own: bool) -> Op {
                match self {
                    $(Op::$kind(k) => Op::$kind(k.in_tower(towers, own))),*
                }
            }

            /// The layer of keyword `keyword` from its argument values (signature order,
            /// defaults filled in); `None` for a keyword the DSL does not have.
            pub fn build(keyword: &str, values: &[f64]) -> Option<Op> {
                $(if $kind::KEYWORDS.iter().any(|k| k.name == keyword) {
                    return Some(Op::$kind(<$kind as Kind>::build(keyword, values)));
                })*
                None
            }
        }

        /// The kinds alone, to bring them into scope together (the embedded plans do).
        pub mod kinds {
            pub use super::{$($kind),*};
        }

        $(impl From<$kind> for Op {
            fn from(k: $kind) -> Op {
                Op::$kind(k)
            }
        })*

        /// Every keyword of the DSL, in registry order.
        pub fn keywords() -> impl Iterator<Item = &'static Keyword> {
            [$(<$kind as Kind>::KEYWORDS),*].into_iter().flatten()
        }

        /// The headers the layer kinds bring (the GEMM's are in `kernels::gemm`).
        pub fn headers() -> impl Iterator<Item = &'static Header> {
            [$(<$kind as Kind>::HEADERS),*].into_iter().flatten()
        }

        /// The device function templates of the layer kinds and the kernels they share.
        pub fn templates() -> impl Iterator<Item = &'static Template> {
            [$(<$kind as Kind>::TEMPLATES,)* common::TEMPLATES].into_iter().flatten()
        }
    };
}

for_each_layer_kind!(registry);

/// The keyword `name` of the DSL, if there is one.
pub fn keyword(name: &str) -> Option<&'static Keyword> {
    keywords().find(|k| k.name == name)
}

impl Op {
    /// The DSL keyword of this operation.
    pub fn keyword(&self) -> &'static str {
        self.kind().keyword()
    }

    /// Whether the layer has weights and biases.
    pub fn is_learned(&self) -> bool {
        self.kind().is_learned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Shape;

    #[test]
    fn suggestions() {
        let names = || keywords().map(|k| k.name);
        assert_eq!(dsl::did_you_mean("maxpol", names()), Some("maxpool"));
        assert_eq!(dsl::did_you_mean("Conv", names()), Some("conv"));
        assert_eq!(dsl::did_you_mean("linear", names()), None);
        assert_eq!(
            dsl::did_you_mean("strid", ["out", "k", "stride", "pad", "groups"]),
            Some("stride")
        );
    }

    #[test]
    fn alexnet_conv1_shape() {
        let mut op = Conv {
            out: 96,
            k: 11,
            stride: 4,
            pad: 0,
            groups: 1,
        };
        let cx = ShapeContext {
            from: "the input",
            split: 2,
        };
        let s = op.infer(Shape::new(3, 227, 227), &cx).unwrap();
        assert_eq!(s, Shape::new(96, 55, 55));
    }

    #[test]
    fn usage_strings() {
        let usage = |k: &str| keyword(k).unwrap().usage();
        assert_eq!(
            usage("conv"),
            "conv(out, k, stride = 1, pad = 0, groups = 1)"
        );
        assert_eq!(usage("maxpool"), "maxpool(k, stride = k)");
        assert_eq!(usage("relu"), "relu");
    }

    #[test]
    fn every_keyword_builds_an_op_that_names_it() {
        for k in keywords() {
            let values: Vec<f64> = k
                .signature
                .iter()
                .map(|a| match a.default {
                    Default::Value(v) => v,
                    _ => 1.0,
                })
                .collect();
            let op = Op::build(k.name, &values).unwrap();
            assert_eq!(op.keyword(), k.name);
        }
        assert!(Op::build("linear", &[]).is_none());
    }
}
