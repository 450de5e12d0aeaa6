//! Validation and shape inference: a [`NetworkDef`] becomes a [`Plan`], or a list of
//! spanned errors.
//!
//! Errors accumulate, so several mistakes are reported together. A layer whose output
//! shape cannot be known stops shape inference for the layers after it (their argument
//! errors are still reported), so one mistake gives one error, not a cascade.

use std::collections::HashMap;

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::Ident;

use alexnet_core::ir::{Layer, Op, Plan, Shape};
use alexnet_core::layers::dsl::did_you_mean;
use alexnet_core::layers::{
    self, ArgType, Culprit, Default, Keyword, Naming, ShapeContext, MAX_ELEMENTS,
};

use crate::ast::{LayerDef, NetworkDef, Value};

/// What checking a network produced: the plan when there was no error, and otherwise the
/// errors with as much of the shape as could be inferred (for the stub emitted beside them).
pub struct Checked {
    pub plan: Option<Plan>,
    pub errors: Option<syn::Error>,
    /// The per-image output shape, when every layer's shape was inferred.
    pub output: Option<Shape>,
    pub input: Option<Shape>,
    /// The output shape that the last layers alone determine, when inference stopped
    /// before them: the last fully connected layer's (its output does not depend on its
    /// input's shape) through the layers after it. What the stub's `forward` returns, so
    /// that code calling it needs no type annotation.
    pub tail_output: Option<Shape>,
}

/// The networks of one invocation that reuse an earlier network's name (`names` in
/// declaration order): for each, `None`, or an error spanned on the repeated name that
/// says which network (by its position) declared it first. One error: a second one
/// spanned on the first name would read as a second mistake.
pub fn repeated_names(names: &[&Ident]) -> Vec<Option<syn::Error>> {
    let mut first: HashMap<String, usize> = HashMap::new();
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = name.to_string();
            match first.get(&n) {
                Some(&j) => Some(syn::Error::new(
                    name.span(),
                    format!(
                        "network `{n}` is already declared (network {} of this `network!`); \
                         give each network its own name",
                        j + 1
                    ),
                )),
                None => {
                    first.insert(n, i);
                    None
                }
            }
        })
        .collect()
}

#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, tokens: impl ToTokens, msg: impl std::fmt::Display) {
        let e = syn::Error::new_spanned(tokens, msg);
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
}

/// A layer after its arguments were bound: the op (if its arguments were valid) and the
/// tokens of each given argument, for carets.
struct Bound<'a> {
    def: &'a LayerDef,
    name: String,
    op: Option<Op>,
    arg_tokens: HashMap<&'static str, TokenStream>,
}

impl Bound<'_> {
    fn culprit_tokens(&self, c: Culprit) -> TokenStream {
        match c {
            Culprit::Arg(a) => self
                .arg_tokens
                .get(a)
                .cloned()
                .unwrap_or_else(|| self.def.tokens.clone()),
            Culprit::Layer => self.def.tokens.clone(),
        }
    }
}

