//! NumPy `.npy` volumes read sample by sample (OpenBHB ships its images this way), and
//! `participants.tsv` / CSV tables for the targets.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::augment::Volume;
use crate::error::{Error, Result, TableSyntax};
use crate::loader::{Dataset, Sample};

fn file_error(path: &Path, problem: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Element types of `.npy` files that can be read (converted to f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
    U8,
    I16,
    I32,
    I64,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Self> {
        match descr {
            "<f4" => Some(Dtype::F32),
            "<f8" => Some(Dtype::F64),
            "|u1" | "<u1" => Some(Dtype::U8),
            "<i2" => Some(Dtype::I16),
            "<i4" => Some(Dtype::I32),
            "<i8" => Some(Dtype::I64),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::I16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }

    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        let s = self.size();
        bytes
            .chunks_exact(s)
            .map(|b| match self {
                Dtype::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
                Dtype::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
                Dtype::U8 => b[0] as f32,
                Dtype::I16 => i16::from_le_bytes(b.try_into().expect("2 bytes")) as f32,
                Dtype::I32 => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f32,
                Dtype::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            })
            .collect()
    }
}

/// The value of `key` in the header dict (`'descr': '<f4', 'fortran_order': False, …`).
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}':"))? + key.len() + 3;
    let rest = header[start..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

/// An `.npy` array of volumes `(N, D, H, W)` or `(N, C, D, H, W)`, read one sample at a time.
#[derive(Debug, Clone)]
pub struct NpyVolumes {
    path: PathBuf,
    file: std::sync::Arc<File>,
    dtype: Dtype,
    data_offset: u64,
    n: usize,
    shape: [usize; 4],
}

impl NpyVolumes {
    /// Opens `path`, checking the header, the dimensionality and that the file is complete.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| file_error(path, format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| file_error(path, e.to_string()))?
            .len();
        let mut prefix = [0u8; 10];
        file.read_exact_at(&mut prefix, 0)
            .map_err(|_| file_error(path, "truncated: no .npy header"))?;
        if &prefix[..6] != b"\x93NUMPY" {
            return Err(file_error(path, "not an .npy file (bad magic)"));
        }
        let (header_len, header_start) = match prefix[6] {
            1 => (u16::from_le_bytes([prefix[8], prefix[9]]) as usize, 10u64),
            2 | 3 => {
                let mut l = [0u8; 4];
                file.read_exact_at(&mut l, 8)
                    .map_err(|_| file_error(path, "truncated header"))?;
                (u32::from_le_bytes(l) as usize, 12u64)
            }
            v => return Err(file_error(path, format!("unsupported .npy version {v}"))),
        };
        let mut header = vec![0u8; header_len];
        file.read_exact_at(&mut header, header_start)
            .map_err(|_| file_error(path, "truncated header"))?;
        let header = String::from_utf8_lossy(&header).to_string();
        let descr = header_value(&header, "descr").map(|d| d.trim_matches('\''));
        let dtype = descr.and_then(Dtype::parse).ok_or_else(|| {
            file_error(
                path,
                format!("unsupported dtype {descr:?} (f4, f8, u1, i2, i4, i8 little-endian)"),
            )
        })?;
        if header_value(&header, "fortran_order") != Some("False") {
            return Err(file_error(path, "Fortran-ordered arrays are not supported"));
        }
        let shape: Vec<usize> = header_value(&header, "shape")
            .map(|s| s.trim_matches(|c| c == '(' || c == ')'))
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(|x| x.parse::<usize>())
                    .collect()
            })
            .transpose()
            .ok()
            .flatten()
            .ok_or_else(|| file_error(path, "unreadable shape in the header"))?;
        let (n, shape) = match shape[..] {
            [n, d, h, w] => (n, [1, d, h, w]),
            [n, c, d, h, w] => (n, [c, d, h, w]),
            _ => {
                return Err(file_error(
                    path,
                    format!(
                        "wrong dimensionality: shape {shape:?}, expected (N, D, H, W) or (N, C, D, H, W)"
                    ),
                ));
            }
        };
        let data_offset = header_start + header_len as u64;
        let needed = data_offset + (n * shape.iter().product::<usize>() * dtype.size()) as u64;
        if len < needed {
            return Err(file_error(
                path,
                format!("truncated: {len} bytes, the header announces {needed}"),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: std::sync::Arc::new(file),
            dtype,
            data_offset,
            n,
            shape,
        })
    }

    /// Number of volumes.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the array holds no volume.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// `(C, D, H, W)` of every volume.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Volume `index`, read from disk.
    pub fn read(&self, index: usize) -> Result<Volume> {
        if index >= self.n {
            return Err(file_error(
                &self.path,
                format!("index {index} out of range (len {})", self.n),
            ));
        }
        let count: usize = self.shape.iter().product();
        let bytes = count * self.dtype.size();
        let mut buf = vec![0u8; bytes];
        self.file
            .read_exact_at(&mut buf, self.data_offset + (index * bytes) as u64)
            .map_err(|e| file_error(&self.path, format!("reading volume {index}: {e}")))?;
        Volume::new(self.shape, self.dtype.decode(&buf))
    }
}

