//! The `alexnet` program: [`alexnet_cli::main`], as `cargo run --example alexnet` runs it.

fn main() -> std::process::ExitCode {
    alexnet_cli::main()
}