pub fn check(def: &NetworkDef) -> Checked {
    let mut errors = Errors::default();
    let net = def.name.to_string();

    let input = input_shape(def, &mut errors);
    let split = match &def.split {
        None => 1,
        Some(lit) => match lit.base10_parse::<u64>() {
            Ok(2) => 2,
            _ => {
                errors.push(
                    lit,
                    format!("`{net}`: only `split 2`, the paper's two towers, is supported"),
                );
                1
            }
        },
    };
    if def.layers.is_empty() {
        errors.push(
            delimiters(proc_macro2::Delimiter::Brace, def.brace.span),
            format!("network `{net}` has no layers: add at least one, e.g. `{{ fc(10) }}`"),
        );
    }

    let names = layer_names(def);
    let mut bound = Vec::with_capacity(def.layers.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, l) in def.layers.iter().enumerate() {
        let name = names[i].clone();
        if let Some(&first) = seen.get(&name) {
            let what = if l.name.is_some() {
                ""
            } else {
                " (the default name of this layer; name it, e.g. `other: ...`)"
            };
            let t = l
                .name
                .as_ref()
                .map_or(l.tokens.clone(), |n| n.to_token_stream());
            errors.push(
                t,
                format!(
                    "layer name `{name}` is already used by layer {} (`{}`){what}",
                    first + 1,
                    def.layers[first].kind
                ),
            );
        } else {
            seen.insert(name.clone(), i);
        }
        bound.push(bind(l, name, &mut errors));
    }

    // A layer that must be last (softmax) is.
    for (i, b) in bound.iter().enumerate() {
        if let (Some(op), Some(next)) = (b.op, bound.get(i + 1)) {
            if op.kind().must_be_last() {
                errors.push(
                    &b.def.tokens,
                    format!(
                        "{}: {} must be the last layer, but `{}` follows it",
                        b.name,
                        op.keyword(),
                        next.name
                    ),
                );
            }
        }
    }

    // Shape inference, as far as shapes are known.
    let mut layers = Vec::with_capacity(bound.len());
    let mut shape = input;
    let mut from = "the input".to_string();
    let mut after_fc: Option<String> = None;
    for b in &bound {
        let (Some(mut op), Some(inp)) = (b.op, shape) else {
            shape = None;
            continue;
        };
        match infer(&mut op, inp, &from, split, after_fc.as_deref()) {
            Ok(out) => {
                layers.push(Layer {
                    name: b.name.clone().into(),
                    op,
                    input: inp,
                    output: out,
                });
                shape = Some(out);
            }
            Err(e) => {
                errors.push(
                    b.culprit_tokens(e.culprit),
                    format!("{}: {}", b.name, e.message),
                );
                shape = None;
            }
        }
        if op.kind().flattens() {
            after_fc.get_or_insert_with(|| b.name.clone());
        }
        from = format!("`{}`", b.name);
    }

    let output = shape.filter(|_| layers.len() == bound.len() && !bound.is_empty());
    let tail_output = match output {
        Some(_) => output,
        None => tail_output(&bound, split),
    };
    let plan = match (&errors.0, input, output) {
        (None, Some(input), Some(_)) => Some(Plan {
            name: net.into(),
            input,
            split,
            layers: layers.into(),
            tower: None,
            generated: None,
        }),
        _ => None,
    };
    Checked {
        plan,
        errors: errors.0,
        output,
        input,
        tail_output,
    }
}

/// See [`Checked::tail_output`]. The fully connected layer is given a 1-element input per
/// tower; every layer from it on must have valid arguments and infer.
fn tail_output(bound: &[Bound], split: usize) -> Option<Shape> {
    let last_fc = bound
        .iter()
        .rposition(|b| b.op.is_some_and(|op| op.kind().flattens()))?;
    let mut shape = Shape::new(split, 1, 1);
    for (i, b) in bound.iter().enumerate().skip(last_fc) {
        let mut op = b.op?;
        let after_fc = (i > last_fc).then_some(bound[last_fc].name.as_str());
        shape = infer(&mut op, shape, "the tail", split, after_fc).ok()?;
    }
    Some(shape)
}

/// An empty delimited group carrying a delimiter's span, so that an error can point at a
/// pair of brackets (`{}` of an empty network, `()` of `relu()`).
fn delimiters(
    delimiter: proc_macro2::Delimiter,
    span: proc_macro2::extra::DelimSpan,
) -> TokenStream {
    let mut group = proc_macro2::Group::new(delimiter, TokenStream::new());
    group.set_span(span.join());
    group.into_token_stream()
}

fn input_shape(def: &NetworkDef, errors: &mut Errors) -> Option<Shape> {
    let what = ["channels", "height", "width"];
    let mut dims = [0usize; 3];
    let mut ok = true;
    for (i, lit) in def.dims.iter().enumerate() {
        match lit.base10_parse::<u64>() {
            Ok(0) => {
                errors.push(
                    lit,
                    format!("`{}`: input {} must be at least 1", def.name, what[i]),
                );
                ok = false;
            }
            Ok(v) if v as u128 <= MAX_ELEMENTS => dims[i] = v as usize,
            _ => {
                errors.push(
                    lit,
                    format!(
                        "`{}`: input {} `{lit}` overflows the 2^31 limit",
                        def.name, what[i]
                    ),
                );
                ok = false;
            }
        }
    }
    if ok && (dims[0] as u128) * (dims[1] as u128) * (dims[2] as u128) > MAX_ELEMENTS {
        errors.push(
            &def.dims_tokens,
            format!(
                "`{}`: input {}x{}x{} overflows the 2^31 element limit per image",
                def.name, dims[0], dims[1], dims[2]
            ),
        );
        ok = false;
    }
    ok.then(|| Shape::new(dims[0], dims[1], dims[2]))
}