/// Writes `data` (row-major, `shape`) as a little-endian f32 `.npy` file.
pub fn write_npy(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let dims = shape.iter().map(|d| format!("{d},")).collect::<String>();
    let dims = if shape.len() == 1 {
        dims
    } else {
        dims.trim_end_matches(',').to_string()
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    data.iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    File::create(path)
        .and_then(|mut f| f.write_all(&out))
        .map_err(|e| file_error(path, format!("cannot write: {e}")))
}

/// A record of a delimited text: the line it starts on (1-based) and its fields.
pub(crate) type Record = (usize, Vec<String>);

/// The fields of each record of a delimited text, with the line each record starts on
/// (1-based), RFC 4180 style: records end at a newline (`\n` or `\r\n`); a field that starts
/// with `"` (after blanks) is quoted: it holds the separator, newlines and `""` (one `"`)
/// literally, up to the closing `"`, after which only blanks may come before the separator or
/// the end of the record. Unquoted fields are trimmed; a `"` inside one is kept as is. Blank
/// lines (outside quotes) are skipped.
pub(crate) fn parse_delimited(
    text: &str,
    sep: char,
) -> std::result::Result<Vec<Record>, (usize, TableSyntax)> {
    let blank = |c: char| c != sep && c != '\n' && c.is_whitespace();
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    loop {
        // One record.
        let start_line = line;
        let mut fields = Vec::new();
        let mut any_quoted = false;
        let end_of_text = loop {
            // One field: leading blanks, then a quoted or an unquoted field.
            let mut lead = String::new();
            while let Some(&c) = chars.peek().filter(|&&c| blank(c)) {
                lead.push(c);
                chars.next();
            }
            let field = if chars.peek() == Some(&'"') {
                chars.next();
                any_quoted = true;
                let open_line = line;
                let mut f = String::new();
                loop {
                    match chars.next() {
                        None => return Err((open_line, TableSyntax::UnterminatedQuote)),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            f.push('"');
                        }
                        Some('"') => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            f.push(c);
                        }
                    }
                }
                while chars.peek().is_some_and(|&c| blank(c)) {
                    chars.next();
                }
                match chars.peek() {
                    None | Some('\n') => {}
                    Some(&c) if c == sep => {}
                    Some(&c) => return Err((line, TableSyntax::TextAfterQuote(c))),
                }
                f
            } else {
                let mut f = lead;
                while let Some(&c) = chars.peek().filter(|&&c| c != sep && c != '\n') {
                    f.push(c);
                    chars.next();
                }
                f.trim().to_string()
            };
            fields.push(field);
            match chars.next() {
                Some('\n') => {
                    line += 1;
                    break false;
                }
                None => break true,
                Some(_) => {} // the separator: the next field
            }
        };
        let is_blank = !any_quoted && fields.len() == 1 && fields[0].is_empty();
        if !is_blank {
            records.push((start_line, fields));
        }
        if end_of_text {
            return Ok(records);
        }
    }
}

