//! The DSL's vocabulary, kind by kind: a [`Keyword`] is a layer's name in the DSL, its
//! signature (arguments, types, defaults) and how an unnamed layer is named;
//! [`ShapeError`] is what a shape rule reports. The parser with spans
//! (`alexnet-codegen`) binds a layer's arguments against these.

use crate::shape::Shape;

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

/// An integer argument of at least `min`.
pub const fn int(name: &'static str, min: u64, default: Default, positional: bool) -> ArgSpec {
    ArgSpec {
        name,
        ty: ArgType::Int { min },
        default,
        positional,
    }
}

/// A named real argument in `[min, max]`.
pub const fn real(name: &'static str, min: f64, max: f64, default: f64) -> ArgSpec {
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

/// How an unnamed layer is named: learned layers are counted as the paper counts them
/// (conv1..conv5, fc6..fc8), other layers take the number of the last learned layer
/// (`relu1`, `lrn1`, `pool1`), except dropout, which takes the number of the learned layer
/// it feeds (`drop6` before `fc6`). A repeated name gets a suffix (`relu1_2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// `<prefix><n>`; the layer is the `n`th learned layer.
    Learned(&'static str),
    /// `<prefix><n>` with `n` the last learned layer's number.
    AfterLearned(&'static str),
    /// `<prefix><n>` with `n` the number of the next learned layer (the last one's when
    /// none follows).
    BeforeLearned(&'static str),
    /// Always this name.
    Fixed(&'static str),
}

/// A layer keyword of the DSL.
#[derive(Clone, Copy, Debug)]
pub struct Keyword {
    pub name: &'static str,
    /// The arguments, positional ones first.
    pub signature: &'static [ArgSpec],
    pub naming: Naming,
}

impl Keyword {
    /// How the layer is written, for error messages:
    /// `conv(out, k, stride = 1, pad = 0, groups = 1)`.
    pub fn usage(&self) -> String {
        if self.signature.is_empty() {
            return self.name.to_string();
        }
        let args: Vec<String> = self
            .signature
            .iter()
            .map(|a| match a.default {
                Default::Required => a.name.to_string(),
                Default::Value(d) => format!("{} = {d}", a.name),
                Default::SameAs(other) => format!("{} = {other}", a.name),
            })
            .collect();
        format!("{}({})", self.name, args.join(", "))
    }

    /// A layer of this keyword has weights (it counts in the default names).
    pub fn is_learned(&self) -> bool {
        matches!(self.naming, Naming::Learned(_))
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

/// A shape error about `culprit`.
pub fn err(culprit: Culprit, message: String) -> ShapeError {
    ShapeError { culprit, message }
}

/// Elements per image or per tensor above this are refused: generated kernels index with
/// 32-bit integers.
pub const MAX_ELEMENTS: u128 = i32::MAX as u128;

/// The checks shared by convolution and pooling windows (`ctx` describes the input).
pub fn window(input: Shape, k: usize, pad: usize, ctx: &str) -> Result<(), ShapeError> {
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
