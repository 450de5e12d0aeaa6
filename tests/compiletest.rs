//! The DSL's compile-time checks: every shape rule has a compile-fail case whose `.stderr`
//! snapshot shows the error and where its caret lands (tests/ui/fail); tests/ui/pass holds
//! networks that must compile. `TRYBUILD=overwrite cargo test --test compiletest`
//! refreshes the snapshots after a deliberate change of wording.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
