//! Python tools the tests run (cfn-lint, the moto emulator, cargo-lambda), installed by
//! the tests themselves into virtual environments under the cargo target
//! folder, from PyPI.
//!
//! Each requirements file pins one environment's tools: `infra/requirements.txt`
//! (cfn-lint), `tests/requirements-moto.txt` (moto) and
//! `infra/requirements-lambda.txt` (cargo-lambda and zig). An environment's
//! folder name carries a hash of its file, so a changed pin gets a fresh
//! environment and an unchanged one is reused across runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Returns the workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .to_path_buf()
}

/// Returns the cargo target folder, three levels above the running test
/// binary (`<target>/<profile>/deps/<binary>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.ancestors()
        .nth(3)
        .expect("test binaries live in <target>/<profile>/deps")
        .to_path_buf()
}

fn run(command: &mut Command, description: &str) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("failed to start {description}: {error}"));
    assert!(
        output.status.success(),
        "{description} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Checks whether `lock` is older than any install takes (15 minutes).
fn is_stale(lock: &Path) -> bool {
    std::fs::metadata(lock)
        .and_then(|metadata| metadata.modified())
        .is_ok_and(|modified| {
            modified
                .elapsed()
                .is_ok_and(|age| age > Duration::from_secs(900))
        })
}

/// Creates the environment at `venv` and marks it complete. A lock file made
/// with `create_new` keeps two test binaries from installing at once; the
/// second waits for the first one's marker.
fn install(requirements: &Path, venv: &Path, label: &str) {
    let marker = venv.join(".complete");
    let lock = venv.with_extension("lock");
    loop {
        if marker.exists() {
            return;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if is_stale(&lock) => {
                // An install that crashed left its lock behind.
                let _ = std::fs::remove_file(&lock);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    let _ = std::fs::remove_dir_all(venv);
    run(
        Command::new("python3").args(["-m", "venv"]).arg(venv),
        "`python3 -m venv` (install Python 3 with its venv module)",
    );
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(requirements),
        &format!("`pip install -r {label}` (PyPI must be reachable on the first run)"),
    );
    std::fs::write(&marker, b"").expect("failed to mark the tools environment complete");
    let _ = std::fs::remove_file(&lock);
}

/// Returns the `bin` folder of the environment pinned by `requirements`
/// (a path relative to the workspace root), installing it first if this
/// version of the file has none yet.
pub fn venv_bin(requirements: &str) -> PathBuf {
    let path = workspace_root().join(requirements);
    let text = std::fs::read(&path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    let digest = hex::encode(&Sha256::digest(&text)[..6]);
    let stem = Path::new(requirements)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("requirements");
    let name = if stem == "requirements" {
        format!("python-tools-{digest}")
    } else {
        format!("python-{stem}-{digest}")
    };
    let venv = target_dir().join(name);
    install(&path, &venv, requirements);
    venv.join("bin")
}

/// Returns the `bin` folder of the tools' environment (`infra/requirements.txt`),
/// installing it first if this version of the file has none yet.
pub fn tools_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| venv_bin("infra/requirements.txt"))
}

/// Returns the `bin` folder of the Lambda tools' environment
/// (`infra/requirements-lambda.txt`: cargo-lambda and zig), installing it
/// first if this version of the file has none yet.
pub fn lambda_tools_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| venv_bin("infra/requirements-lambda.txt"))
}
