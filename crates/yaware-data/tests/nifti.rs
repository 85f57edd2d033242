//! NIfTI folders with BIDS `participants.tsv` meta-data: round trips through real `.nii` and
//! `.nii.gz` files written with the `nifti` crate's writer (3D, 4D, scaled), an error naming the
//! file for every kind of bad input, and the report of the skipping mode.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, Array4};
use nifti::NiftiHeader;
use nifti::writer::WriterOptions;
use yaware_data::augment::Compose;
use yaware_data::{
    Affine, Dataset, Error, LoaderConfig, NiftiDataset, NiftiOptions, SkipReport, TwoViewLoader,
};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaware-nifti-{}-{name}", std::process::id()));
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

/// Voxel `(i, j, k)` of subject `s` is `1000 s + 100 i + 10 j + k`.
fn value(s: usize, i: usize, j: usize, k: usize) -> f32 {
    (1000 * s + 100 * i + 10 * j + k) as f32
}

fn write3(path: &Path, s: usize, (x, y, z): (usize, usize, usize)) {
    let a = Array3::from_shape_fn((x, y, z), |(i, j, k)| value(s, i, j, k));
    WriterOptions::new(path).write_nifti(&a).unwrap();
}

fn open(d: &Path, options: &NiftiOptions) -> Result<NiftiDataset, Error> {
    let (ds, report) = NiftiDataset::open(d, options)?;
    assert_eq!(report, SkipReport::default(), "strict mode skips nothing");
    Ok(ds)
}

/// A participants table with the given `(id, age)` rows.
fn table(d: &Path, rows: &[(&str, &str)]) -> PathBuf {
    let t = d.join("participants.tsv");
    let body: String = rows
        .iter()
        .map(|(id, a)| format!("{id}\t{a}\tM\n"))
        .collect();
    std::fs::write(&t, format!("participant_id\tage\tsex\n{body}")).unwrap();
    t
}

