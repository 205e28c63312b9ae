//! Benchmarks live in this package's `[[bench]]` targets; run them with
//! `cargo bench -p sd-benches`. Results are recorded in docs/benchmarks.md.
