//! The command line of alexnet-rs (`cargo run --release --example alexnet -- --help`); it
//! lives in the alexnet-cli crate, whose `run` the tests call in-process.

fn main() -> std::process::ExitCode {
    alexnet_cli::main()
}
