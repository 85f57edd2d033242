//! `cargo xtask bench`: runs the criterion benchmarks and records their results.
//!
//! A full run rewrites the generated section of `docs/PERFORMANCE.md`; a quick
//! run (short measurements, for checking that the benchmarks work) only prints
//! its table and saves it to `target/xtask-bench-quick.md`.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::Result;
use crate::criterion::{self, BenchResult};
use crate::machine::Machine;
use crate::markdown::{self, Row};
use crate::units;

/// The package and bench target that hold the benchmarks.
const PACKAGE: &str = "yaware-benches";
/// The criterion bench target (`harness = false`) of [`PACKAGE`].
const BENCH: &str = "bench_main";
/// Criterion settings of a quick run: a smoke test, not a measurement.
const QUICK_ARGS: [&str; 6] = [
    "--warm-up-time",
    "0.2",
    "--measurement-time",
    "0.5",
    "--sample-size",
    "10",
];
/// The document a full run updates, relative to the workspace root.
const PERFORMANCE_DOC: &str = "docs/PERFORMANCE.md";
/// The file a quick run writes, relative to the target directory.
const QUICK_REPORT: &str = "xtask-bench-quick.md";
/// candle's setting for its element-wise thread pool, fixed to 1 unless the user sets it.
const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";
/// File in the criterion directory whose modification time marks a run's start.
const START_STAMP: &str = "xtask-bench-start.stamp";

/// Command-line options of `cargo xtask bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// Short smoke run that leaves `docs/PERFORMANCE.md` alone.
    pub(crate) quick: bool,
    /// Arguments passed on to criterion, e.g. a benchmark filter.
    pub(crate) criterion_args: Vec<String>,
}

impl Options {
    /// Parses the arguments after `bench`: `--quick` is ours, the rest is criterion's.
    pub(crate) fn parse(args: &[String]) -> Self {
        Self {
            quick: args.iter().any(|arg| arg == "--quick"),
            criterion_args: args
                .iter()
                .filter(|arg| *arg != "--quick")
                .cloned()
                .collect(),
        }
    }
}

/// Runs the benchmarks and records the results of this run.
pub(crate) fn run(options: &Options) -> Result<()> {
    let root = workspace_root()?;
    let target = target_dir(&root);
    let criterion_dir = criterion_dir(&root, &target);
    let since = start_stamp(&criterion_dir)?;
    cargo_bench(&root, [&target, &criterion_dir], options)?;

    let results = criterion::collect(&criterion_dir, since)?;
    if results.is_empty() {
        return Err(format!(
            "no benchmark results of this run under {} (does the filter match a benchmark?)",
            criterion_dir.display()
        ));
    }
    let machine = Machine::detect(&root);
    let rows: Vec<Row> = results.iter().map(row).collect();
    if options.quick {
        let path = target.join(QUICK_REPORT);
        print!("{}", write_quick_report(&path, &machine, &rows)?);
        eprintln!("xtask: wrote {}", path.display());
    } else {
        let path = root.join(PERFORMANCE_DOC);
        update_performance_doc(&path, &machine, rows)?;
        eprintln!(
            "xtask: updated {} ({} results)",
            path.display(),
            results.len()
        );
    }
    Ok(())
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} has no parent directory", manifest_dir.display()))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to `root`) or `root/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Where criterion saves its results: `$CRITERION_HOME` if set, as criterion
/// itself prefers, otherwise `criterion/` in the target directory.
fn criterion_dir(root: &Path, target: &Path) -> PathBuf {
    match std::env::var_os("CRITERION_HOME") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => target.join("criterion"),
    }
}

/// Writes the [`START_STAMP`] file in `criterion_dir` and returns its modification
/// time. Results modified at or after it are this run's: comparing time stamps of
/// the same file system avoids clock and time stamp granularity mismatches.
fn start_stamp(criterion_dir: &Path) -> Result<SystemTime> {
    let path = criterion_dir.join(START_STAMP);
    write(
        &path,
        "Written by `cargo xtask bench` when it starts the benchmarks.\n",
    )?;
    fs::metadata(&path)
        .and_then(|metadata| metadata.modified())
        .map_err(|err| {
            format!(
                "cannot read the modification time of {}: {err}",
                path.display()
            )
        })
}

/// Runs `cargo bench` on the benchmarks from the workspace root; `dirs` are the
/// resolved target and criterion directories.
fn cargo_bench(root: &Path, dirs: [&Path; 2], options: &Options) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args(["bench", "-p", PACKAGE, "--bench", BENCH, "--"]);
    if options.quick {
        command.args(QUICK_ARGS);
    }
    command.args(&options.criterion_args);
    // The benchmark runs in its package's directory: give criterion absolute
    // paths so that it saves its results where they are read back.
    for (var, dir) in ["CARGO_TARGET_DIR", "CRITERION_HOME"].into_iter().zip(dirs) {
        if std::env::var_os(var).is_some_and(|value| !value.is_empty()) {
            command.env(var, dir);
        }
    }
    // candle's element-wise thread pool spins between ops and takes the cores that gemm (on
    // rayon) needs; on small machines one candle thread is much faster (docs/PERFORMANCE.md).
    // A value the user set wins.
    if std::env::var_os(CANDLE_THREADS_VAR).is_none() {
        command.env(CANDLE_THREADS_VAR, "1");
    }
    let status = command
        .status()
        .map_err(|err| format!("cannot run `cargo bench`: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo bench` failed ({status})"))
    }
}

/// The table row of a result.
fn row(result: &BenchResult) -> Row {
    Row {
        id: result.id.clone(),
        median: units::format_time(result.median_ns),
        throughput: result.throughput.as_ref().map_or_else(
            || "-".to_owned(),
            |throughput| units::format_throughput(throughput, result.median_ns),
        ),
    }
}

