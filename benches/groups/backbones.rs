//! Group `backbones`: the 3D ops (conv3d, pooling, batch norm) and whole networks.

use criterion::Criterion;

mod conv;
mod nets;
mod pool_norm;

pub(crate) fn bench(c: &mut Criterion) {
    conv::bench(c);
    pool_norm::bench(c);
    nets::bench(c);
}
