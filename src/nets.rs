//! Networks used by the example, tests and benches.
