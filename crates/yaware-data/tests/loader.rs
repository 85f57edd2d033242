//! The in-memory dataset and the two-view loader: lengths, seeded shuffles, every sample once
//! per epoch, shapes, reproducibility whatever the prefetch depth, errors.

use yaware_data::augment::{Compose, RandomGaussianNoise, Volume, ZNormalization};
use yaware_data::{Dataset, Error, InMemoryDataset, LoaderConfig, TwoViewLoader};

/// Sample `i` is a volume filled with `i`, its target is `[20 + i, i % 2]`.
fn dataset(n: usize, with_targets: bool) -> InMemoryDataset {
    let volumes = (0..n)
        .map(|i| Volume::new([1, 4, 5, 6], vec![i as f32; 120]).unwrap())
        .collect();
    let targets = with_targets.then(|| {
        (0..n)
            .map(|i| vec![20.0 + i as f64, (i % 2) as f64])
            .collect()
    });
    InMemoryDataset::new(volumes, targets).unwrap()
}

fn loader(n: usize, config: LoaderConfig) -> TwoViewLoader<InMemoryDataset, Compose> {
    TwoViewLoader::new(dataset(n, true), Compose(vec![]), config).unwrap()
}

#[test]
fn length_in_batches_with_and_without_drop_last() {
    for (n, b, drop_last, expected) in [
        (10, 4, false, 3),
        (10, 4, true, 2),
        (8, 4, true, 2),
        (3, 8, true, 0),
    ] {
        let l = loader(
            n,
            LoaderConfig {
                batch_size: b,
                drop_last,
                ..Default::default()
            },
        );
        assert_eq!(
            l.len(),
            expected,
            "{n} samples, batch {b}, drop_last {drop_last}"
        );
        assert_eq!(l.epoch(0).count(), expected);
    }
}

#[test]
fn every_sample_once_per_epoch_with_its_target() {
    let l = loader(
        11,
        LoaderConfig {
            batch_size: 4,
            ..Default::default()
        },
    );
    let mut seen = Vec::new();
    for batch in l.epoch(3) {
        let batch = batch.unwrap();
        let x1 = batch
            .x1()
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let y = batch.y().unwrap().to_vec2::<f32>().unwrap();
        for (row, t) in x1.iter().zip(&y) {
            let i = row[0] as usize;
            assert!(row.iter().all(|&v| v == i as f32));
            assert_eq!(
                t,
                &[20.0 + i as f32, (i % 2) as f32],
                "the target travels with its sample"
            );
            seen.push(i);
        }
    }
    seen.sort();
    assert_eq!(seen, (0..11).collect::<Vec<_>>());
}

#[test]
fn shuffles_are_seeded_per_epoch() {
    let config = LoaderConfig {
        batch_size: 4,
        seed: 9,
        ..Default::default()
    };
    let l = loader(20, config.clone());
    assert_eq!(l.order(0), loader(20, config.clone()).order(0));
    assert_ne!(l.order(0), l.order(1));
    assert_ne!(
        l.order(0),
        loader(20, LoaderConfig { seed: 10, ..config }).order(0)
    );
    let plain = loader(
        20,
        LoaderConfig {
            shuffle: false,
            ..Default::default()
        },
    );
    assert_eq!(plain.order(5), (0..20).collect::<Vec<_>>());
}

#[test]
fn batches_have_two_views_of_the_batch_shape_and_are_reproducible_whatever_the_prefetch() {
    let recipe = || {
        Compose(vec![
            Box::new(ZNormalization::default()),
            Box::new(RandomGaussianNoise::default()),
        ])
    };
    let volumes: Vec<Volume> = (0..9)
        .map(|i| {
            Volume::new(
                [1, 4, 5, 6],
                (0..120).map(|k| ((k * (i + 1)) % 17) as f32).collect(),
            )
            .unwrap()
        })
        .collect();
    let run = |prefetch: usize| -> Vec<(Vec<f32>, Vec<f32>)> {
        let data = InMemoryDataset::new(volumes.clone(), None).unwrap();
        let l = TwoViewLoader::new(
            data,
            recipe(),
            LoaderConfig {
                batch_size: 4,
                prefetch,
                seed: 1,
                ..Default::default()
            },
        )
        .unwrap();
        l.epoch(2)
            .map(|b| {
                let b = b.unwrap();
                assert!(b.y().is_none());
                assert_eq!(b.x1().dims()[1..], [1, 4, 5, 6]);
                let f =
                    |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (f(b.x1()), f(b.x2()))
            })
            .collect()
    };
    let (a, b, c) = (run(0), run(1), run(3));
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_ne!(a[0].0, a[0].1, "the two views differ");
}

#[test]
fn an_epoch_can_be_abandoned() {
    let l = loader(
        40,
        LoaderConfig {
            batch_size: 2,
            prefetch: 1,
            ..Default::default()
        },
    );
    let mut e = l.epoch(0);
    assert!(e.next().unwrap().is_ok());
    drop(e); // the prefetch thread stops on its own
    assert_eq!(l.epoch(1).count(), 20);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let e = TwoViewLoader::new(
        dataset(4, false),
        Compose(vec![]),
        LoaderConfig {
            batch_size: 0,
            ..Default::default()
        },
    );
    assert!(matches!(
        e,
        Err(Error::InvalidParam {
            name: "batch_size",
            ..
        })
    ));
    let v = |s: [usize; 4]| Volume::new(s, vec![0.0; s.iter().product()]).unwrap();
    let e = InMemoryDataset::new(vec![v([1, 2, 2, 2]), v([1, 2, 2, 3])], None).unwrap_err();
    assert!(matches!(e, Error::Volume(_)), "{e}");
    let e = InMemoryDataset::new(vec![v([1, 2, 2, 2])], Some(vec![])).unwrap_err();
    assert!(matches!(e, Error::Dataset(_)));
    let e = InMemoryDataset::new(
        vec![v([1, 2, 2, 2]); 2],
        Some(vec![vec![1.0], vec![1.0, 2.0]]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Dataset(_)));
    let e = InMemoryDataset::new(vec![v([1, 2, 2, 2])], Some(vec![vec![f64::NAN]])).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    assert!(matches!(dataset(3, false).get(3), Err(Error::Dataset(_))));
}