/// Merges `rows` into the generated section of the document at `path`,
/// creating the document if needed.
fn update_performance_doc(path: &Path, machine: &Machine, rows: Vec<Row>) -> Result<()> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == ErrorKind::NotFound => None,
        Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
    };
    let preamble = format!(
        "Generated by `cargo xtask bench` on {}. Rows of benchmarks not run then keep the \
         results of an earlier run.\n\n{}",
        machine.date,
        machine.markdown()
    );
    let text = markdown::update_document(existing.as_deref(), &preamble, rows)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    write(path, &text)
}

/// Writes the report of a quick run to `path` and returns it.
fn write_quick_report(path: &Path, machine: &Machine, rows: &[Row]) -> Result<String> {
    let report = format!(
        "Quick run of `cargo xtask bench --quick` on {} (smoke-test settings, not for \
         comparison).\n\n{}\n{}",
        machine.date,
        machine.markdown(),
        markdown::render_table(rows)
    );
    write(path, &report)?;
    Ok(report)
}

/// Writes `text` to `path`, creating its directory if needed.
fn write(path: &Path, text: &str) -> Result<()> {
    let written = match path.parent() {
        Some(dir) => fs::create_dir_all(dir).and_then(|()| fs::write(path, text)),
        None => fs::write(path, text),
    };
    written.map_err(|err| format!("cannot write {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::criterion::tests::{set_modified, write_result};
    use crate::scratch::ScratchDir;

    fn machine() -> Machine {
        Machine {
            date: "2026-01-02".to_owned(),
            cpu: "Example CPU".to_owned(),
            cores: "8".to_owned(),
            rustc: "rustc 1.88.0".to_owned(),
            os: "Linux 6.1".to_owned(),
        }
    }

    #[test]
    fn parses_options() {
        let args = ["losses", "--quick", "--noplot"].map(String::from);
        assert_eq!(
            Options::parse(&args),
            Options {
                quick: true,
                criterion_args: vec!["losses".to_owned(), "--noplot".to_owned()],
            }
        );
        assert!(!Options::parse(&[]).quick);
    }

    #[test]
    fn records_fresh_results_in_the_document() {
        let dir = ScratchDir::new("record");
        let criterion_dir = dir.path().join("target/criterion");
        let stale = write_result(&criterion_dir, "old/bench", 1.0, "null");
        set_modified(&stale, SystemTime::now() - Duration::from_secs(600));
        let since = start_stamp(&criterion_dir).unwrap();
        write_result(
            &criterion_dir,
            "losses/infonce",
            1500.0,
            r#"{"Elements":3000}"#,
        );
        write_result(&criterion_dir, "kernels/rbf", 2.5e6, r#"{"Bytes":1048576}"#);

        let results = criterion::collect(&criterion_dir, since).unwrap();
        let rows: Vec<Row> = results.iter().map(row).collect();
        assert_eq!(
            rows,
            vec![
                Row {
                    id: "kernels/rbf".to_owned(),
                    median: "2.50 ms".to_owned(),
                    throughput: "400 MiB/s".to_owned(),
                },
                Row {
                    id: "losses/infonce".to_owned(),
                    median: "1.50 µs".to_owned(),
                    throughput: "2.00 Gelem/s".to_owned(),
                },
            ]
        );

        let doc = dir.path().join("docs/PERFORMANCE.md");
        fs::create_dir_all(doc.parent().unwrap()).unwrap();
        fs::write(
            &doc,
            "# Performance\n\nHand-written.\n\n<!-- xtask-bench:begin -->\n\
             | benchmark | median | throughput |\n| --- | ---: | ---: |\n\
             | losses/infonce | 9.99 µs | 1.00 Gelem/s |\n| other/group | 1.00 ns | - |\n\
             <!-- xtask-bench:end -->\n\nMore notes.\n",
        )
        .unwrap();
        update_performance_doc(&doc, &machine(), rows.clone()).unwrap();
        let text = fs::read_to_string(&doc).unwrap();
        assert!(text.starts_with("# Performance\n\nHand-written.\n\n<!-- xtask-bench:begin -->\n"));
        assert!(text.ends_with("<!-- xtask-bench:end -->\n\nMore notes.\n"));
        assert!(text.contains("Generated by `cargo xtask bench` on 2026-01-02."));
        assert!(text.contains("- CPU: Example CPU\n- Logical cores: 8\n"));
        assert!(text.contains(
            "| kernels/rbf | 2.50 ms | 400 MiB/s |\n\
             | losses/infonce | 1.50 µs | 2.00 Gelem/s |\n\
             | other/group | 1.00 ns | - |\n"
        ));
        assert!(!text.contains("9.99 µs"));

        let quick = dir.path().join("target/xtask-bench-quick.md");
        let report = write_quick_report(&quick, &machine(), &rows).unwrap();
        assert_eq!(fs::read_to_string(&quick).unwrap(), report);
        assert!(report.contains("| losses/infonce | 1.50 µs | 2.00 Gelem/s |\n"));
    }

    #[test]
    fn missing_document_is_created() {
        let dir = ScratchDir::new("create-doc");
        let doc = dir.path().join("docs/PERFORMANCE.md");
        let rows = vec![Row {
            id: "a".to_owned(),
            median: "1.00 ns".to_owned(),
            throughput: "-".to_owned(),
        }];
        update_performance_doc(&doc, &machine(), rows).unwrap();
        let text = fs::read_to_string(&doc).unwrap();
        assert!(text.starts_with("# Performance\n\n<!-- xtask-bench:begin -->\n"));
        assert!(text.contains("| a | 1.00 ns | - |\n"));
    }
}
