//! One place per layer kind: its signature (arguments, defaults, types), how its arguments
//! become an [`Op`], and its shape rule with the errors that rule can raise.

use crate::ir::{Op, Shape};

/// The layer keywords of the DSL, in the order the README lists them.
pub const KEYWORDS: &[&str] = &[
    "conv", "relu", "maxpool", "avgpool", "lrn", "dropout", "fc", "softmax",
];

/// The type an argument must have.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ArgType {
    /// An integer >= the bound.
    Int { min: u64 },
    /// A real number (integers allowed) in `[min, max)` or `[min, max]`.
    Real {
        min: f64,
        max: f64,
        max_inclusive: bool,
    },
}

/// What an argument that is not given takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Default {
    /// The argument must be given.
    Required,
    Value(f64),
    /// The value of another argument (a pool's stride is its kernel size).
    SameAs(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct ArgSpec {
    pub name: &'static str,
    pub ty: ArgType,
    pub default: Default,
    /// Positional arguments come first, in order; every argument may also be named.
    pub positional: bool,
}

const fn int(name: &'static str, min: u64, default: Default, positional: bool) -> ArgSpec {
    ArgSpec {
        name,
        ty: ArgType::Int { min },
        default,
        positional,
    }
}

const fn real(name: &'static str, min: f64, max: f64, default: f64) -> ArgSpec {
    ArgSpec {
        name,
        ty: ArgType::Real {
            min,
            max,
            max_inclusive: true,
        },
        default: Default::Value(default),
        positional: false,
    }
}

const CONV: &[ArgSpec] = &[
    int("out", 1, Default::Required, true),
    int("k", 1, Default::Required, true),
    int("stride", 1, Default::Value(1.0), false),
    int("pad", 0, Default::Value(0.0), false),
    int("groups", 1, Default::Value(1.0), false),
];
/// Pool stride defaults to the kernel size (non-overlapping), as in PyTorch.
const POOL: &[ArgSpec] = &[
    int("k", 1, Default::Required, true),
    int("stride", 1, Default::SameAs("k"), false),
];
/// The paper's constants (section 3.3): n = 5, alpha = 1e-4, beta = 0.75, k = 2. With the
/// PyTorch/ONNX/Caffe convention used here, alpha is divided by `size`.
const LRN: &[ArgSpec] = &[
    int("size", 1, Default::Required, true),
    real("alpha", 0.0, f64::MAX, 1e-4),
    real("beta", 0.0, f64::MAX, 0.75),
    real("k", 0.0, f64::MAX, 2.0),
];
const DROPOUT: &[ArgSpec] = &[ArgSpec {
    name: "p",
    ty: ArgType::Real {
        min: 0.0,
        max: 1.0,
        max_inclusive: false,
    },
    default: Default::Value(0.5),
    positional: true,
}];
const FC: &[ArgSpec] = &[int("out", 1, Default::Required, true)];

/// The arguments a layer keyword takes; `None` for an unknown keyword.
pub fn signature(keyword: &str) -> Option<&'static [ArgSpec]> {
    Some(match keyword {
        "conv" => CONV,
        "maxpool" | "avgpool" => POOL,
        "lrn" => LRN,
        "dropout" => DROPOUT,
        "fc" => FC,
        "relu" | "softmax" => &[],
        _ => return None,
    })
}

/// How a layer is written, for error messages: `conv(out, k, stride = 1, pad = 0, groups = 1)`.
pub fn usage(keyword: &str) -> String {
    let Some(sig) = signature(keyword) else {
        return keyword.to_string();
    };
    if sig.is_empty() {
        return keyword.to_string();
    }
    let args: Vec<String> = sig
        .iter()
        .map(|a| match a.default {
            Default::Required => a.name.to_string(),
            Default::Value(d) => format!("{} = {d}", a.name),
            Default::SameAs(other) => format!("{} = {other}", a.name),
        })
        .collect();
    format!("{keyword}({})", args.join(", "))
}

