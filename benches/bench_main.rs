//! Criterion benchmarks of yaware-rs, one group per file in `groups/`.
//!
//! Run them with `cargo xtask bench` (writes `docs/PERFORMANCE.md`) or `cargo xtask bench
//! --quick` for a smoke run; `cargo bench -p yaware-benches -- losses` runs one group.

use criterion::{criterion_group, criterion_main};

mod groups;

criterion_group!(
    benches,
    groups::machine::bench,
    groups::losses::bench,
    groups::optim::bench,
    groups::data::bench,
    groups::backbones::bench,
    groups::train_step::bench
);
criterion_main!(benches);
