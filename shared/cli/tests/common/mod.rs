//! Helpers that run the real `underwrite` binary, shared by the CLI test
//! files. Each test file is its own crate and uses a subset of them.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Builds a command for the binary in `dir`, without any `UNDERWRITE_*`
/// variable of the calling environment.
pub fn command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_underwrite"));
    command.current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("UNDERWRITE_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs the binary in `dir` with `args` and waits for it.
pub fn underwrite(dir: &Path, args: &[&str]) -> Output {
    command(dir).args(args).output().expect("underwrite runs")
}

/// Joins a finished command's stdout and stderr.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
