//! The DSL's syntax tree and its parser (syn).
//!
//! ```text
//! networks := network*
//! network  := attribute* visibility? Ident '<' INT ',' INT ',' INT '>' ('split' INT)? '{' layer* '}'
//! layer    := (Ident ':')? Ident ('(' arg (',' arg)* ','? ')')?
//! arg      := value | Ident '=' value
//! value    := '-'? (INT | FLOAT)         (Rust literals: `5u8` is the integer 5, `2f32` a float)
//! ```
//!
//! The parser accepts anything of this shape; whether a layer or an argument exists, has
//! the right type and fits its input is decided by the checker (`check.rs`), which can
//! report many mistakes at once. Only malformed token structure stops parsing here.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{braced, parenthesized, token, Attribute, Expr, Ident, LitInt, Token, Visibility};

/// Every network declared in one `network!` invocation.
pub struct Networks(pub Vec<NetworkDef>);

pub struct NetworkDef {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub name: Ident,
    /// `<C, H, W>`: the per-image input shape.
    pub dims: [LitInt; 3],
    /// The `<...>` tokens, for errors about the input shape as a whole.
    pub dims_tokens: TokenStream,
    /// `split N`, the number of towers.
    pub split: Option<LitInt>,
    pub brace: token::Brace,
    pub layers: Vec<LayerDef>,
}

pub struct LayerDef {
    /// `conv1` in `conv1: conv(...)`.
    pub name: Option<Ident>,
    /// The layer keyword: `conv`, `relu`, ...
    pub kind: Ident,
    pub paren: Option<token::Paren>,
    pub args: Vec<ArgDef>,
    /// All of the layer's tokens, so that an error can underline the whole layer.
    pub tokens: TokenStream,
}

pub struct ArgDef {
    /// `stride` in `stride = 4`; `None` for a positional argument.
    pub name: Option<Ident>,
    pub value: Expr,
    /// The whole argument, `stride = 4`.
    pub tokens: TokenStream,
}

/// A literal argument value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl ArgDef {
    /// The argument's value, or a description of why it is not a number (quoting the
    /// value as written).
    pub fn literal(&self) -> Result<Value, String> {
        literal(&self.value).map_err(|why| format!("`{}` {why}", self.written()))
    }

    /// The value as the user wrote it (`5.0`, `-3`, `5u8`, `1e-4`), for messages: the
    /// parsed number loses the spelling (`5.0` would print as `5`).
    pub fn written(&self) -> String {
        written(&self.value)
    }
}

/// The number `expr` denotes, or why it is not one (`is too large`, `is not a number`).
fn literal(expr: &Expr) -> Result<Value, &'static str> {
    match expr {
        // `2f32` is a float, as in Rust (syn reads it as an integer with a suffix).
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) if matches!(i.suffix(), "f32" | "f64") => i
            .base10_digits()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| "is not a number"),
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => i
            .base10_parse::<u64>()
            .map(Value::Int)
            .map_err(|_| "is too large"),
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Float(f),
            ..
        }) => f
            .base10_parse::<f64>()
            .map(Value::Float)
            .map_err(|_| "is not a number"),
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => match literal(expr)? {
            Value::Int(i) => Ok(Value::Float(-(i as f64))),
            Value::Float(f) => Ok(Value::Float(-f)),
        },
        Expr::Paren(p) => literal(&p.expr),
        Expr::Group(g) => literal(&g.expr),
        _ => Err("is not a number"),
    }
}

/// An expression's text as written: literals keep their spelling and suffix, and a sign
/// or parentheses are not spaced apart from what they apply to (`-5.0`, not `- 5.0`).
fn written(expr: &Expr) -> String {
    match expr {
        Expr::Lit(l) => l.lit.to_token_stream().to_string(),
        Expr::Unary(u) => format!("{}{}", u.op.to_token_stream(), written(&u.expr)),
        Expr::Paren(p) => format!("({})", written(&p.expr)),
        Expr::Group(g) => written(&g.expr),
        other => other.to_token_stream().to_string(),
    }
}