/// Builds the operation from the argument values, in signature order, defaults filled in.
pub fn build(keyword: &str, v: &[f64]) -> Op {
    let u = |i: usize| v[i] as usize;
    match keyword {
        "conv" => Op::Conv {
            out: u(0),
            k: u(1),
            stride: u(2),
            pad: u(3),
            groups: u(4),
        },
        "maxpool" | "avgpool" => {
            let stride = u(1);
            if keyword == "maxpool" {
                Op::MaxPool { k: u(0), stride }
            } else {
                Op::AvgPool { k: u(0), stride }
            }
        }
        "lrn" => Op::Lrn {
            size: u(0),
            alpha: v[1] as f32,
            beta: v[2] as f32,
            k: v[3] as f32,
            channel_groups: 1,
        },
        "dropout" => Op::Dropout { p: v[0] as f32 },
        "fc" => Op::Fc { out: u(0) },
        "relu" => Op::Relu,
        "softmax" => Op::Softmax,
        other => unreachable!("build called for unknown layer `{other}`"),
    }
}

/// Rules on a layer's own argument values (no shapes involved), checked with the
/// arguments so they are reported even when shape inference stopped earlier. Returns the
/// offending argument and the message.
pub fn check_args(op: &Op) -> Option<(&'static str, String)> {
    match *op {
        Op::Lrn { size, .. } if size % 2 == 0 => Some((
            "size",
            format!("size {size} must be odd, so that the window is centred on its channel"),
        )),
        _ => None,
    }
}

/// Which argument a shape error is about, so that the caret lands on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Culprit {
    Layer,
    Arg(&'static str),
}

/// A shape error: the message (without the layer-name prefix) and where it points.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeError {
    pub culprit: Culprit,
    pub message: String,
}

fn err(culprit: Culprit, message: String) -> ShapeError {
    ShapeError { culprit, message }
}

/// Elements per image or per tensor above this are refused: generated kernels index with
/// 32-bit integers.
pub const MAX_ELEMENTS: u128 = i32::MAX as u128;

/// The shape rule of each layer kind. `from` describes where the input comes from, for
/// messages: `"input 256x6x6 from pool2"`. `split` is the number of towers.
pub fn infer(
    op: &mut Op,
    input: Shape,
    from: &str,
    split: usize,
    after_fc: Option<&str>,
) -> Result<Shape, ShapeError> {
    let ctx = format!("input {input} from {from}");
    let spatial = |what: &str| -> Result<(), ShapeError> {
        match after_fc {
            Some(fc) => Err(err(
                Culprit::Layer,
                format!("{what} after fully connected layer `{fc}`: its input is a {}-vector, not an image ({ctx})", input.c),
            )),
            None => Ok(()),
        }
    };
    let out = match *op {
        Op::Conv {
            out,
            k,
            stride,
            pad,
            groups,
        } => {
            spatial("convolution")?;
            window(input, k, stride, pad, &ctx)?;
            if !input.c.is_multiple_of(groups) {
                return Err(err(
                    Culprit::Arg("groups"),
                    format!(
                        "groups {groups} does not divide the {} input channels ({ctx})",
                        input.c
                    ),
                ));
            }
            if out % groups != 0 {
                return Err(err(
                    Culprit::Arg("groups"),
                    format!("groups {groups} does not divide the {out} output channels"),
                ));
            }
            if split > 1 {
                if out % split != 0 {
                    return Err(err(
                        Culprit::Arg("out"),
                        format!(
                            "{out} output channels cannot be split evenly between {split} towers"
                        ),
                    ));
                }
                if groups != 1 && groups % split != 0 {
                    return Err(err(
                        Culprit::Arg("groups"),
                        format!("groups {groups} would straddle the {split} towers: with `split {split}` groups must be 1 (read both towers) or a multiple of {split}"),
                    ));
                }
            }
            let param = (out as u128) * (input.c / groups) as u128 * (k as u128) * (k as u128);
            if param > MAX_ELEMENTS {
                return Err(err(
                    Culprit::Layer,
                    format!("weight of {param} elements overflows the 2^31 element limit"),
                ));
            }
            Shape::new(
                out,
                (input.h + 2 * pad - k) / stride + 1,
                (input.w + 2 * pad - k) / stride + 1,
            )
        }
        Op::MaxPool { k, stride } | Op::AvgPool { k, stride } => {
            spatial("pooling")?;
            window(input, k, stride, 0, &ctx)?;
            Shape::new(
                input.c,
                (input.h - k) / stride + 1,
                (input.w - k) / stride + 1,
            )
        }
        Op::Lrn {
            size,
            ref mut channel_groups,
            ..
        } => {
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
            *channel_groups = split.max(1);
            input
        }
        Op::Fc { out } => {
            if split > 1 && out % split != 0 {
                return Err(err(
                    Culprit::Arg("out"),
                    format!("{out} outputs cannot be split evenly between {split} towers"),
                ));
            }
            let param = (out as u128) * (input.len() as u128);
            if param > MAX_ELEMENTS {
                return Err(err(
                    Culprit::Layer,
                    format!(
                        "weight of {out}x{} = {param} elements overflows the 2^31 element limit",
                        input.len()
                    ),
                ));
            }
            Shape::new(out, 1, 1)
        }
        Op::Relu | Op::Dropout { .. } | Op::Softmax => input,
    };
    if (out.c as u128) * (out.h as u128) * (out.w as u128) > MAX_ELEMENTS {
        return Err(err(
            Culprit::Layer,
            format!("output {out} overflows the 2^31 element limit per image"),
        ));
    }
    Ok(out)
}

