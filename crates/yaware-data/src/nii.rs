//! A folder of NIfTI volumes (`.nii`, `.nii.gz`) with a BIDS `participants.tsv` / CSV table
//! giving each subject's meta-data (see [`NiftiDataset`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nifti::{IntoNdArray, NiftiHeader, NiftiObject, NiftiType, ReaderOptions};

use crate::augment::Volume;
use crate::error::{Error, Result};
use crate::loader::{Dataset, Sample};
use crate::npy::{SkipReport, Table};

fn file_error(path: &Path, problem: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Whether `path` names a NIfTI-1 single file (`.nii` or `.nii.gz`).
fn is_nifti(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// The NIfTI files under `dir`, recursively, sorted by path.
fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| file_error(&d, format!("cannot list: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| file_error(&d, format!("cannot list: {e}")))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if is_nifti(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The `<label>` of the BIDS entity `sub-<label>` in the file name, if any: the entity at the
/// start of the name or after `_`, else the first `sub-` anywhere (tools prefix the names of
/// their outputs, e.g. CAT12's `mwp1sub-01_T1w.nii`).
pub(crate) fn subject_label(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let starts: Vec<usize> = name.match_indices("sub-").map(|(i, _)| i).collect();
    let start = starts
        .iter()
        .find(|&&i| i == 0 || name.as_bytes()[i - 1] == b'_')
        .or(starts.first())?
        + 4;
    let rest = &name[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// Where a [`NiftiDataset`] finds its meta-data and how strict it is.
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiOptions {
    /// The `participants.tsv` (tab-separated) or CSV table; `None`: no targets, and file names
    /// need no `sub-` entity.
    pub table: Option<PathBuf>,
    /// The target columns (e.g. `["age"]`); empty: the table only checks that every subject has
    /// meta-data and no target is given.
    pub targets: Vec<String>,
    /// The column of subject ids (`participant_id`, BIDS).
    pub id_column: String,
    /// Skip bad files and bad rows, listing each in the [`SkipReport`], instead of failing on
    /// the first. Problems of the whole folder or table (no file, a missing column, duplicate
    /// ids) still fail.
    pub skip_bad: bool,
    /// Decompress every file at open time, so a truncated `.nii.gz` payload is found there
    /// rather than at `get` (costs one full read of the folder).
    pub verify_data: bool,
}

impl Default for NiftiOptions {
    fn default() -> Self {
        Self {
            table: None,
            targets: Vec::new(),
            id_column: "participant_id".into(),
            skip_bad: false,
            verify_data: false,
        }
    }
}

impl NiftiOptions {
    /// Targets `columns` of `table`, ids in `participant_id`, strict.
    pub fn with_table(table: impl Into<PathBuf>, columns: &[&str]) -> Self {
        Self {
            table: Some(table.into()),
            targets: columns.iter().map(|c| c.to_string()).collect(),
            ..Self::default()
        }
    }
}

/// The NIfTI element types read (converted to f32).
fn supported(datatype: NiftiType) -> bool {
    use NiftiType::*;
    matches!(
        datatype,
        Uint8 | Int8 | Int16 | Uint16 | Int32 | Uint32 | Int64 | Uint64 | Float32 | Float64
    )
}

/// A voxel-to-world affine, row-major: `world = A · (i, j, k, 1)ᵀ`, `(i, j, k)` the file's
/// voxel indices (the volume's D, H, W), world coordinates in the file's units (mm).
pub type Affine = [[f64; 4]; 4];

/// Largest absolute difference between two affines' elements accepted as "the same grid".
pub const AFFINE_TOLERANCE: f64 = 1e-4;

/// The affine of `header` as the `nifti` crate's `NiftiHeader::affine` computes it (nibabel's
/// rule): the `sform` rows if `sform_code > 0`, else the `qform` (quaternion `b, c, d` with
/// `a = √(1 − b² − c² − d²)`, voxel sizes `pixdim[1..=3]`, the last one times
/// `qfac = pixdim[0]`, offsets `qoffset_x, y, z`) if `qform_code > 0`, else the shape-and-zooms
/// affine `diag(−pixdim₁, pixdim₂, pixdim₃)` centred on the volume. Where the crate panics (a
/// negative voxel size or a `qfac` other than ±1 in a qform; `qfac = 0` is read as 1, as the
/// NIfTI standard says; a quaternion `b² + c² + d² > 1`), this is the file's problem.
fn header_affine(h: &NiftiHeader) -> std::result::Result<Affine, String> {
    let row = |r: [f32; 4]| r.map(f64::from);
    if h.sform_code != 0 {
        return Ok([
            row(h.srow_x),
            row(h.srow_y),
            row(h.srow_z),
            [0.0, 0.0, 0.0, 1.0],
        ]);
    }
    let px = [1, 2, 3].map(|i| f64::from(h.pixdim[i]));
    if h.qform_code == 0 {
        let n = [1, 2, 3].map(|i| f64::from(h.dim[i]));
        let spacing = [-px[0], px[1], px[2]];
        let mut a = [[0.0; 4]; 4];
        for i in 0..3 {
            a[i][i] = spacing[i];
            a[i][3] = -(n[i] - 1.0) / 2.0 * spacing[i];
        }
        a[3][3] = 1.0;
        return Ok(a);
    }
    if px.iter().any(|&p| p < 0.0) {
        return Err(format!(
            "invalid qform: negative voxel size (pixdim[1..=3] = {px:?})"
        ));
    }
    let qfac = match f64::from(h.pixdim[0]) {
        0.0 => 1.0,
        q if (q.abs() - 1.0).abs() < 1e-11 => q,
        q => {
            return Err(format!(
                "invalid qform: qfac (pixdim[0]) = {q}, expected 1 or -1"
            ));
        }
    };
    let (b, c, d) = (
        f64::from(h.quatern_b),
        f64::from(h.quatern_c),
        f64::from(h.quatern_d),
    );
    let w2 = 1.0 - (b * b + c * c + d * d);
    if w2 < -3.0 * f64::from(f32::EPSILON) {
        return Err(format!(
            "invalid qform: quaternion (b, c, d) = ({b}, {c}, {d}) has b² + c² + d² > 1"
        ));
    }
    let a = w2.max(0.0).sqrt();
    // The rotation of the quaternion (a, b, c, d), normalised.
    let nq = a * a + b * b + c * c + d * d;
    let r = if nq < f64::EPSILON {
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    } else {
        let s = 2.0 / nq;
        let (x, y, z) = (b * s, c * s, d * s);
        let (wx, wy, wz) = (a * x, a * y, a * z);
        let (xx, xy, xz) = (b * x, b * y, b * z);
        let (yy, yz, zz) = (c * y, c * z, d * z);
        [
            [1.0 - (yy + zz), xy - wz, xz + wy],
            [xy + wz, 1.0 - (xx + zz), yz - wx],
            [xz - wy, yz + wx, 1.0 - (xx + yy)],
        ]
    };
    let scale = [px[0], px[1], px[2] * qfac];
    let offset = [h.quatern_x, h.quatern_y, h.quatern_z].map(f64::from);
    let mut m = [[0.0; 4]; 4];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = r[i][j] * scale[j];
        }
        m[i][3] = offset[i];
    }
    m[3][3] = 1.0;
    Ok(m)
}

/// The largest absolute difference between the elements of two affines.
fn affine_distance(a: &Affine, b: &Affine) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Reads and checks the header of `path`: a supported data type, 3 or 4 dimensions, and for an
/// uncompressed file a length that holds the data. Returns the volume shape `(C, X, Y, Z)` and
/// the affine.
fn read_header(path: &Path) -> std::result::Result<([usize; 4], Affine), String> {
    let header = NiftiHeader::from_file(path).map_err(|e| format!("unreadable header: {e}"))?;
    let dim = header
        .dim()
        .map_err(|e| format!("invalid dimensions: {e}"))?;
    let shape = match *dim {
        [x, y, z] => [1, x, y, z],
        [x, y, z, t] => [t, x, y, z],
        _ => {
            return Err(format!(
                "wrong dimensionality: {} dimensions {dim:?}, expected 3 (X, Y, Z) or 4 (X, Y, Z, channels)",
                dim.len()
            ));
        }
    }
    .map(usize::from);
    let datatype = header
        .data_type()
        .map_err(|_| format!("unknown data type code {}", header.datatype))?;
    if !supported(datatype) {
        return Err(format!(
            "unsupported data type {datatype:?} (integers and floats are read)"
        ));
    }
    if !path.to_string_lossy().ends_with(".gz") {
        let needed = header.vox_offset as u64
            + (shape.iter().product::<usize>() * datatype.size_of()) as u64;
        let len = std::fs::metadata(path)
            .map_err(|e| format!("cannot stat: {e}"))?
            .len();
        if len < needed {
            return Err(format!(
                "truncated: {len} bytes, the header announces {needed}"
            ));
        }
    }
    Ok((shape, header_affine(&header)?))
}

/// Reads the voxels of `path` as a `(C, X, Y, Z)` volume, checking they have `shape`.
fn read_volume(path: &Path, shape: [usize; 4]) -> std::result::Result<Volume, String> {
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| format!("unreadable or truncated: {e}"))?;
    let arr = obj
        .into_volume()
        .into_ndarray::<f32>()
        .map_err(|e| format!("cannot convert the voxels: {e}"))?;
    let [c, x, y, z] = shape;
    let logical: Vec<usize> = arr.shape().to_vec();
    if logical != [x, y, z] && logical != [x, y, z, c] {
        return Err(format!(
            "the file changed since it was opened: shape {logical:?}, expected (X, Y, Z) = ({x}, {y}, {z}) with {c} channel(s)"
        ));
    }
    // The array is in Fortran (column-major) memory order, as in the file:
    // f[i + X·(j + Y·(k + Z·t))]. Our layout is row-major (t, i, j, k).
    let f = arr
        .as_slice_memory_order()
        .ok_or("the voxels are not contiguous")?;
    let mut data = vec![0.0f32; f.len()];
    let mut src = f.iter();
    for t in 0..c {
        let channel = &mut data[t * x * y * z..(t + 1) * x * y * z];
        for k in 0..z {
            for j in 0..y {
                for (i, v) in src.by_ref().take(x).enumerate() {
                    channel[(i * y + j) * z + k] = *v;
                }
            }
        }
    }
    Volume::new(shape, data).map_err(|e| e.to_string())
}

/// NIfTI volumes of one shape from a folder, with optional targets from a BIDS
/// `participants.tsv` table.
///
/// **Reading is lazy.** [`NiftiDataset::open`] reads every file's *header* (for `.nii.gz` only
/// the first few hundred decompressed bytes) and checks the dimensionality, the data type, that
/// every volume has one shape, and, for `.nii`, that the file is long enough for its data. The
/// voxels are read at [`get`](Dataset::get), so a folder of thousands of subjects opens in
/// seconds. A `.nii.gz` whose compressed payload is truncated has a good header: it is found at
/// `get` (a typed error naming the file), or at open time with [`NiftiOptions::verify_data`],
/// which decompresses every file once.
///
/// **Layout.** A 3D file `(X, Y, Z)` is one channel; a 4D file `(X, Y, Z, T)` has its fourth
/// axis as the channels, `T` of them. The [`Volume`] is `(C, D, H, W) = (T, X, Y, Z)`: the
/// spatial axes keep the file's logical order (nibabel's `get_fdata()` order, the one OpenBHB's
/// `.npy` arrays use). `scl_slope` / `scl_inter` are applied (a slope of 0 means no scaling).
/// The voxels are taken as stored, never resampled: every file must have the same
/// voxel-to-world affine (the `sform`, else the `qform`, else the shape-and-zooms one, as the
/// `nifti` crate's `NiftiHeader::affine` gives it; within [`AFFINE_TOLERANCE`] per element), so
/// the volumes share one orientation and one grid (as registered or VBM images do). The common
/// affine is [`NiftiDataset::affine`]; a file whose affine differs from the first kept file's is
/// [`Error::AffineMismatch`] (or skipped and reported with [`NiftiOptions::skip_bad`]).
///
/// **Matching files to the table.** The files are found recursively under the folder (hidden
/// entries skipped) and sorted by path. With a table, each file name must contain the BIDS
/// entity `sub-<label>` (`<label>` alphanumeric; at the start of the name or after `_`, else
/// anywhere, for tools' prefixed outputs such as CAT12's `mwp1sub-01_T1w.nii`), matched to the
/// id column (`participant_id` by default), whose values may carry the `sub-` prefix or not. Several files of one subject
/// (sessions, runs) are several samples with the same targets.
#[derive(Debug, Clone)]
pub struct NiftiDataset {
    files: Vec<PathBuf>,
    subjects: Vec<Option<String>>,
    targets: Option<Vec<Vec<f64>>>,
    shape: [usize; 4],
    affine: Affine,
}

impl NiftiDataset {
    /// Opens the folder `dir` as `options` says; with [`NiftiOptions::skip_bad`] the report
    /// lists every file left out (index in the sorted list of files found, and the reason naming
    /// the file), otherwise it is empty and the first problem is an error.
    ///
    /// Errors ([`Error::File`], naming the file or table): a folder without NIfTI file, an
    /// unreadable or truncated file, a wrong dimensionality or data type, a volume whose shape
    /// differs from the first good file's, a file without `sub-<label>` or whose subject has no
    /// row, a missing target or id column, duplicate ids, a non-numeric or non-finite target, an
    /// invalid `qform`; and [`Error::AffineMismatch`] for a file whose affine differs from the
    /// first good file's.
    pub fn open(dir: impl AsRef<Path>, options: &NiftiOptions) -> Result<(Self, SkipReport)> {
        let dir = dir.as_ref();
        let found = list_files(dir)?;
        if found.is_empty() {
            return Err(file_error(dir, "no .nii or .nii.gz file in the folder"));
        }
        let mut report = SkipReport::default();
        let skip = options.skip_bad;
        // Handles a per-file problem: skipped and reported, or the error.
        let mut bad = |i: usize, path: &Path, problem: String| -> Result<()> {
            if skip {
                report
                    .skipped
                    .push((i, format!("{}: {problem}", path.display())));
                Ok(())
            } else {
                Err(file_error(path, problem))
            }
        };

        // The table: the target columns, and a row per subject label.
        let table = match &options.table {
            Some(path) => {
                let t = Table::read(path)?;
                let id = t.column_index(&options.id_column)?;
                let cols: Vec<usize> = options
                    .targets
                    .iter()
                    .map(|c| t.column_index(c))
                    .collect::<Result<_>>()?;
                let mut rows: HashMap<String, usize> = HashMap::new();
                for r in 0..t.len() {
                    let raw = t.cell(r, id);
                    let label = raw.strip_prefix("sub-").unwrap_or(raw).to_string();
                    if let Some(first) = rows.insert(label, r) {
                        return Err(file_error(
                            path,
                            format!(
                                "subject `{raw}` appears in rows {} and {} of column `{}`",
                                first + 1,
                                r + 1,
                                options.id_column
                            ),
                        ));
                    }
                }
                Some((path.as_path(), t, cols, rows))
            }
            None => None,
        };

        let (mut files, mut subjects, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        let mut shape: Option<[usize; 4]> = None;
        let mut affine: Option<Affine> = None;
        for (i, path) in found.iter().enumerate() {
            let (s, a) = match read_header(path) {
                Ok(s) => s,
                Err(p) => {
                    bad(i, path, p)?;
                    continue;
                }
            };
            if let Some(first) = shape
                && first != s
            {
                bad(
                    i,
                    path,
                    format!(
                        "volume shape (C, X, Y, Z) = {s:?} differs from {first:?} of {}",
                        files
                            .first()
                            .map_or(dir, |p: &PathBuf| p.as_path())
                            .display()
                    ),
                )?;
                continue;
            }
            if let Some(expected) = affine
                && affine_distance(&a, &expected) > AFFINE_TOLERANCE
            {
                let reference = files[0].clone();
                if !skip {
                    return Err(Error::AffineMismatch {
                        path: path.clone(),
                        reference,
                        affine: Box::new(a),
                        expected: Box::new(expected),
                    });
                }
                bad(
                    i,
                    path,
                    format!(
                        "voxel-to-world affine {a:?} differs from {expected:?} of {} (by more than {AFFINE_TOLERANCE})",
                        reference.display()
                    ),
                )?;
                continue;
            }
            let (subject, target) = match &table {
                None => (subject_label(path).map(str::to_string), None),
                Some((tpath, t, cols, rows)) => {
                    let Some(label) = subject_label(path) else {
                        bad(i, path, "no BIDS `sub-<label>` in the file name".into())?;
                        continue;
                    };
                    let Some(&r) = rows.get(label) else {
                        bad(
                            i,
                            path,
                            format!(
                                "subject `sub-{label}` has no row in {} (column `{}`)",
                                tpath.display(),
                                options.id_column
                            ),
                        )?;
                        continue;
                    };
                    match cols
                        .iter()
                        .map(|&j| t.number(r, j))
                        .collect::<std::result::Result<Vec<f64>, String>>()
                    {
                        Ok(row) => (Some(label.to_string()), Some(row)),
                        Err(p) => {
                            if !skip {
                                return Err(file_error(tpath, p));
                            }
                            bad(i, path, format!("{}: {p}", tpath.display()))?;
                            continue;
                        }
                    }
                }
            };
            if options.verify_data
                && let Err(p) = read_volume(path, s)
            {
                bad(i, path, p)?;
                continue;
            }
            shape.get_or_insert(s);
            affine.get_or_insert(a);
            files.push(path.clone());
            subjects.push(subject);
            targets.push(target);
        }
        let Some(shape) = shape else {
            return Err(file_error(
                dir,
                format!("every NIfTI file was skipped\n{report}"),
            ));
        };
        let targets = (table.is_some() && !options.targets.is_empty())
            .then(|| targets.into_iter().map(Option::unwrap_or_default).collect());
        Ok((
            Self {
                files,
                subjects,
                targets,
                shape,
                affine: affine.expect("set with the shape"),
            },
            report,
        ))
    }

    /// The files of the samples, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The subject label of each sample (`sub-<label>` in its file name), if any.
    pub fn subjects(&self) -> &[Option<String>] {
        &self.subjects
    }

    /// `(C, D, H, W)` of every volume.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The voxel-to-world affine every volume shares (that of the first file kept; the others
    /// agree within [`AFFINE_TOLERANCE`]).
    pub fn affine(&self) -> Affine {
        self.affine
    }
}

impl Dataset for NiftiDataset {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let path = self.files.get(index).ok_or_else(|| {
            Error::Dataset(format!(
                "index {index} out of range (len {})",
                self.files.len()
            ))
        })?;
        Ok(Sample {
            volume: read_volume(path, self.shape).map_err(|p| file_error(path, p))?,
            target: self.targets.as_ref().map(|t| t[index].clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bids_subject_labels() {
        let l = |s: &str| subject_label(Path::new(s)).map(str::to_string);
        assert_eq!(l("sub-01_T1w.nii.gz").as_deref(), Some("01"));
        assert_eq!(l("/x/sub-A12_ses-1_T1w.nii").as_deref(), Some("A12"));
        assert_eq!(
            l("mwp1sub-3_T1w.nii").as_deref(),
            Some("3"),
            "a tool's prefix"
        );
        assert_eq!(l("x_sub-3.nii").as_deref(), Some("3"));
        assert_eq!(
            l("rsub-9_sub-3.nii").as_deref(),
            Some("3"),
            "the entity first"
        );
        assert_eq!(l("sub-.nii"), None);
        assert_eq!(l("T1w.nii"), None);
    }
}