/// Layer names: the user's, or defaults from each keyword's [`Naming`]: learned layers
/// counted as the paper counts them (conv1..conv5, fc6..fc8), other layers numbered after
/// the last learned layer (`relu1`, `lrn1`, `pool1`), dropout after the learned layer it
/// feeds (`drop6` before `fc6`). A repeated default gets a suffix (`relu1_2`); an unknown
/// keyword (an error reported elsewhere) is numbered like a ReLU.
pub fn layer_names(def: &NetworkDef) -> Vec<String> {
    let naming = |l: &LayerDef| layers::keyword(&l.kind.to_string()).map(|k: &Keyword| k.naming);
    let learned = |l: &LayerDef| matches!(naming(l), Some(Naming::Learned(_)));
    let mut count = 0;
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut names = Vec::with_capacity(def.layers.len());
    for (i, l) in def.layers.iter().enumerate() {
        if learned(l) {
            count += 1;
        }
        let base = match naming(l) {
            Some(Naming::Learned(p)) | Some(Naming::AfterLearned(p)) => format!("{p}{count}"),
            Some(Naming::BeforeLearned(p)) => {
                let next = if def.layers[i..].iter().any(learned) {
                    count + 1
                } else {
                    count
                };
                format!("{p}{next}")
            }
            Some(Naming::Fixed(name)) => name.to_string(),
            None => format!("{}{count}", l.kind.to_string().to_ascii_lowercase()),
        };
        let name = match &l.name {
            Some(n) => n.to_string(),
            None => {
                let k = used.entry(base.clone()).or_insert(0);
                *k += 1;
                if *k == 1 {
                    base
                } else {
                    format!("{base}_{k}")
                }
            }
        };
        names.push(name);
    }
    names
}

/// Binds a layer's arguments to its signature and type-checks them.
fn bind<'a>(l: &'a LayerDef, name: String, errors: &mut Errors) -> Bound<'a> {
    let kw = l.kind.to_string();
    let mut bound = Bound {
        def: l,
        name: name.clone(),
        op: None,
        arg_tokens: HashMap::new(),
    };
    let Some(keyword) = layers::keyword(&kw) else {
        let hint = match did_you_mean(&kw, layers::keywords().map(|k| k.name)) {
            Some(s) => format!("; did you mean `{s}`?"),
            None => {
                let all: Vec<&str> = layers::keywords().map(|k| k.name).collect();
                format!(" (layers are: {})", all.join(", "))
            }
        };
        errors.push(&l.kind, format!("unknown layer `{kw}`{hint}"));
        return bound;
    };
    let sig = keyword.signature;
    if sig.is_empty() {
        if let Some(p) = &l.paren {
            let t = delimiters(proc_macro2::Delimiter::Parenthesis, p.span);
            errors.push(t, format!("{name}: `{kw}` takes no arguments"));
            return bound;
        }
    }
    let mut values: Vec<Option<f64>> = vec![None; sig.len()];
    let mut ok = true;
    let mut positional = sig
        .iter()
        .enumerate()
        .filter(|(_, a)| a.positional)
        .map(|(i, _)| i);
    let mut saw_named = false;
    for arg in &l.args {
        let slot = match &arg.name {
            None => {
                if saw_named {
                    errors.push(
                        &arg.tokens,
                        format!(
                            "{name}: positional argument after a named one; write `{}`",
                            keyword.usage()
                        ),
                    );
                    ok = false;
                    continue;
                }
                match positional.next() {
                    Some(i) => i,
                    None => {
                        let n = sig.iter().filter(|a| a.positional).count();
                        errors.push(
                            &arg.tokens,
                            format!("{name}: too many arguments: `{kw}` takes {n} positional argument{}; write `{}`", if n == 1 { "" } else { "s" }, keyword.usage()),
                        );
                        ok = false;
                        continue;
                    }
                }
            }
            Some(id) => {
                saw_named = true;
                let n = id.to_string();
                match sig.iter().position(|a| a.name == n) {
                    Some(i) => i,
                    None => {
                        let hint = match did_you_mean(&n, sig.iter().map(|a| a.name)) {
                            Some(s) => format!("did you mean `{s}`? "),
                            None => String::new(),
                        };
                        errors.push(
                            id,
                            format!(
                                "{name}: unknown argument `{n}` for `{kw}`; {hint}`{kw}` takes: {}",
                                keyword.usage()
                            ),
                        );
                        ok = false;
                        continue;
                    }
                }
            }
        };
        let spec = sig[slot];
        if bound.arg_tokens.contains_key(spec.name) {
            errors.push(
                &arg.tokens,
                format!("{name}: argument `{}` given twice", spec.name),
            );
            ok = false;
            continue;
        }
        bound.arg_tokens.insert(spec.name, arg.tokens.clone());
        match typed(spec.name, spec.ty, arg.literal(), &arg.written()) {
            Ok(v) => values[slot] = Some(v),
            Err(msg) => {
                errors.push(&arg.value, format!("{name}: {msg}"));
                ok = false;
            }
        }
    }
    for (i, spec) in sig.iter().enumerate() {
        if values[i].is_none() && !bound.arg_tokens.contains_key(spec.name) {
            match spec.default {
                Default::Value(d) => values[i] = Some(d),
                // Filled in below, once the argument it copies is known.
                Default::SameAs(_) => {}
                Default::Required => {
                    errors.push(
                        &l.tokens,
                        format!(
                            "{name}: missing argument `{}`; write `{}`",
                            spec.name,
                            keyword.usage()
                        ),
                    );
                    ok = false;
                }
            }
        }
    }
    for (i, spec) in sig.iter().enumerate() {
        if let (None, Default::SameAs(other)) = (values[i], spec.default) {
            values[i] = sig
                .iter()
                .position(|a| a.name == other)
                .and_then(|j| values[j]);
        }
    }
    // Every value is known unless an argument was invalid (then `ok` is false).
    let values: Option<Vec<f64>> = values.into_iter().collect();
    if let (true, Some(op)) = (ok, values.and_then(|v| Op::build(&kw, &v))) {
        match op.kind().check_args() {
            Some((arg, msg)) => errors.push(
                bound.culprit_tokens(Culprit::Arg(arg)),
                format!("{name}: {msg}"),
            ),
            None => bound.op = Some(op),
        }
    }
    bound
}