/// The checks shared by convolution and pooling windows.
fn window(input: Shape, k: usize, stride: usize, pad: usize, ctx: &str) -> Result<(), ShapeError> {
    let (ph, pw) = (
        input.h as u128 + 2 * pad as u128,
        input.w as u128 + 2 * pad as u128,
    );
    if k as u128 > ph || k as u128 > pw {
        let padded = if pad > 0 { "padded input" } else { "input" };
        return Err(err(
            Culprit::Arg("k"),
            format!("kernel {k} exceeds {padded} {ph}x{pw} ({ctx})"),
        ));
    }
    if pad >= k {
        return Err(err(
            Culprit::Arg("pad"),
            format!(
                "pad {pad} must be smaller than the kernel {k}: a window would see only padding"
            ),
        ));
    }
    let _ = stride;
    Ok(())
}

/// Levenshtein distance, for "did you mean".
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a small edit distance.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, c), c))
        .filter(|&(d, c)| d <= 2.max(c.len() / 3) && d < c.len())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("maxpol", KEYWORDS.iter().copied()),
            Some("maxpool")
        );
        assert_eq!(did_you_mean("Conv", KEYWORDS.iter().copied()), Some("conv"));
        assert_eq!(did_you_mean("linear", KEYWORDS.iter().copied()), None);
        assert_eq!(
            did_you_mean("strid", ["out", "k", "stride", "pad", "groups"]),
            Some("stride")
        );
    }

    #[test]
    fn alexnet_conv1_shape() {
        let mut op = Op::Conv {
            out: 96,
            k: 11,
            stride: 4,
            pad: 0,
            groups: 1,
        };
        let s = infer(&mut op, Shape::new(3, 227, 227), "input", 2, None).unwrap();
        assert_eq!(s, Shape::new(96, 55, 55));
    }

    #[test]
    fn usage_strings() {
        assert_eq!(
            usage("conv"),
            "conv(out, k, stride = 1, pad = 0, groups = 1)"
        );
        assert_eq!(usage("maxpool"), "maxpool(k, stride = k)");
        assert_eq!(usage("relu"), "relu");
    }
}
