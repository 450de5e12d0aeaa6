//! The command line's own unit tests (examples/alexnet/pictures.rs, data.rs). `cargo test`
//! builds examples as programs, not as tests (the CLI tests run the program), so their
//! modules are compiled into this test crate to run their `#[cfg(test)]` tests.

type AnyError = Box<dyn std::error::Error>;

#[allow(dead_code)]
#[path = "../examples/alexnet/pictures.rs"]
mod pictures;

#[allow(dead_code)]
#[path = "../examples/alexnet/data.rs"]
mod data;
