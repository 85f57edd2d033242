//! Not written yet (backbones issue).

use criterion::Criterion;

pub(super) fn bench(_c: &mut Criterion) {}
