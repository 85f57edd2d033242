//! Reading criterion's saved results.
//!
//! For each benchmark criterion writes `<criterion dir>/<benchmark>/new/` with
//! `estimates.json` (statistics, in nanoseconds) and `benchmark.json` (the
//! benchmark's id and throughput). Benchmarks in groups or with parameters sit in
//! nested directories, so the whole tree is searched.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

use crate::Result;

/// What one iteration of a benchmark processes, as criterion saves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Throughput {
    /// Bits per iteration.
    Bits(u64),
    /// Bytes per iteration, reported in binary units.
    Bytes(u64),
    /// Bytes per iteration, reported in decimal units.
    BytesDecimal(u64),
    /// Elements per iteration (whatever the benchmark counts, e.g. FLOPs).
    Elements(u64),
    /// Elements and bytes per iteration.
    ElementsAndBytes {
        /// Elements per iteration.
        elements: u64,
        /// Bytes per iteration.
        bytes: u64,
    },
}

/// One benchmark's result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BenchResult {
    /// Criterion's full id, e.g. `losses/infonce/256`.
    pub(crate) id: String,
    /// Median time of one iteration, in nanoseconds.
    pub(crate) median_ns: f64,
    /// Work per iteration, if the benchmark declares it.
    pub(crate) throughput: Option<Throughput>,
}

/// Collects the results under `criterion_dir` whose files were both written at or
/// after `since`, sorted by id. A missing directory holds no results.
pub(crate) fn collect(criterion_dir: &Path, since: SystemTime) -> Result<Vec<BenchResult>> {
    let mut results = Vec::new();
    let mut pending = vec![criterion_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(format!("cannot read {}: {err}", dir.display())),
        };
        for entry in entries {
            let entry = entry.map_err(|err| format!("cannot read {}: {err}", dir.display()))?;
            // `DirEntry::file_type` does not follow symbolic links, so no cycles.
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(entry.path());
            }
        }
        let new = dir.join("new");
        let files = [new.join("estimates.json"), new.join("benchmark.json")];
        if files.iter().all(|file| written_since(file, since)) {
            results.push(read_result(&new)?);
        }
    }
    results.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(results)
}

/// Whether `file` exists and was last modified at or after `since`.
fn written_since(file: &Path, since: SystemTime) -> bool {
    fs::metadata(file)
        .and_then(|metadata| metadata.modified())
        .is_ok_and(|modified| modified >= since)
}

/// Reads the result saved in a benchmark's `new/` directory.
pub(crate) fn read_result(new_dir: &Path) -> Result<BenchResult> {
    let estimates = read_json(&new_dir.join("estimates.json"))?;
    let benchmark = read_json(&new_dir.join("benchmark.json"))?;
    let context = |err: String| format!("{}: {err}", new_dir.display());
    Ok(BenchResult {
        id: benchmark_id(&benchmark).map_err(context)?,
        median_ns: median_ns(&estimates).map_err(context)?,
        throughput: throughput(&benchmark["throughput"]).map_err(context)?,
    })
}