/// A layer's shape rule, with the checks every kind shares: no image layer after a fully
/// connected one (`after_fc`), and no output beyond the 2^31 elements the kernels index.
fn infer(
    op: &mut Op,
    input: Shape,
    from: &str,
    split: usize,
    after_fc: Option<&str>,
) -> Result<Shape, layers::ShapeError> {
    let cx = ShapeContext { from, split };
    if let (Some(what), Some(fc)) = (op.kind().needs_image(), after_fc) {
        return Err(layers::ShapeError {
            culprit: Culprit::Layer,
            message: format!(
                "{what} after fully connected layer `{fc}`: its input is a {}-vector, not an image ({})",
                input.c,
                cx.input(input)
            ),
        });
    }
    let out = op.kind_mut().infer(input, &cx)?;
    if (out.c as u128) * (out.h as u128) * (out.w as u128) > MAX_ELEMENTS {
        return Err(layers::ShapeError {
            culprit: Culprit::Layer,
            message: format!("output {out} overflows the 2^31 element limit per image"),
        });
    }
    Ok(out)
}

/// Type-checks one argument's value; messages quote the value as `written`.
fn typed(arg: &str, ty: ArgType, v: Result<Value, String>, written: &str) -> Result<f64, String> {
    let v = v.map_err(|why| format!("argument `{arg}` must be a number: {why}"))?;
    match (ty, v) {
        (ArgType::Int { min }, Value::Int(i)) => {
            if i < min {
                Err(format!(
                    "argument `{arg}` must be at least {min}, found `{written}`"
                ))
            } else if i as u128 > MAX_ELEMENTS {
                Err(format!(
                    "argument `{arg}` = {written} overflows the 2^31 limit"
                ))
            } else {
                Ok(i as f64)
            }
        }
        (ArgType::Int { min }, Value::Float(_)) => {
            let kind = if min == 0 {
                "a non-negative integer"
            } else {
                "a positive integer"
            };
            Err(format!(
                "argument `{arg}` must be {kind}, found `{written}`"
            ))
        }
        (
            ArgType::Real {
                min,
                max,
                max_inclusive,
            },
            v,
        ) => {
            let f = match v {
                Value::Int(i) => i as f64,
                Value::Float(f) => f,
            };
            let above = if max_inclusive { f > max } else { f >= max };
            if !(f as f32).is_finite() {
                Err(format!(
                    "argument `{arg}` = {written} does not fit a 32-bit float"
                ))
            } else if f < min || above {
                let close = if max_inclusive { "]" } else { ")" };
                let range = if max == f64::MAX {
                    format!("at least {min}")
                } else {
                    format!("in [{min}, {max}{close}")
                };
                Err(format!("argument `{arg}` = {written} must be {range}"))
            } else {
                Ok(f)
            }
        }
    }
}
