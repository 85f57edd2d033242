//! Benchmark groups.

pub(crate) mod backbones;
pub(crate) mod data;
pub(crate) mod losses;
pub(crate) mod machine;
pub(crate) mod optim;
pub(crate) mod train_step;

/// Deterministic inputs: SplitMix64 turned into standard normals (Box–Muller), so every run
/// benchmarks the same numbers.
pub(crate) fn normal_vec(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    };
    (0..len)
        .map(|_| {
            let (u1, u2) = (next(), next());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}
