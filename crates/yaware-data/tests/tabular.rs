//! Tabular features: tables read by column names, every bad input an error naming the file, the
//! row and the column, the skip report, vector augmentations, and two-view batches `(N, F)`.

use std::path::{Path, PathBuf};

use yaware_data::augment::{Compose, RandomApply, RandomGaussianNoise, SampleRng, Volume};
use yaware_data::{
    Error, FeatureColumns, InMemoryDataset, LoaderConfig, SkipReport, TabularDataset,
    TabularLoader, TabularOptions, TwoViewLoader, VectorCompose, VectorTransform,
};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaware-tab-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn file_problem(e: Error, path: &Path) -> String {
    match e {
        Error::File { path: p, problem } => {
            assert_eq!(p, path, "the error names the file: {problem}");
            problem
        }
        other => panic!("expected a file error, got {other:?}"),
    }
}

const ROIS: &str = "participant_id,age,sex,site,roi_a,roi_b,roi_c
sub-1,20,M,paris,1.5,2,3
sub-2,31,F,lyon,4,5,6.25
sub-3,42,F,paris,7,8,9
sub-4,53,M,lyon,10,11,12
sub-5,64,M,nice,13,14,15
";

fn open(path: &Path, options: &TabularOptions) -> Result<TabularDataset, Error> {
    let (ds, report) = TabularDataset::open(path, options)?;
    assert_eq!(report, SkipReport::default(), "strict mode skips nothing");
    Ok(ds)
}

