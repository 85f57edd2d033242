//! `cargo xtask`: project automation for yaware-rs, in the style of
//! <https://github.com/matklad/cargo-xtask>.
//!
//! The `xtask` alias in `.cargo/config.toml` runs this binary, so the tasks need
//! nothing but a Rust toolchain. See [`USAGE`] for the commands.

// A command-line tool reports to its user on stdout.
#![allow(clippy::print_stdout)]

mod bench;
mod criterion;
mod machine;
mod markdown;
#[cfg(test)]
mod scratch;
mod units;

use std::process::ExitCode;

/// Errors are user-facing messages: every task reports what went wrong and stops.
pub(crate) type Result<T> = std::result::Result<T, String>;

/// Help text for `cargo xtask help`.
const USAGE: &str = "\
Usage: cargo xtask <command> [args...]

Commands:
  bench [--quick] [criterion args...]
        Run `cargo bench -p yaware-benches --bench bench_main` and record the median
        times and throughputs. A full run updates the generated section of
        docs/PERFORMANCE.md (rows of benchmarks not run this time are kept).
        --quick makes a short smoke run that only prints the table and writes it
        to target/xtask-bench-quick.md. Other arguments (e.g. a benchmark filter
        such as `losses`) are passed to criterion.
  help  Print this message.
";

fn main() -> ExitCode {
    let args = match std::env::args_os()
        .skip(1)
        .map(|arg| arg.into_string())
        .collect::<std::result::Result<Vec<_>, _>>()
    {
        Ok(args) => args,
        Err(arg) => {
            eprintln!("error: argument {arg:?} is not valid UTF-8");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some("bench") => bench::run(&bench::Options::parse(&args[1..])),
        Some(other) => {
            eprint!("error: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
