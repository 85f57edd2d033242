//! A description of the machine the benchmarks ran on, and when.

use std::path::Path;
use std::process::Command;

/// Shown for anything that could not be found out.
const UNKNOWN: &str = "unknown";

/// The machine, toolchain and date of a benchmark run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Machine {
    /// UTC date of the run, `YYYY-MM-DD`.
    pub(crate) date: String,
    /// CPU model name.
    pub(crate) cpu: String,
    /// Number of logical cores available to the process.
    pub(crate) cores: String,
    /// `rustc --version`.
    pub(crate) rustc: String,
    /// Operating system and kernel release.
    pub(crate) os: String,
}

impl Machine {
    /// Describes this machine; `root` is where `rustc` runs, so that the
    /// workspace's toolchain override (if any) applies. Never fails: anything
    /// that cannot be found out reads "unknown".
    pub(crate) fn detect(root: &Path) -> Self {
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
        Self {
            date: command_output("date", &["-u", "+%Y-%m-%d"], root)
                .unwrap_or_else(|| UNKNOWN.to_owned()),
            cpu: cpu_model().unwrap_or_else(|| UNKNOWN.to_owned()),
            cores: std::thread::available_parallelism()
                .map_or_else(|_| UNKNOWN.to_owned(), |cores| cores.to_string()),
            rustc: command_output(&rustc, &["--version"], root)
                .unwrap_or_else(|| UNKNOWN.to_owned()),
            os: command_output("uname", &["-sr"], root)
                .unwrap_or_else(|| std::env::consts::OS.to_owned()),
        }
    }

    /// The description as a Markdown list (without the date).
    pub(crate) fn markdown(&self) -> String {
        format!(
            "- CPU: {}\n- Logical cores: {}\n- Rust: {}\n- OS: {}\n",
            self.cpu, self.cores, self.rustc, self.os
        )
    }
}

/// The first "model name" of `/proc/cpuinfo` (Linux on x86).
fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo_model_name(&cpuinfo)
}

/// The value of the first `model name` line of a `/proc/cpuinfo` text.
fn cpuinfo_model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// The trimmed standard output of a successful, non-empty command run in `dir`.
fn command_output(program: &str, args: &[&str], dir: &Path) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_model_name() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Example CPU @ 3.00GHz\n\n\
                       processor\t: 1\nmodel name\t: Other\n";
        assert_eq!(
            cpuinfo_model_name(cpuinfo).as_deref(),
            Some("Example CPU @ 3.00GHz")
        );
        assert_eq!(cpuinfo_model_name("processor : 0\n"), None);
    }

    #[test]
    fn renders_a_list() {
        let machine = Machine {
            date: "2026-01-02".to_owned(),
            cpu: "Example CPU".to_owned(),
            cores: "8".to_owned(),
            rustc: "rustc 1.88.0".to_owned(),
            os: "Linux 6.1".to_owned(),
        };
        assert_eq!(
            machine.markdown(),
            "- CPU: Example CPU\n- Logical cores: 8\n- Rust: rustc 1.88.0\n- OS: Linux 6.1\n"
        );
    }

    #[test]
    fn missing_commands_are_none() {
        let dir = std::env::temp_dir();
        assert_eq!(command_output("xtask-no-such-program", &[], &dir), None);
        assert!(Machine::detect(&dir).cores != UNKNOWN);
    }
}