/// Reads and parses a JSON file.
fn read_json(path: &Path) -> Result<Value> {
    let text =
        fs::read_to_string(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    serde_json::from_str(&text).map_err(|err| format!("invalid JSON in {}: {err}", path.display()))
}

/// The median point estimate of `estimates.json`, in nanoseconds.
fn median_ns(estimates: &Value) -> Result<f64> {
    match estimates["median"]["point_estimate"].as_f64() {
        Some(median) if median.is_finite() && median >= 0.0 => Ok(median),
        _ => Err("estimates.json has no valid median.point_estimate".to_owned()),
    }
}

/// The id of `benchmark.json`: `full_id`, or else `group_id/function_id/value_str`.
fn benchmark_id(benchmark: &Value) -> Result<String> {
    if let Some(full_id) = benchmark["full_id"].as_str() {
        return Ok(full_id.to_owned());
    }
    let group = benchmark["group_id"]
        .as_str()
        .ok_or("benchmark.json has neither full_id nor group_id")?;
    let parts = [&benchmark["function_id"], &benchmark["value_str"]];
    Ok(std::iter::once(group)
        .chain(parts.iter().filter_map(|part| part.as_str()))
        .collect::<Vec<_>>()
        .join("/"))
}

/// Parses criterion's serialised throughput: `null`, `{"Elements": 123}`, ... or
/// `{"ElementsAndBytes": {"elements": 1, "bytes": 2}}`.
fn throughput(value: &Value) -> Result<Option<Throughput>> {
    if value.is_null() {
        return Ok(None);
    }
    let unsupported = || format!("unsupported throughput {value}");
    let (kind, amount) = match value.as_object() {
        Some(object) if object.len() == 1 => object.iter().next().ok_or_else(unsupported)?,
        _ => return Err(unsupported()),
    };
    let count = |amount: &Value| amount.as_u64().ok_or_else(unsupported);
    Ok(Some(match kind.as_str() {
        "Bits" => Throughput::Bits(count(amount)?),
        "Bytes" => Throughput::Bytes(count(amount)?),
        "BytesDecimal" => Throughput::BytesDecimal(count(amount)?),
        "Elements" => Throughput::Elements(count(amount)?),
        "ElementsAndBytes" => Throughput::ElementsAndBytes {
            elements: count(&amount["elements"])?,
            bytes: count(&amount["bytes"])?,
        },
        _ => return Err(unsupported()),
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::scratch::ScratchDir;

    /// Writes a criterion-style `new/` directory for `full_id` under `criterion_dir`.
    pub(crate) fn write_result(
        criterion_dir: &Path,
        full_id: &str,
        median_ns: f64,
        throughput: &str,
    ) -> PathBuf {
        let new = criterion_dir.join(full_id).join("new");
        fs::create_dir_all(&new).unwrap();
        let estimate = |x: f64| {
            format!(
                r#"{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":{x},"upper_bound":{x}}},"point_estimate":{x},"standard_error":0.5}}"#
            )
        };
        let estimates = format!(
            r#"{{"mean":{},"median":{},"median_abs_dev":{},"slope":null,"std_dev":{}}}"#,
            estimate(median_ns * 1.1),
            estimate(median_ns),
            estimate(1.0),
            estimate(2.0),
        );
        let (group, rest) = full_id.split_once('/').unwrap_or((full_id, ""));
        let function = if rest.is_empty() {
            "null".to_owned()
        } else {
            format!("{rest:?}")
        };
        let benchmark = format!(
            r#"{{"group_id":{group:?},"function_id":{function},"value_str":null,"throughput":{throughput},"full_id":{full_id:?},"directory_name":{full_id:?},"title":{full_id:?}}}"#
        );
        fs::write(new.join("estimates.json"), estimates).unwrap();
        fs::write(new.join("benchmark.json"), benchmark).unwrap();
        new
    }

    /// Sets the modification time of a result's files to `when`.
    pub(crate) fn set_modified(new_dir: &Path, when: SystemTime) {
        for name in ["estimates.json", "benchmark.json"] {
            let file = fs::File::options()
                .write(true)
                .open(new_dir.join(name))
                .unwrap();
            file.set_modified(when).unwrap();
        }
    }

    #[test]
    fn reads_a_result() {
        let dir = ScratchDir::new("read-result");
        let new = write_result(dir.path(), "losses/infonce", 1234.5, r#"{"Elements":4096}"#);
        let result = read_result(&new).unwrap();
        assert_eq!(
            result,
            BenchResult {
                id: "losses/infonce".to_owned(),
                median_ns: 1234.5,
                throughput: Some(Throughput::Elements(4096)),
            }
        );
    }

    #[test]
    fn id_falls_back_to_its_parts() {
        let benchmark: Value = serde_json::from_str(
            r#"{"group_id":"g","function_id":"f","value_str":"8","throughput":null}"#,
        )
        .unwrap();
        assert_eq!(benchmark_id(&benchmark).unwrap(), "g/f/8");
        let benchmark: Value = serde_json::from_str(r#"{"group_id":"g"}"#).unwrap();
        assert_eq!(benchmark_id(&benchmark).unwrap(), "g");
        assert!(benchmark_id(&Value::Null).is_err());
    }

    #[test]
    fn parses_throughputs() {
        let parse = |text: &str| throughput(&serde_json::from_str(text).unwrap());
        assert_eq!(parse("null"), Ok(None));
        assert_eq!(parse(r#"{"Bytes":456}"#), Ok(Some(Throughput::Bytes(456))));
        assert_eq!(
            parse(r#"{"BytesDecimal":7}"#),
            Ok(Some(Throughput::BytesDecimal(7)))
        );
        assert_eq!(parse(r#"{"Bits":8}"#), Ok(Some(Throughput::Bits(8))));
        assert_eq!(
            parse(r#"{"ElementsAndBytes":{"elements":1,"bytes":2}}"#),
            Ok(Some(Throughput::ElementsAndBytes {
                elements: 1,
                bytes: 2
            }))
        );
        assert!(parse(r#"{"Furlongs":1}"#).is_err());
        assert!(parse(r#"{"Bytes":-1}"#).is_err());
        assert!(parse("42").is_err());
    }

    #[test]
    fn rejects_bad_files() {
        let dir = ScratchDir::new("bad-files");
        let new = write_result(dir.path(), "a", 1.0, "null");
        fs::write(new.join("estimates.json"), "{not json").unwrap();
        assert!(read_result(&new).unwrap_err().contains("invalid JSON"));
        fs::write(new.join("estimates.json"), r#"{"median":{}}"#).unwrap();
        assert!(read_result(&new).unwrap_err().contains("median"));
        fs::remove_file(new.join("estimates.json")).unwrap();
        assert!(read_result(&new).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn collects_only_fresh_results() {
        let dir = ScratchDir::new("collect");
        let criterion = dir.path().join("criterion");
        let now = SystemTime::now();
        write_result(&criterion, "b/nested/64", 2.0, "null");
        write_result(&criterion, "a", 1.0, r#"{"Bytes":10}"#);
        let stale = write_result(&criterion, "c", 3.0, "null");
        set_modified(&stale, now - Duration::from_secs(3600));
        // Directories without results (criterion's `report/`) are ignored.
        fs::create_dir_all(criterion.join("report")).unwrap();

        let since = now - Duration::from_secs(60);
        let ids: Vec<_> = collect(&criterion, since)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a", "b/nested/64"]);
        assert_eq!(collect(&dir.path().join("missing"), since), Ok(vec![]));
    }
}