impl Parse for Networks {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut nets = Vec::new();
        while !input.is_empty() {
            nets.push(input.parse()?);
        }
        if nets.is_empty() {
            return Err(input.error(
                "expected a network, e.g. `pub Net<3, 32, 32> { conv(16, 3) relu fc(10) }`",
            ));
        }
        Ok(Networks(nets))
    }
}

impl Parse for NetworkDef {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let name: Ident = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected the network's name, e.g. `pub AlexNet<3, 227, 227> { ... }`",
            )
        })?;
        let lt: Token![<] = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("expected the input shape after `{name}`, e.g. `{name}<3, 227, 227>`"),
            )
        })?;
        let mut dims_tokens = lt.to_token_stream();
        let mut dim = |i: usize| -> syn::Result<LitInt> {
            if i > 0 {
                let comma: Token![,] = input.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "the input shape is `<channels, height, width>`: expected `,`",
                    )
                })?;
                comma.to_tokens(&mut dims_tokens);
            }
            let lit: LitInt = input.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "the input shape is `<channels, height, width>`: expected an integer",
                )
            })?;
            lit.to_tokens(&mut dims_tokens);
            Ok(lit)
        };
        let dims = [dim(0)?, dim(1)?, dim(2)?];
        let gt: Token![>] = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "the input shape is `<channels, height, width>`: expected `>`",
            )
        })?;
        gt.to_tokens(&mut dims_tokens);

        let mut split = None;
        if input.peek(Ident) && !input.peek(token::Brace) {
            let kw: Ident = input.parse()?;
            if kw != "split" {
                return Err(syn::Error::new(
                    kw.span(),
                    format!("expected `split 2` or `{{`, found `{kw}`"),
                ));
            }
            split = Some(input.parse::<LitInt>().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "expected the number of towers after `split`, e.g. `split 2`",
                )
            })?);
        }
        if !input.peek(token::Brace) {
            return Err(input.error(format!("expected `{{` and the layers of `{name}`")));
        }
        let content;
        let brace = braced!(content in input);
        let mut layers = Vec::new();
        while !content.is_empty() {
            layers.push(content.parse()?);
        }
        Ok(NetworkDef {
            attrs,
            vis,
            name,
            dims,
            dims_tokens,
            split,
            brace,
            layers,
        })
    }
}

impl Parse for LayerDef {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut tokens = TokenStream::new();
        if input.peek(Token![,]) || input.peek(Token![;]) {
            return Err(input.error("layers are separated by whitespace, not by `,` or `;`"));
        }
        let first: Ident = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected a layer, such as `conv(96, 11, stride = 4)` or `relu`",
            )
        })?;
        first.to_tokens(&mut tokens);
        let (name, kind) = if input.peek(Token![:]) && !input.peek(Token![::]) {
            let colon: Token![:] = input.parse()?;
            colon.to_tokens(&mut tokens);
            let kind: Ident = input.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    format!("expected the layer after `{first}:`, e.g. `{first}: conv(96, 11)`"),
                )
            })?;
            kind.to_tokens(&mut tokens);
            (Some(first), kind)
        } else {
            (None, first)
        };
        let mut paren = None;
        let mut args = Vec::new();
        if input.peek(token::Paren) {
            let content;
            let p = parenthesized!(content in input);
            let list: Punctuated<Expr, Token![,]> =
                content.parse_terminated(Expr::parse, Token![,])?;
            for expr in list {
                args.push(ArgDef::from_expr(expr));
            }
            p.surround(&mut tokens, |t| {
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        <Token![,]>::default().to_tokens(t);
                    }
                    a.tokens.to_tokens(t);
                }
            });
            paren = Some(p);
        }
        Ok(LayerDef {
            name,
            kind,
            paren,
            args,
            tokens,
        })
    }
}

impl ArgDef {
    fn from_expr(expr: Expr) -> ArgDef {
        let tokens = expr.to_token_stream();
        if let Expr::Assign(assign) = &expr {
            if let Expr::Path(p) = &*assign.left {
                if let Some(ident) = p.path.get_ident() {
                    return ArgDef {
                        name: Some(ident.clone()),
                        value: (*assign.right).clone(),
                        tokens,
                    };
                }
            }
        }
        ArgDef {
            name: None,
            value: expr,
            tokens,
        }
    }
}