#[test]
fn nii_and_nii_gz_round_trip_with_targets_matched_by_subject() {
    let d = dir("roundtrip");
    let shape = (3, 4, 5);
    // Files in sorted order: sub-01 (.nii.gz, in a BIDS sub-folder), sub-02 (.nii).
    std::fs::create_dir_all(d.join("sub-01/anat")).unwrap();
    write3(&d.join("sub-01/anat/sub-01_T1w.nii.gz"), 1, shape);
    write3(&d.join("sub-02_T1w.nii"), 2, shape);
    // Ids with and without the `sub-` prefix; an extra subject without file is fine.
    let t = table(&d, &[("02", "31.5"), ("sub-01", "20"), ("sub-09", "50")]);
    let ds = open(&d, &NiftiOptions::with_table(&t, &["age"])).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.shape(), [1, 3, 4, 5]);
    assert_eq!(ds.subjects(), [Some("01".into()), Some("02".into())]);
    for (n, (s, age)) in [(1, 20.0), (2, 31.5)].into_iter().enumerate() {
        let sample = ds.get(n).unwrap();
        assert_eq!(sample.target, Some(vec![age]));
        let v = sample.volume;
        for (i, j, k) in [
            (0, 0, 0),
            (2, 0, 0),
            (0, 3, 0),
            (0, 0, 4),
            (1, 2, 3),
            (2, 3, 4),
        ] {
            assert_eq!(
                v.data()[(i * 4 + j) * 5 + k],
                value(s, i, j, k),
                "subject {s} voxel ({i}, {j}, {k}): (X, Y, Z) becomes (D, H, W)"
            );
        }
    }
    assert!(matches!(ds.get(2), Err(Error::Dataset(_))));
    // Without a table: every file, no target, no `sub-` needed.
    write3(&d.join("extra.nii"), 3, shape);
    let ds = open(&d, &NiftiOptions::default()).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.get(0).unwrap().target, None);
    // It feeds the two-view loader.
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
    assert_eq!(batches[0].x1().dims(), &[2, 1, 3, 4, 5]);
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn scaling_is_applied_and_integer_files_are_converted() {
    let d = dir("scaling");
    let a = Array3::from_shape_fn((2, 3, 2), |(i, j, k)| (i * 6 + j * 2 + k) as i16);
    let p = d.join("sub-1.nii");
    WriterOptions::new(&p).write_nifti(&a).unwrap();
    // The writer always stores slope 1, intercept 0: patch scl_slope (byte 112) and scl_inter
    // (byte 116) of the NIfTI-1 header, written in native byte order.
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[112..116].copy_from_slice(&2.5f32.to_ne_bytes());
    bytes[116..120].copy_from_slice(&(-3.0f32).to_ne_bytes());
    std::fs::write(&p, bytes).unwrap();
    let v = open(&d, &NiftiOptions::default())
        .unwrap()
        .get(0)
        .unwrap()
        .volume;
    for (i, j, k) in [(0, 0, 0), (1, 2, 1), (1, 0, 1)] {
        let raw = (i * 6 + j * 2 + k) as f32;
        assert_eq!(v.data()[(i * 3 + j) * 2 + k], 2.5 * raw - 3.0);
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn a_4d_file_has_its_fourth_axis_as_channels() {
    let d = dir("4d");
    let a = Array4::from_shape_fn((2, 3, 4, 2), |(i, j, k, t)| {
        value(0, i, j, k) + 0.5 * t as f32
    });
    WriterOptions::new(d.join("sub-x.nii.gz"))
        .write_nifti(&a)
        .unwrap();
    let ds = open(&d, &NiftiOptions::default()).unwrap();
    assert_eq!(ds.shape(), [2, 2, 3, 4]);
    let v = ds.get(0).unwrap().volume;
    for (t, i, j, k) in [(0, 1, 2, 3), (1, 1, 2, 3), (1, 0, 0, 0), (0, 1, 0, 2)] {
        assert_eq!(
            v.data()[((t * 2 + i) * 3 + j) * 4 + k],
            value(0, i, j, k) + 0.5 * t as f32
        );
    }
    std::fs::remove_dir_all(d).ok();
}

/// A `.nii.gz` of pseudo-random (incompressible) voxels cut to `keep` of its length.
fn truncated_gz(path: &Path, keep: f64) {
    let mut state = 12345u32;
    let a = Array3::from_shape_fn((8, 8, 8), |_| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        state as f32
    });
    WriterOptions::new(path).write_nifti(&a).unwrap();
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
}

#[test]
fn truncated_and_unreadable_files_are_named_errors() {
    let d = dir("truncated");
    let gz = d.join("sub-1_T1w.nii.gz");
    truncated_gz(&gz, 0.6);
    // The header is intact: the lazy open succeeds, reading the voxels fails naming the file.
    let ds = open(&d, &NiftiOptions::default()).unwrap();
    let p = file_problem(ds.get(0).unwrap_err(), &gz);
    assert!(p.contains("unreadable or truncated"), "{p}");
    // With `verify_data` it is found at open time.
    let verify = NiftiOptions {
        verify_data: true,
        ..Default::default()
    };
    let p = file_problem(NiftiDataset::open(&d, &verify).unwrap_err(), &gz);
    assert!(p.contains("truncated"), "{p}");
    // A cut inside the header.
    truncated_gz(&gz, 0.02);
    let p = file_problem(NiftiDataset::open(&d, &verify).unwrap_err(), &gz);
    assert!(p.contains("unreadable header"), "{p}");
    std::fs::remove_file(&gz).unwrap();
    // An uncompressed file shorter than its header announces: found by the header check.
    let nii = d.join("sub-2.nii");
    write3(&nii, 0, (4, 4, 4));
    let bytes = std::fs::read(&nii).unwrap();
    std::fs::write(&nii, &bytes[..bytes.len() - 5]).unwrap();
    let p = file_problem(open(&d, &NiftiOptions::default()).unwrap_err(), &nii);
    assert!(p.contains("truncated") && p.contains("announces"), "{p}");
    // Not NIfTI at all.
    std::fs::write(&nii, b"plain text, no header").unwrap();
    let p = file_problem(open(&d, &NiftiOptions::default()).unwrap_err(), &nii);
    assert!(p.contains("unreadable header"), "{p}");
    std::fs::remove_dir_all(d).ok();
    // A folder without NIfTI file, and a missing folder.
    let empty = dir("empty");
    std::fs::write(empty.join("notes.txt"), "x").unwrap();
    let p = file_problem(open(&empty, &NiftiOptions::default()).unwrap_err(), &empty);
    assert!(p.contains("no .nii"), "{p}");
    std::fs::remove_dir_all(&empty).ok();
    assert!(matches!(
        open(&empty, &NiftiOptions::default()),
        Err(Error::File { .. })
    ));
}

#[test]
fn wrong_dimensionality_and_differing_shapes_are_named_errors() {
    let d = dir("shapes");
    let flat = d.join("sub-1.nii");
    WriterOptions::new(&flat)
        .write_nifti(&Array2::<f32>::zeros((4, 4)))
        .unwrap();
    let p = file_problem(open(&d, &NiftiOptions::default()).unwrap_err(), &flat);
    assert!(
        p.contains("wrong dimensionality") && p.contains("2 dimensions"),
        "{p}"
    );
    std::fs::remove_file(&flat).unwrap();
    write3(&d.join("sub-1.nii"), 1, (3, 4, 5));
    let other = d.join("sub-2.nii.gz");
    write3(&other, 2, (3, 4, 6));
    let p = file_problem(open(&d, &NiftiOptions::default()).unwrap_err(), &other);
    assert!(
        p.contains("[1, 3, 4, 6]") && p.contains("[1, 3, 4, 5]") && p.contains("sub-1.nii"),
        "{p}"
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn meta_data_problems_are_named_errors() {
    let d = dir("meta");
    write3(&d.join("sub-01_T1w.nii.gz"), 1, (2, 2, 2));
    write3(&d.join("sub-02_T1w.nii.gz"), 2, (2, 2, 2));
    // A subject without row.
    let t = table(&d, &[("sub-01", "20")]);
    let p = file_problem(
        open(&d, &NiftiOptions::with_table(&t, &["age"])).unwrap_err(),
        &d.join("sub-02_T1w.nii.gz"),
    );
    assert!(p.contains("`sub-02` has no row"), "{p}");
    // A missing target column, a missing id column.
    let t = table(&d, &[("sub-01", "20"), ("sub-02", "21")]);
    let p = file_problem(
        open(&d, &NiftiOptions::with_table(&t, &["site"])).unwrap_err(),
        &t,
    );
    assert!(p.contains("no column `site`"), "{p}");
    let by_subject = NiftiOptions {
        id_column: "subject".into(),
        ..NiftiOptions::with_table(&t, &["age"])
    };
    let p = file_problem(open(&d, &by_subject).unwrap_err(), &t);
    assert!(p.contains("no column `subject`"), "{p}");
    // A non-numeric target and a NaN target name the table, the row and the column.
    let p = file_problem(
        open(&d, &NiftiOptions::with_table(&t, &["sex"])).unwrap_err(),
        &t,
    );
    assert!(
        p.contains("row 1, column `sex`") && p.contains("`M` is not a number"),
        "{p}"
    );
    let t = table(&d, &[("sub-01", "20"), ("sub-02", "NaN")]);
    let p = file_problem(
        open(&d, &NiftiOptions::with_table(&t, &["age"])).unwrap_err(),
        &t,
    );
    assert!(p.contains("row 2, column `age`: non-finite"), "{p}");
    // Duplicate ids (with and without prefix are the same subject).
    let t = table(&d, &[("sub-01", "20"), ("01", "21")]);
    let p = file_problem(
        open(&d, &NiftiOptions::with_table(&t, &["age"])).unwrap_err(),
        &t,
    );
    assert!(p.contains("rows 1 and 2"), "{p}");
    // A file without `sub-` when a table is given.
    let t = table(&d, &[("sub-01", "20"), ("sub-02", "21")]);
    let anon = d.join("template.nii");
    write3(&anon, 0, (2, 2, 2));
    let p = file_problem(
        open(&d, &NiftiOptions::with_table(&t, &["age"])).unwrap_err(),
        &anon,
    );
    assert!(p.contains("no BIDS `sub-<label>`"), "{p}");
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn bad_files_can_be_skipped_and_are_all_reported() {
    let d = dir("skip");
    let shape = (8, 8, 8); // the truncated file's
    write3(&d.join("sub-01.nii"), 1, shape); // good
    write3(&d.join("sub-02.nii"), 2, (8, 8, 9)); // other shape
    truncated_gz(&d.join("sub-03.nii.gz"), 0.5); // truncated (found with verify_data)
    write3(&d.join("sub-04.nii"), 4, shape); // no row
    write3(&d.join("sub-05.nii"), 5, shape); // NaN age
    write3(&d.join("sub-06.nii.gz"), 6, shape); // good
    WriterOptions::new(d.join("sub-07.nii"))
        .write_nifti(&Array2::<f32>::zeros((2, 2)))
        .unwrap(); // 2D
    let t = table(
        &d,
        &[
            ("01", "20"),
            ("02", "21"),
            ("03", "22"),
            ("05", "nan"),
            ("06", "25"),
            ("07", "26"),
        ],
    );
    let options = NiftiOptions {
        skip_bad: true,
        verify_data: true,
        ..NiftiOptions::with_table(&t, &["age"])
    };
    let (ds, report) = NiftiDataset::open(&d, &options).unwrap();
    assert_eq!(report.count(), 5, "{report}");
    let indices: Vec<usize> = report.skipped.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [1, 2, 3, 4, 6]);
    let reasons: Vec<&str> = report.skipped.iter().map(|(_, r)| r.as_str()).collect();
    for (reason, (file, why)) in reasons.iter().zip([
        ("sub-02.nii", "differs"),
        ("sub-03.nii.gz", "truncated"),
        ("sub-04.nii", "has no row"),
        ("sub-05.nii", "non-finite"),
        ("sub-07.nii", "wrong dimensionality"),
    ]) {
        assert!(reason.contains(file) && reason.contains(why), "{reason}");
    }
    assert!(report.to_string().starts_with("5 sample(s) skipped"));
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.get(1).unwrap().target, Some(vec![25.0]));
    assert_eq!(ds.get(1).unwrap().volume.data()[0], value(6, 0, 0, 0));
    // Table-wide problems still fail.
    let missing_column = NiftiOptions {
        targets: vec!["site".into()],
        ..options.clone()
    };
    assert!(NiftiDataset::open(&d, &missing_column).is_err());
    // Every file skipped is an error listing them.
    let t = table(&d, &[("99", "1")]);
    let none = NiftiOptions {
        table: Some(t),
        ..options
    };
    let p = file_problem(NiftiDataset::open(&d, &none).unwrap_err(), &d);
    assert!(
        p.contains("every NIfTI file was skipped") && p.contains("7 sample(s)"),
        "{p}"
    );
    std::fs::remove_dir_all(d).ok();
}

/// A header whose affine is the `sform` with these rows (`sform_code` 1; the qform unused).
fn sform_header(rows: [[f32; 4]; 3]) -> NiftiHeader {
    NiftiHeader {
        sform_code: 1,
        qform_code: 0,
        srow_x: rows[0],
        srow_y: rows[1],
        srow_z: rows[2],
        ..NiftiHeader::default()
    }
}

fn write_with(path: &Path, s: usize, shape: (usize, usize, usize), header: &NiftiHeader) {
    let a = Array3::from_shape_fn(shape, |(i, j, k)| value(s, i, j, k));
    WriterOptions::new(path)
        .reference_header(header)
        .write_nifti(&a)
        .unwrap();
}

fn close(a: &Affine, b: &[[f64; 4]; 4], tol: f64) -> bool {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn every_volume_must_share_the_affine() {
    let d = dir("affine");
    // OpenBHB-like 1.5 mm MNI grid (values exact in f32).
    let mni = [
        [-1.5, 0.0, 0.0, 90.0],
        [0.0, 1.5, 0.0, -126.0],
        [0.0, 0.0, 1.5, -72.0],
    ];
    let shape = (3, 4, 5);
    write_with(&d.join("sub-01.nii"), 1, shape, &sform_header(mni));
    // Within the tolerance: the same grid.
    let mut near = mni;
    near[0][3] += 5e-5;
    write_with(&d.join("sub-02.nii.gz"), 2, shape, &sform_header(near));
    let ds = open(&d, &NiftiOptions::default()).unwrap();
    let expected = [
        [-1.5, 0.0, 0.0, 90.0],
        [0.0, 1.5, 0.0, -126.0],
        [0.0, 0.0, 1.5, -72.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_eq!(ds.affine(), expected, "the first file's, exactly");
    assert_eq!(ds.len(), 2);
    // A shifted grid (2e-4 mm) and a flipped axis: the first differing file is named.
    let mut shifted = mni;
    shifted[2][3] += 2e-4;
    write_with(&d.join("sub-03.nii"), 3, shape, &sform_header(shifted));
    let mut flipped = mni;
    flipped[0][0] = 1.5;
    write_with(&d.join("sub-04.nii"), 4, shape, &sform_header(flipped));
    match open(&d, &NiftiOptions::default()).unwrap_err() {
        Error::AffineMismatch {
            path,
            reference,
            affine,
            expected: e,
        } => {
            assert_eq!(path, d.join("sub-03.nii"));
            assert_eq!(reference, d.join("sub-01.nii"));
            assert_eq!(*e, expected);
            assert!((affine[2][3] - (-72.0 + 2e-4)).abs() < 1e-5, "{affine:?}");
        }
        other => panic!("expected an affine mismatch, got {other:?}"),
    }
    // Skipping: both reported, the others kept.
    let skip = NiftiOptions {
        skip_bad: true,
        ..NiftiOptions::default()
    };
    let (ds, report) = NiftiDataset::open(&d, &skip).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.affine(), expected);
    let skipped: Vec<usize> = report.skipped.iter().map(|(i, _)| *i).collect();
    assert_eq!(skipped, [2, 3], "{report}");
    for ((_, why), file) in report.skipped.iter().zip(["sub-03.nii", "sub-04.nii"]) {
        assert!(
            why.contains(file) && why.contains("affine") && why.contains("sub-01.nii"),
            "{why}"
        );
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn qform_and_default_affines_follow_the_nifti_rules() {
    let d = dir("qform");
    let shape = (4, 5, 6);
    // qform only: the quaternion (0, 0, 1) is a half turn about z; voxel sizes 2, 3, 4 with
    // qfac −1: diag(−2, −3, −4), offsets (10, 20, 30).
    let half_turn = NiftiHeader {
        sform_code: 0,
        qform_code: 1,
        quatern_b: 0.0,
        quatern_c: 0.0,
        quatern_d: 1.0,
        quatern_x: 10.0,
        quatern_y: 20.0,
        quatern_z: 30.0,
        pixdim: [-1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0],
        ..NiftiHeader::default()
    };
    write_with(&d.join("sub-01.nii"), 1, shape, &half_turn);
    let ds = open(&d, &NiftiOptions::default()).unwrap();
    let expected = [
        [-2.0, 0.0, 0.0, 10.0],
        [0.0, -3.0, 0.0, 20.0],
        [0.0, 0.0, -4.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert!(close(&ds.affine(), &expected, 1e-12), "{:?}", ds.affine());
    // A quarter turn about z, (0, 0, sin 45°), unit voxels: x ← −j, y ← i.
    let quarter = NiftiHeader {
        quatern_d: std::f32::consts::FRAC_1_SQRT_2,
        pixdim: [1.0; 8],
        ..half_turn.clone()
    };
    write_with(&d.join("sub-01.nii"), 1, shape, &quarter);
    let ds = open(&d, &NiftiOptions::default()).unwrap();
    let expected = [
        [0.0, -1.0, 0.0, 10.0],
        [1.0, 0.0, 0.0, 20.0],
        [0.0, 0.0, 1.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert!(close(&ds.affine(), &expected, 1e-6), "{:?}", ds.affine());
    // Neither code: the shape-and-zooms affine, diag(−2, 2, 2) centred on the volume.
    let none = NiftiHeader {
        sform_code: 0,
        qform_code: 0,
        pixdim: [1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0],
        ..NiftiHeader::default()
    };
    write_with(&d.join("sub-01.nii"), 1, shape, &none);
    let ds = open(&d, &NiftiOptions::default()).unwrap();
    let expected = [
        [-2.0, 0.0, 0.0, 3.0],
        [0.0, 2.0, 0.0, -4.0],
        [0.0, 0.0, 2.0, -5.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_eq!(ds.affine(), expected);
    // An invalid qform (qfac 0.5) is the file's problem, named.
    let bad = NiftiHeader {
        pixdim: [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        ..half_turn
    };
    let path = d.join("sub-01.nii");
    write_with(&path, 1, shape, &bad);
    let p = file_problem(open(&d, &NiftiOptions::default()).unwrap_err(), &path);
    assert!(p.contains("qfac") && p.contains("0.5"), "{p}");
    std::fs::remove_dir_all(d).ok();
}