#[test]
fn features_and_targets_by_column_names() {
    let d = dir("happy");
    let csv = d.join("rois.csv");
    std::fs::write(&csv, ROIS).unwrap();
    let ds = open(&csv, &TabularOptions::all_numeric(&["age"])).unwrap();
    assert_eq!((ds.len(), ds.width()), (5, 3));
    assert_eq!(ds.feature_names(), ["roi_a", "roi_b", "roi_c"]);
    assert_eq!(ds.ignored_columns(), ["sex", "site"]);
    assert_eq!(ds.ids().unwrap()[1], "sub-2");
    assert_eq!(ds.features(1).unwrap(), [4.0, 5.0, 6.25]);
    assert_eq!(ds.target(4), Some(&[64.0][..]));
    assert!(matches!(ds.features(5), Err(Error::Dataset(_))));
    // Named columns, in the given order; exclusions; TSV; no target; no id column.
    let ds = open(
        &csv,
        &TabularOptions::named(&["roi_c", "roi_a"], &["age", "roi_b"]),
    )
    .unwrap();
    assert_eq!(ds.features(0).unwrap(), [3.0, 1.5]);
    assert_eq!(ds.target(0), Some(&[20.0, 2.0][..]));
    let tsv = d.join("rois.tsv");
    std::fs::write(&tsv, ROIS.replace(',', "\t")).unwrap();
    let options = TabularOptions {
        features: FeatureColumns::AllNumericExcept(vec!["roi_b".into()]),
        targets: vec![],
        id_column: None,
        skip_bad: false,
    };
    let ds = open(&tsv, &options).unwrap();
    assert_eq!(ds.feature_names(), ["age", "roi_a", "roi_c"]);
    assert_eq!(ds.ignored_columns(), ["participant_id", "sex", "site"]);
    assert!(ds.ids().is_none() && ds.target(0).is_none());
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn bad_tables_name_the_file_row_and_column() {
    let d = dir("bad");
    let csv = d.join("rois.csv");
    std::fs::write(&csv, ROIS).unwrap();
    let err = |o: &TabularOptions| file_problem(open(&csv, o).unwrap_err(), &csv);
    let p = err(&TabularOptions::named(&["roi_a", "roi_z"], &["age"]));
    assert!(
        p.contains("no column `roi_z`") && p.contains("roi_a, roi_b"),
        "{p}"
    );
    let p = err(&TabularOptions::all_numeric(&["weight"]));
    assert!(p.contains("no column `weight`"), "{p}");
    let p = err(&TabularOptions {
        id_column: Some("subject".into()),
        ..TabularOptions::all_numeric(&["age"])
    });
    assert!(
        p.contains("no id column `subject`") && p.contains("None"),
        "{p}"
    );
    let p = err(&TabularOptions {
        features: FeatureColumns::AllNumericExcept(vec!["roi_q".into()]),
        ..TabularOptions::all_numeric(&["age"])
    });
    assert!(p.contains("no column `roi_q`"), "{p}");
    let p = err(&TabularOptions::named(&["roi_a", "age"], &["age"]));
    assert!(p.contains("`age` is both a feature and a target"), "{p}");
    let p = err(&TabularOptions::named(&["sex"], &["age"]));
    assert!(
        p.contains("row 1, column `sex`: `M` is not a number"),
        "{p}"
    );
    let p = err(&TabularOptions::named(&["roi_a"], &["site"]));
    assert!(p.contains("row 1, column `site`"), "{p}");
    let p = err(&TabularOptions {
        features: FeatureColumns::AllNumericExcept(vec![
            "roi_a".into(),
            "roi_b".into(),
            "roi_c".into(),
        ]),
        ..TabularOptions::all_numeric(&["age"])
    });
    assert!(
        p.contains("no feature column") && p.contains("sex, site"),
        "{p}"
    );
    // Bad cells in numeric columns, found by the "all numeric" selection too.
    let bad = ROIS
        .replace("4,5,6.25", "4,x5,6.25")
        .replace("53,M", "nan,M")
        .replace("13,14", "1e40,14");
    std::fs::write(&csv, &bad).unwrap();
    let p = err(&TabularOptions::all_numeric(&["age"]));
    assert!(
        p.contains("row 2, column `roi_b`: `x5` is not a number"),
        "{p}"
    );
    let p = err(&TabularOptions::named(&["roi_a"], &["age"]));
    assert!(
        p.contains("row 4, column `age`: non-finite value NaN"),
        "{p}"
    );
    let p = err(&TabularOptions::named(&["roi_a"], &[]));
    assert!(
        p.contains("row 5, column `roi_a`: 1e40 overflows f32"),
        "{p}"
    );
    // Skipping: every bad row reported, the others kept in order.
    let (ds, report) = TabularDataset::open(
        &csv,
        &TabularOptions {
            skip_bad: true,
            ..TabularOptions::all_numeric(&["age"])
        },
    )
    .unwrap();
    assert_eq!(report.count(), 3, "{report}");
    let rows: Vec<usize> = report.skipped.iter().map(|(i, _)| *i).collect();
    assert_eq!(rows, [1, 3, 4]);
    assert!(report.skipped[0].1.contains("`x5`"));
    assert_eq!(ds.ids().unwrap(), ["sub-1", "sub-3"]);
    // A table with no data row, and one where every row is skipped.
    std::fs::write(&csv, "participant_id,age,roi\n").unwrap();
    assert!(err(&TabularOptions::all_numeric(&["age"])).contains("no data row"));
    std::fs::write(&csv, "participant_id,age,roi\ns,1,nan\n").unwrap();
    let p = file_problem(
        TabularDataset::open(
            &csv,
            &TabularOptions {
                skip_bad: true,
                ..TabularOptions::all_numeric(&["age"])
            },
        )
        .unwrap_err(),
        &csv,
    );
    assert!(
        p.contains("every row was skipped") && p.contains("1 sample(s)"),
        "{p}"
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn in_memory_rows_are_checked() {
    assert!(TabularDataset::new(vec![vec![1.0, 2.0], vec![3.0]], None).is_err());
    assert!(TabularDataset::new(vec![vec![]], None).is_err());
    assert!(TabularDataset::new(vec![vec![f32::NAN]], None).is_err());
    assert!(TabularDataset::new(vec![vec![1.0]], Some(vec![])).is_err());
    assert!(TabularDataset::new(vec![vec![1.0]], Some(vec![vec![f64::INFINITY]])).is_err());
    let ds = TabularDataset::new(vec![vec![1.0], vec![2.0]], Some(vec![vec![3.0], vec![4.0]]));
    assert_eq!(ds.unwrap().feature_names(), ["f0"]);
}

#[test]
fn vector_noise_has_the_requested_std_and_random_apply_draws_once() {
    let noise = RandomGaussianNoise::new((0.0, 0.0), (0.5, 0.5)).unwrap();
    let x = noise
        .apply(vec![3.0; 20_000], &mut SampleRng::new(1, 0, 0, 0))
        .unwrap();
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    let std = (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    // 20 000 draws: the standard error of the mean is 0.0035, of the std 0.0025.
    assert!(
        (mean - 3.0).abs() < 0.02 && (std - 0.5).abs() < 0.02,
        "{mean} {std}"
    );
    let never = RandomApply::new(noise, 0.0).unwrap();
    assert_eq!(
        never
            .apply(vec![1.0, 2.0], &mut SampleRng::new(0, 0, 0, 0))
            .unwrap(),
        [1.0, 2.0]
    );
}

/// Sample `i` has features `[i, 10 i, 100 i]` and target `20 + i`.
fn dataset(n: usize) -> TabularDataset {
    TabularDataset::new(
        (0..n)
            .map(|i| vec![i as f32, 10.0 * i as f32, 100.0 * i as f32])
            .collect(),
        Some((0..n).map(|i| vec![20.0 + i as f64]).collect()),
    )
    .unwrap()
}

#[test]
fn two_view_batches_of_vectors() {
    let config = LoaderConfig {
        batch_size: 4,
        seed: 7,
        ..Default::default()
    };
    let l = TabularLoader::new(dataset(10), VectorCompose::default(), config.clone()).unwrap();
    assert_eq!(l.len(), 3);
    let batches: Vec<_> = l.epoch(2).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches[0].x1().dims(), &[4, 3]);
    assert_eq!(batches[2].x1().dims(), &[2, 3]);
    assert_eq!(batches[0].y().unwrap().dims(), &[4, 1]);
    // Without augmentation both views are the samples, in the epoch's order, with their
    // targets; every sample once.
    let order = l.order(2);
    let mut seen = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let x1 = batch.x1().to_vec2::<f32>().unwrap();
        assert_eq!(x1, batch.x2().to_vec2::<f32>().unwrap());
        let y = batch.y().unwrap().to_vec2::<f32>().unwrap();
        for (r, row) in x1.iter().enumerate() {
            let i = row[0] as usize;
            assert_eq!(i, order[b * 4 + r]);
            assert_eq!(row, &[i as f32, 10.0 * i as f32, 100.0 * i as f32]);
            assert_eq!(y[r][0], 20.0 + i as f32);
            seen.push(i);
        }
    }
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    // The same seeded shuffle as the volume loader with this config.
    let volumes = (0..10)
        .map(|_| Volume::new([1, 1, 1, 1], vec![0.0]).unwrap())
        .collect();
    let vl = TwoViewLoader::new(
        InMemoryDataset::new(volumes, None).unwrap(),
        Compose(vec![]),
        config.clone(),
    )
    .unwrap();
    assert_eq!(vl.order(2), order);
    assert_ne!(l.order(3), order, "another epoch, another order");
    // drop_last, and a batch size of 0.
    let dl = LoaderConfig {
        drop_last: true,
        ..config.clone()
    };
    let l = TabularLoader::new(dataset(10), VectorCompose::default(), dl).unwrap();
    assert_eq!(l.epoch(0).count(), 2);
    let zero = LoaderConfig {
        batch_size: 0,
        ..config.clone()
    };
    assert!(TabularLoader::new(dataset(3), VectorCompose::default(), zero).is_err());
}

#[test]
fn augmented_views_differ_and_are_reproducible_whatever_the_prefetch() {
    let noise = || VectorCompose(vec![Box::new(RandomGaussianNoise::default())]);
    let run = |prefetch| {
        let config = LoaderConfig {
            batch_size: 3,
            prefetch,
            ..Default::default()
        };
        let l = TabularLoader::new(dataset(7), noise(), config).unwrap();
        l.epoch(1)
            .map(|b| {
                let b = b.unwrap();
                (
                    b.x1().to_vec2::<f32>().unwrap(),
                    b.x2().to_vec2::<f32>().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (run(0), run(3));
    assert_eq!(a, b);
    assert_ne!(a[0].0, a[0].1, "the two views are augmented independently");
}

/// A broken augmentation that drops the last feature.
#[derive(Debug)]
struct DropLast;

impl VectorTransform for DropLast {
    fn apply(&self, mut x: Vec<f32>, _rng: &mut SampleRng) -> Result<Vec<f32>, Error> {
        x.pop();
        Ok(x)
    }
}

#[test]
fn a_transform_changing_the_length_is_an_error() {
    let l = TabularLoader::new(dataset(3), DropLast, LoaderConfig::default()).unwrap();
    let e = l.epoch(0).next().unwrap().unwrap_err();
    assert!(
        matches!(&e, Error::Dataset(m) if m.contains("changed the length from 3 to 2")),
        "{e}"
    );
}

#[test]
fn quoted_fields_are_read_and_an_unterminated_quote_names_its_line() {
    let d = dir("quoted");
    let csv = d.join("rois.csv");
    // A site name with a comma and a newline, quoted ids and numbers, an escaped quote.
    std::fs::write(
        &csv,
        "participant_id,site,age,roi_a\n\"sub-1\",\"Paris, \"\"A\"\"\",20,\"1.5\"\n\"sub-2\",\"Lyon\nB\",31,4\n",
    )
    .unwrap();
    let ds = open(&csv, &TabularOptions::all_numeric(&["age"])).unwrap();
    assert_eq!(ds.ids().unwrap(), ["sub-1", "sub-2"]);
    assert_eq!(ds.ignored_columns(), ["site"]);
    assert_eq!(ds.feature_names(), ["roi_a"]);
    assert_eq!(ds.features(0).unwrap(), [1.5]);
    assert_eq!(ds.target(1), Some(&[31.0][..]));
    std::fs::write(&csv, "participant_id,age,roi_a\nsub-1,20,1\nsub-2,\"31,4\n").unwrap();
    let e = TabularDataset::open(&csv, &TabularOptions::all_numeric(&["age"])).unwrap_err();
    assert!(
        matches!(&e, Error::TableSyntax { path, line: 3, .. } if path == &csv),
        "{e:?}"
    );
    std::fs::remove_dir_all(d).ok();
}
