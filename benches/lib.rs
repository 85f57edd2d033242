//! Benchmarks live in `bench_main.rs`.
