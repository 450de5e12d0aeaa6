//! The macro must never panic, whatever tokens it is given: property tests over random
//! token soups built from the DSL's vocabulary and over mutations of a valid network.

use alexnet_codegen::expand;
use proc_macro2::TokenStream;
use proptest::prelude::*;

const ALEXNET: &str = "pub AlexNet<3, 227, 227> split 2 {
    conv(96, 11, stride = 4) relu lrn(5, alpha = 1e-4, beta = 0.75, k = 2.0) maxpool(3, stride = 2)
    conv(256, 5, pad = 2, groups = 2) relu lrn(5) maxpool(3, stride = 2)
    conv3: conv(384, 3, pad = 1) relu conv(384, 3, pad = 1, groups = 2) relu
    conv(256, 3, pad = 1, groups = 2) relu maxpool(3, stride = 2)
    dropout(0.5) fc(4096) relu dropout(0.5) fc(4096) relu fc(1000) softmax
}";

/// Pieces of DSL text, valid and not.
const VOCAB: &[&str] = &[
    "conv",
    "relu",
    "maxpool",
    "avgpool",
    "lrn",
    "dropout",
    "fc",
    "softmax",
    "split",
    "pub",
    "Net",
    "x",
    "stride",
    "pad",
    "groups",
    "k",
    "alpha",
    "beta",
    "p",
    "out",
    "size",
    "0",
    "1",
    "2",
    "3",
    "5",
    "11",
    "96",
    "227",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999999",
    "0.5",
    "1e-4",
    "-1",
    "-0.0",
    "1e308",
    "2.0",
    "=",
    ",",
    ":",
    "::",
    ";",
    "<",
    ">",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    "#",
    "/// doc",
    "'a",
    "\"s\"",
    "+",
    "*",
    "..",
    "_",
];

/// Joins pieces, dropping those that would leave delimiters unbalanced, so that the text
/// tokenises and reaches the parser.
fn balanced(pieces: &[&str]) -> String {
    let mut out = String::new();
    let mut stack = Vec::new();
    for p in pieces {
        match *p {
            "(" | "{" | "[" => stack.push(match *p {
                "(" => ")",
                "{" => "}",
                _ => "]",
            }),
            ")" | "}" | "]" => {
                if stack.last() != Some(p) {
                    continue;
                }
                stack.pop();
            }
            _ => {}
        }
        out.push_str(p);
        out.push(' ');
    }
    while let Some(c) = stack.pop() {
        out.push_str(c);
    }
    out
}

fn expand_str(src: &str) {
    if let Ok(tokens) = src.parse::<TokenStream>() {
        let _ = expand(tokens);
    }
    let _ = alexnet_codegen::plan_from_str(src);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_token_soup(idx in prop::collection::vec(0..VOCAB.len(), 0..60)) {
        let pieces: Vec<&str> = idx.iter().map(|&i| VOCAB[i]).collect();
        expand_str(&balanced(&pieces));
    }

    #[test]
    fn soup_inside_a_network(idx in prop::collection::vec(0..VOCAB.len(), 0..40)) {
        let pieces: Vec<&str> = idx.iter().map(|&i| VOCAB[i]).collect();
        expand_str(&format!("Net<3, 32, 32> {{ {} }}", balanced(&pieces)));
    }

    #[test]
    fn mutated_alexnet(edits in prop::collection::vec((0usize..400, 0usize..3, 0..VOCAB.len()), 1..6)) {
        let mut words: Vec<String> = ALEXNET
            .replace('(', " ( ").replace(')', " ) ").replace(',', " , ").replace('=', " = ")
            .split_whitespace().map(String::from).collect();
        for (pos, kind, v) in edits {
            let pos = pos % (words.len() + 1);
            match kind {
                0 if pos < words.len() => { words.remove(pos); }
                1 => words.insert(pos, VOCAB[v].to_string()),
                _ if pos < words.len() => words[pos] = VOCAB[v].to_string(),
                _ => {}
            }
        }
        let pieces: Vec<&str> = words.iter().map(String::as_str).collect();
        expand_str(&balanced(&pieces));
    }
}

#[test]
fn huge_floats_are_errors() {
    for src in [
        "Net<3, 8, 8> { lrn(1, alpha = 1e300) fc(2) }",
        "Net<3, 8, 8> { lrn(1, k = 1e39) }",
        "Net<3, 8, 8> { dropout(1e300) }",
    ] {
        let err = alexnet_codegen::plan_from_str(src).unwrap_err();
        assert!(
            err.contains("does not fit a 32-bit float") || err.contains("must be in"),
            "{src}: {err}"
        );
        let _ = expand(src.parse().unwrap());
    }
}

#[test]
fn alexnet_expands() {
    let out = expand(ALEXNET.parse().unwrap()).to_string();
    assert!(!out.contains("compile_error"), "{out}");
    assert!(out.contains("PARAM_COUNT : usize = 60965224"), "{out}");
}