/// A delimited table (`.tsv` tab-separated, anything else comma-separated) with a header row;
/// fields may be quoted, RFC 4180 style (see [`Table::read`]).
#[derive(Debug, Clone)]
pub struct Table {
    path: PathBuf,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Reads the table; every row must have as many fields as the header. Fields may be
    /// double-quoted, RFC 4180 style: a quoted field holds separators, newlines and `""` (a
    /// literal `"`) and is kept as written (not trimmed); unquoted fields are trimmed; blank
    /// lines are skipped. A quote never closed is [`Error::TableSyntax`] with
    /// [`TableSyntax::UnterminatedQuote`], naming the file and the line where it opened.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| file_error(path, format!("cannot read: {e}")))?;
        let sep = if path.extension().is_some_and(|e| e == "tsv") {
            '\t'
        } else {
            ','
        };
        let records = parse_delimited(&text, sep).map_err(|(line, kind)| Error::TableSyntax {
            path: path.to_path_buf(),
            line,
            kind,
        })?;
        let mut records = records.into_iter();
        let (_, columns) = records
            .next()
            .ok_or_else(|| file_error(path, "empty table"))?;
        let mut rows = Vec::new();
        for (i, (line, row)) in records.enumerate() {
            if row.len() != columns.len() {
                return Err(file_error(
                    path,
                    format!(
                        "row {} (line {line}) has {} fields, the header has {}",
                        i + 1,
                        row.len(),
                        columns.len()
                    ),
                ));
            }
            rows.push(row);
        }
        Ok(Self {
            path: path.to_path_buf(),
            columns,
            rows,
        })
    }

    /// Number of data rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no data row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The cell of data row `i` (0-based) in column `j`.
    pub(crate) fn cell(&self, i: usize, j: usize) -> &str {
        &self.rows[i][j]
    }

    /// The index of column `name`; a missing column lists the existing ones.
    pub(crate) fn column_index(&self, name: &str) -> Result<usize> {
        self.columns.iter().position(|c| c == name).ok_or_else(|| {
            file_error(
                &self.path,
                format!("no column `{name}`; columns: {}", self.columns.join(", ")),
            )
        })
    }

    /// The finite number in row `i` (0-based data row) of column `j`, or what is wrong with it.
    pub(crate) fn number(&self, i: usize, j: usize) -> std::result::Result<f64, String> {
        let (name, cell) = (&self.columns[j], &self.rows[i][j]);
        match cell.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            Ok(v) => Err(format!(
                "row {}, column `{name}`: non-finite value {v}",
                i + 1
            )),
            Err(_) => Err(format!(
                "row {}, column `{name}`: `{cell}` is not a number",
                i + 1
            )),
        }
    }

    /// A numeric column; a missing column lists the existing ones, a non-numeric or NaN value
    /// names its row.
    pub fn numeric_column(&self, name: &str) -> Result<Vec<f64>> {
        let j = self.column_index(name)?;
        (0..self.rows.len())
            .map(|i| self.number(i, j).map_err(|p| file_error(&self.path, p)))
            .collect()
    }
}

/// The samples a dataset left out, each with its reason (nothing is dropped silently).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SkipReport {
    /// `(sample index in the file, reason)` of every skipped sample.
    pub skipped: Vec<(usize, String)>,
}

impl SkipReport {
    /// Number of skipped samples.
    pub fn count(&self) -> usize {
        self.skipped.len()
    }
}

impl std::fmt::Display for SkipReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} sample(s) skipped", self.count())?;
        for (i, why) in &self.skipped {
            writeln!(f, "  sample {i}: {why}")?;
        }
        Ok(())
    }
}

/// Volumes from an `.npy` array with targets from a table whose rows follow the array's order
/// (OpenBHB's `participants.tsv` layout), by column names (e.g. `["age"]`).
#[derive(Debug, Clone)]
pub struct NpyDataset {
    volumes: NpyVolumes,
    /// Array index of every sample kept.
    kept: Vec<usize>,
    targets: Option<Vec<Vec<f64>>>,
}

impl NpyDataset {
    /// Opens the array and, if given, reads the target columns of `table`; the table must have
    /// one row per volume, and every target must be a finite number.
    pub fn open(npy: impl AsRef<Path>, table: Option<(&Path, &[&str])>) -> Result<Self> {
        let (dataset, report) = Self::open_with(npy, table, false)?;
        debug_assert_eq!(report.count(), 0, "nothing is skipped unless asked");
        Ok(dataset)
    }

