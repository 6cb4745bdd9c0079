//! The release-shaped `mechanism` binary under cargo-lambda's local Lambda
//! emulator: `cargo lambda watch` serves the runtime API and the invoke API
//! on 127.0.0.1, the binary polls it as it would on Lambda, and `cargo
//! lambda invoke --data-file` sends an SQS event with one good and one
//! malformed record.
//!
//! The function runs on the embedded backend (`UNDERWRITE_BACKEND=embedded`,
//! one SQLite file), so no AWS endpoint is involved. `watch` runs with
//! `--only-lambda-apis` and the test starts the binary cargo built for it:
//! a build started by `watch` inside `cargo test` would wait on the build
//! folder's lock that `cargo test` holds. cargo-lambda comes from PyPI at
//! the version pinned in `infra/requirements-lambda.txt`.

use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use underwrite_mechanism::loan_key;
use underwrite_runtime::{SqliteStore, Store};
use underwrite_tests::python::{lambda_tools_bin, workspace_root};

/// Kills a child process when dropped, so a failed assertion leaves no
/// emulator or function running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

fn path_with(tools: &Path) -> String {
    format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn wait_for_port(port: u16, watch: &mut Running) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = watch.0.try_wait() {
            let mut log = String::new();
            if let Some(stderr) = watch.0.stderr.as_mut() {
                let _ = stderr.read_to_string(&mut log);
            }
            panic!("cargo lambda watch exited with {status}:\n{log}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "cargo lambda watch did not listen on 127.0.0.1:{port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn watch_invoke_reports_malformed_record() {
    let tools = lambda_tools_bin();
    let path = path_with(tools);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("underwrite.db");
    let port = free_port();

    let mut watch = Running(
        Command::new("cargo")
            .current_dir(workspace_root())
            .env("PATH", &path)
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--invoke-address",
                "127.0.0.1",
            ])
            .args(["--invoke-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cargo lambda watch starts (installed from infra/requirements-lambda.txt)"),
    );
    wait_for_port(port, &mut watch);

    let log = dir.path().join("function.log");
    let _function = Running(
        Command::new(env!("CARGO_BIN_EXE_mechanism"))
            .env_clear()
            .env("PATH", &path)
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("UNDERWRITE_BACKEND", "embedded")
            .env("UNDERWRITE_DB", &db)
            .env("UNDERWRITE_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the mechanism binary starts"),
    );

    let event =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sqs-good-and-malformed.json");
    let invoke = Command::new("cargo")
        .current_dir(workspace_root())
        .env("PATH", &path)
        .args(["lambda", "invoke", "--invoke-address", "127.0.0.1"])
        .args([
            "--invoke-port",
            &port.to_string(),
            "--output-format",
            "json",
            "--data-file",
        ])
        .arg(&event)
        .output()
        .expect("cargo lambda invoke runs");
    let function_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        invoke.status.success(),
        "cargo lambda invoke failed ({}):\n{}\n{}\nfunction log:\n{function_log}",
        invoke.status,
        String::from_utf8_lossy(&invoke.stdout),
        String::from_utf8_lossy(&invoke.stderr),
    );
    let answer: Value = serde_json::from_slice(&invoke.stdout).unwrap_or_else(|error| {
        panic!(
            "the answer is not JSON ({error}): {}",
            String::from_utf8_lossy(&invoke.stdout)
        )
    });
    assert_eq!(
        answer,
        serde_json::json!({"batchItemFailures": [
            {"itemIdentifier": "a8e2d4f6-1b3c-4d5e-8f70-9a1b2c3d4e52"}
        ]}),
        "function log:\n{function_log}"
    );

    let store = SqliteStore::open(&db).unwrap();
    let loan = store.get(&loan_key("L0001")).await.unwrap();
    assert!(loan.is_some(), "the good record's disbursal is stored");
}
