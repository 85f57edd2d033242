//! `.npy` volumes and `participants.tsv` targets: round trips through real files written by the
//! tests, and an error naming the file for every kind of bad input.

use std::path::{Path, PathBuf};

use yaware_data::augment::Compose;
use yaware_data::{
    Dataset, Error, LoaderConfig, NpyDataset, NpyVolumes, Table, TableSyntax, TwoViewLoader,
    write_npy,
};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaware-npy-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn file_problem(e: Error, path: &Path) -> String {
    match e {
        Error::File { path: p, problem } => {
            assert_eq!(p, path, "the error names the file");
            problem
        }
        other => panic!("expected a file error, got {other:?}"),
    }
}

/// A raw .npy file with the given header dict and payload.
fn raw_npy(path: &Path, dict: &str, payload: &[u8]) {
    let mut header = dict.to_string();
    header.push_str(&" ".repeat((64 - (10 + header.len() + 1) % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    std::fs::write(path, out).unwrap();
}

#[test]
fn volumes_round_trip_in_both_layouts() {
    let d = dir("roundtrip");
    let data: Vec<f32> = (0..3 * 2 * 3 * 4).map(|i| i as f32 * 0.5).collect();
    let p = d.join("a.npy");
    write_npy(&p, &[3, 2, 3, 4], &data).unwrap();
    let v = NpyVolumes::open(&p).unwrap();
    assert_eq!((v.len(), v.shape()), (3, [1, 2, 3, 4]));
    assert_eq!(v.read(2).unwrap().data(), &data[48..72]);
    let p5 = d.join("b.npy");
    write_npy(&p5, &[2, 3, 1, 2, 2], &data[..24]).unwrap();
    let v5 = NpyVolumes::open(&p5).unwrap();
    assert_eq!(v5.shape(), [3, 1, 2, 2]);
    assert_eq!(v5.read(1).unwrap().data(), &data[12..24]);
    // Other dtypes are converted to f32.
    let p64 = d.join("c.npy");
    let payload: Vec<u8> = (0..8)
        .flat_map(|i| (i as f64 * 1.5).to_le_bytes())
        .collect();
    raw_npy(
        &p64,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 1, 2, 2), }",
        &payload,
    );
    assert_eq!(
        NpyVolumes::open(&p64).unwrap().read(1).unwrap().data(),
        [6.0, 7.5, 9.0, 10.5]
    );
    assert!(matches!(v.read(3), Err(Error::File { .. })));
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn bad_npy_files_are_named_errors() {
    let d = dir("bad");
    let missing = d.join("missing.npy");
    assert!(
        file_problem(NpyVolumes::open(&missing).unwrap_err(), &missing).contains("cannot open")
    );
    let p = d.join("t.npy");
    write_npy(&p, &[2, 2, 2, 2], &[1.0; 16]).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
    assert!(file_problem(NpyVolumes::open(&p).unwrap_err(), &p).contains("truncated"));
    std::fs::write(&p, b"not numpy at all").unwrap();
    assert!(file_problem(NpyVolumes::open(&p).unwrap_err(), &p).contains("magic"));
    raw_npy(
        &p,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }",
        &[0; 96],
    );
    assert!(file_problem(NpyVolumes::open(&p).unwrap_err(), &p).contains("dimensionality"));
    raw_npy(
        &p,
        "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 1, 1, 1), }",
        &[0; 4],
    );
    assert!(file_problem(NpyVolumes::open(&p).unwrap_err(), &p).contains("Fortran"));
    raw_npy(
        &p,
        "{'descr': '<c8', 'fortran_order': False, 'shape': (1, 1, 1, 1), }",
        &[0; 8],
    );
    assert!(file_problem(NpyVolumes::open(&p).unwrap_err(), &p).contains("dtype"));
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn participants_table_errors_name_the_file_row_and_column() {
    let d = dir("table");
    let t = d.join("participants.tsv");
    std::fs::write(
        &t,
        "participant_id\tage\tsex\n1\t23.5\t0\n2\tabc\t1\n3\tnan\t0\n",
    )
    .unwrap();
    let table = Table::read(&t).unwrap();
    assert_eq!(table.columns(), ["participant_id", "age", "sex"]);
    assert_eq!(table.numeric_column("sex").unwrap(), [0.0, 1.0, 0.0]);
    let p = file_problem(table.numeric_column("site").unwrap_err(), &t);
    assert!(
        p.contains("no column `site`") && p.contains("participant_id, age, sex"),
        "{p}"
    );
    let p = file_problem(table.numeric_column("age").unwrap_err(), &t);
    assert!(p.contains("row 2") && p.contains("abc"), "{p}");
    std::fs::write(&t, "participant_id\tage\n1\t23.5\n2\tnan\n").unwrap();
    let p = file_problem(
        Table::read(&t).unwrap().numeric_column("age").unwrap_err(),
        &t,
    );
    assert!(p.contains("row 2") && p.contains("non-finite"), "{p}");
    std::fs::write(&t, "a\tb\n1\n").unwrap();
    assert!(file_problem(Table::read(&t).unwrap_err(), &t).contains("fields"));
    let csv = d.join("meta.csv");
    std::fs::write(&csv, "id,age\n1,30\n").unwrap();
    assert_eq!(
        Table::read(&csv).unwrap().numeric_column("age").unwrap(),
        [30.0]
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn an_openbhb_like_folder_feeds_the_loader() {
    let d = dir("openbhb");
    let (n, vox) = (5usize, 2 * 3 * 2);
    let data: Vec<f32> = (0..n * vox).map(|i| (i / vox) as f32).collect();
    let npy = d.join("train_vbm.npy");
    write_npy(&npy, &[n, 1, 2, 3, 2], &data).unwrap();
    let tsv = d.join("participants.tsv");
    let rows: String = (0..n)
        .map(|i| format!("sub-{i}\t{}\t{}\n", 20 + i, i % 2))
        .collect();
    std::fs::write(&tsv, format!("participant_id\tage\tsex\n{rows}")).unwrap();
    let ds = NpyDataset::open(&npy, Some((&tsv, &["age", "sex"]))).unwrap();
    assert_eq!(ds.len(), n);
    let s = ds.get(3).unwrap();
    assert_eq!(s.target, Some(vec![23.0, 1.0]));
    assert!(s.volume.data().iter().all(|&x| x == 3.0));
    let loader = TwoViewLoader::new(
        ds,
        Compose(vec![]),
        LoaderConfig {
            batch_size: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let batches: Vec<_> = loader.epoch(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[0].y().unwrap().dims(), &[2, 2]);
    // A table with another number of rows than volumes.
    std::fs::write(&tsv, "participant_id\tage\nsub-0\t20\n").unwrap();
    let p = file_problem(
        NpyDataset::open(&npy, Some((&tsv, &["age"]))).unwrap_err(),
        &tsv,
    );
    assert!(p.contains("1 rows of meta-data for 5 volumes"), "{p}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn bad_rows_can_be_skipped_and_are_all_reported() {
    let d = dir("skip");
    let (n, vox) = (5usize, 8);
    let data: Vec<f32> = (0..n * vox).map(|i| (i / vox) as f32).collect();
    let npy = d.join("x.npy");
    write_npy(&npy, &[n, 2, 2, 2], &data).unwrap();
    let tsv = d.join("participants.tsv");
    std::fs::write(&tsv, "id\tage\nA\t20\nB\tnan\nC\t22\nD\tabc\nE\t24\n").unwrap();
    // Without the option the first bad row is an error naming the file.
    let p = file_problem(
        NpyDataset::open(&npy, Some((&tsv, &["age"]))).unwrap_err(),
        &tsv,
    );
    assert!(p.contains("row 2"), "{p}");
    let (ds, report) = NpyDataset::open_skipping_bad(&npy, (&tsv, &["age"])).unwrap();
    assert_eq!(report.count(), 2);
    assert_eq!(
        report.skipped.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [1, 3]
    );
    assert!(report.skipped[1].1.contains("`abc` is not a number"));
    assert!(report.to_string().starts_with("2 sample(s) skipped"));
    assert_eq!(ds.len(), 3);
    let s = ds.get(2).unwrap();
    assert_eq!(s.target, Some(vec![24.0]));
    assert!(
        s.volume.data().iter().all(|&x| x == 4.0),
        "sample 2 of the dataset is row 4 of the file"
    );
    // A missing column is not one sample's problem: still an error.
    assert!(NpyDataset::open_skipping_bad(&npy, (&tsv, &["sex"])).is_err());
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn quoted_table_fields_and_an_unterminated_quote() {
    let d = dir("quoted");
    // RFC 4180 quoting: a separator, a newline and an escaped quote inside quoted fields.
    let csv = d.join("participants.csv");
    std::fs::write(
        &csv,
        "\"participant_id\",site,\"age\"\r\n\"sub-1\",\"Paris, \"\"HU\"\"\",\"21.5\"\r\n2,\"two\nlines\",30\r\n",
    )
    .unwrap();
    let t = Table::read(&csv).unwrap();
    assert_eq!(t.columns(), ["participant_id", "site", "age"]);
    assert_eq!(t.numeric_column("age").unwrap(), [21.5, 30.0]);
    // The targets of an .npy dataset come through the same parser.
    let npy = d.join("x.npy");
    write_npy(&npy, &[2, 1, 1, 1], &[0.0, 1.0]).unwrap();
    let ds = NpyDataset::open(&npy, Some((&csv, &["age"]))).unwrap();
    assert_eq!(ds.get(1).unwrap().target, Some(vec![30.0]));
    // A quote never closed: a typed error naming the file and the line it opened on.
    let tsv = d.join("participants.tsv");
    std::fs::write(&tsv, "participant_id\tage\n1\t20\n\n2\t\"30\n3\t40\n").unwrap();
    match Table::read(&tsv).unwrap_err() {
        Error::TableSyntax { path, line, kind } => {
            assert_eq!(
                (path, line, kind),
                (tsv.clone(), 4, TableSyntax::UnterminatedQuote)
            );
        }
        other => panic!("expected a table syntax error, got {other:?}"),
    }
    let e = NpyDataset::open(&npy, Some((&tsv, &["age"]))).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("participants.tsv") && msg.contains("line 4") && msg.contains("never closed"),
        "{msg}"
    );
    // Text after a closing quote names its line too; a row's field count names its line.
    std::fs::write(&tsv, "participant_id\tage\n\"1\"x\t20\n").unwrap();
    assert!(matches!(
        Table::read(&tsv).unwrap_err(),
        Error::TableSyntax {
            line: 2,
            kind: TableSyntax::TextAfterQuote('x'),
            ..
        }
    ));
    std::fs::write(&tsv, "a\tb\n\"1\n2\"\t3\n4\n").unwrap();
    let p = file_problem(Table::read(&tsv).unwrap_err(), &tsv);
    assert!(p.contains("row 2 (line 4)"), "{p}");
    std::fs::remove_dir_all(d).ok();
}