    /// As [`open`](Self::open), but samples whose targets are not finite numbers are skipped and
    /// listed in the report instead of failing (a missing column or a table of the wrong length
    /// still fails: they are not one sample's problem).
    pub fn open_skipping_bad(
        npy: impl AsRef<Path>,
        table: (&Path, &[&str]),
    ) -> Result<(Self, SkipReport)> {
        Self::open_with(npy, Some(table), true)
    }

    fn open_with(
        npy: impl AsRef<Path>,
        table: Option<(&Path, &[&str])>,
        skip_bad: bool,
    ) -> Result<(Self, SkipReport)> {
        let volumes = NpyVolumes::open(npy)?;
        let mut report = SkipReport::default();
        let Some((path, columns)) = table else {
            let kept = (0..volumes.len()).collect();
            return Ok((
                Self {
                    volumes,
                    kept,
                    targets: None,
                },
                report,
            ));
        };
        let t = Table::read(path)?;
        if t.len() != volumes.len() {
            return Err(file_error(
                path,
                format!(
                    "{} rows of meta-data for {} volumes in {}",
                    t.len(),
                    volumes.len(),
                    volumes.path.display()
                ),
            ));
        }
        let cols: Vec<usize> = columns
            .iter()
            .map(|c| t.column_index(c))
            .collect::<Result<_>>()?;
        let (mut kept, mut targets) = (Vec::new(), Vec::new());
        for i in 0..t.len() {
            match cols
                .iter()
                .map(|&j| t.number(i, j))
                .collect::<std::result::Result<Vec<f64>, String>>()
            {
                Ok(row) => {
                    kept.push(i);
                    targets.push(row);
                }
                Err(problem) if skip_bad => report.skipped.push((i, problem)),
                Err(problem) => return Err(file_error(path, problem)),
            }
        }
        Ok((
            Self {
                volumes,
                kept,
                targets: Some(targets),
            },
            report,
        ))
    }
}

impl Dataset for NpyDataset {
    fn len(&self) -> usize {
        self.kept.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let &i = self.kept.get(index).ok_or_else(|| {
            Error::Dataset(format!(
                "index {index} out of range (len {})",
                self.kept.len()
            ))
        })?;
        Ok(Sample {
            volume: self.volumes.read(i)?,
            target: self.targets.as_ref().map(|t| t[index].clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, sep: char) -> Vec<Vec<String>> {
        parse_delimited(text, sep)
            .unwrap()
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    #[test]
    fn quoted_fields_hold_separators_newlines_and_escaped_quotes() {
        let text = "id,note,age\r\n\"sub-1\", \"a, b\" ,21\n2,\"say \"\"hi\"\"\nthen\r\nbye\",3\n\n4,\"\",5";
        assert_eq!(
            parse(text, ','),
            [
                vec!["id", "note", "age"],
                vec!["sub-1", "a, b", "21"],
                vec!["2", "say \"hi\"\nthen\r\nbye", "3"],
                vec!["4", "", "5"],
            ]
        );
        let lines: Vec<usize> = parse_delimited(text, ',')
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(lines, [1, 2, 3, 7], "the line each record starts on");
        // Tab-separated: commas are plain text, tabs inside quotes are kept.
        assert_eq!(
            parse("a\tb\n\" x\ty \"\t1,5\n", '\t'),
            [vec!["a", "b"], vec![" x\ty ", "1,5"]]
        );
        // Unquoted fields are trimmed, a quote inside one is kept, an empty last field counts.
        assert_eq!(
            parse(" a ,b\"c,\n", ','),
            [vec!["a", "b\"c", ""]],
            "unquoted"
        );
        // A quoted empty line is a record of one empty field, a blank line is none.
        assert_eq!(parse("x\n   \n\"\"\n", ','), [vec!["x"], vec![""]]);
    }

    #[test]
    fn quoting_errors_name_the_line() {
        assert_eq!(
            parse_delimited("a,b\n1,\"open\n\n2,3\n", ','),
            Err((2, TableSyntax::UnterminatedQuote))
        );
        assert_eq!(
            parse_delimited("a,b\n\"x\ny\"z,1\n", ','),
            Err((3, TableSyntax::TextAfterQuote('z')))
        );
    }
}
