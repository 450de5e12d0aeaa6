//! `network!`: parses a network written in the DSL, infers and checks every layer's shape
//! at compile time, and generates a typed Rust network. All the logic lives in
//! `alexnet-codegen`; this crate only converts between `proc_macro` and `proc_macro2`.

use proc_macro::TokenStream;

/// Declares one or more networks. See the `alexnet` crate and the README for the grammar.
///
/// ```text
/// alexnet::network! {
///     /// A small net.
///     pub Small<3, 32, 32> {
///         conv(16, 5, pad = 2) relu maxpool(2) fc(10) softmax
///     }
/// }
/// ```
#[proc_macro]
pub fn network(input: TokenStream) -> TokenStream {
    alexnet_codegen::expand(input.into()).into()
}
