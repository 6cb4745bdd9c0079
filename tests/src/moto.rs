//! The moto AWS emulator for the tests: installed from PyPI by the tests
//! themselves (`tests/requirements-moto.txt`, through [`crate::python`]),
//! started on 127.0.0.1 on a free port, and stopped when its handle drops.
//!
//! The server runs under a small shell watchdog that also stops it when the
//! test process exits without dropping the handle (the watchdog's standard
//! input is a pipe from the test process). [`MotoServer::endpoint`] is the
//! one value the AWS adapters need (`aws.endpoint_url`).
//!
//! [`Stack::create`] makes the resources of one test with unique names: the
//! two DynamoDB tables, the bucket, a queue and a dead-letter queue per
//! service with a redrive policy, and secrets.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_sqs::types::QueueAttributeName;
use underwrite_aws::{AwsClients, AwsConfig};

/// The environment variable that, when set, points the tests at an
/// already-running emulator instead of starting one (for debugging).
pub const ENDPOINT_VARIABLE: &str = "UNDERWRITE_TEST_AWS_ENDPOINT";

/// A running moto server; stopped on drop.
pub struct MotoServer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port`; returns the status and
/// body.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

impl MotoServer {
    /// Installs moto if needed, starts `moto_server -H 127.0.0.1 -p <free
    /// port>` and waits until it answers.
    pub fn start() -> MotoServer {
        let bin = crate::python::venv_bin("tests/requirements-moto.txt");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("underwrite-moto-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("moto log file");
        // The watchdog: moto runs in the background; `cat` returns when the
        // test process closes the pipe (on drop or exit), and moto is killed.
        let script = format!(
            "'{}' -H 127.0.0.1 -p {port} & server=$!; cat >/dev/null; kill $server 2>/dev/null; wait $server 2>/dev/null",
            bin.join("moto_server").display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .env("MOTO_PORT", port.to_string())
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .expect("failed to start moto_server");
        let server = MotoServer {
            child: Some(child),
            port,
            log,
        };
        server.wait_ready(Duration::from_secs(60));
        server
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = http(self.port, "GET", "/moto-api/data.json", "") {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!(
                    "moto_server did not answer on 127.0.0.1:{} within {timeout:?}; its log:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Returns the port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the endpoint URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Turns on moto's execution of Step Functions state machines
    /// (`POST /moto-api/config`). Call it before creating state machines:
    /// those created earlier vanish when it is turned on.
    pub fn enable_step_functions(&self) {
        let (status, body) = http(
            self.port,
            "POST",
            "/moto-api/config",
            r#"{"stepfunctions":{"execute_state_machine":true},"lambda":{"use_docker":false}}"#,
        )
        .expect("moto answers /moto-api/config");
        // moto 5.2.5 replies 201 with the settings it keeps.
        assert!(
            status == 200 || status == 201,
            "moto refused the config ({status}): {body}"
        );
    }

    /// Clears every resource (`POST /moto-api/reset`).
    pub fn reset(&self) {
        let (status, body) =
            http(self.port, "POST", "/moto-api/reset", "").expect("moto answers /moto-api/reset");
        assert_eq!(status, 200, "moto refused the reset: {body}");
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing the pipe lets the watchdog stop the server.
            drop(child.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    let _ = std::fs::remove_file(&self.log);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The credentials and region the SDK uses against the emulator.
pub fn set_test_credentials() {
    // SAFETY: set before any client is built; every test sets the same values.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::remove_var("AWS_PROFILE");
    }
}

/// One test's resources in the emulator, with names unique to the test.
pub struct Stack {
    /// The settings that reach them.
    pub config: AwsConfig,
    /// Clients built once from `config`.
    pub clients: AwsClients,
    /// Queue URLs by name (`<service>` and `<service>-dlq`).
    pub queues: BTreeMap<String, String>,
}

impl Stack {
    /// Creates the tables, the bucket, and for each of `services` a queue
    /// with a dead-letter queue (`maxReceiveCount` = `max_receives`), all
    /// named `<stage>-...` where `stage` is unique to the test.
    pub async fn create(endpoint: &str, services: &[&str], max_receives: u32) -> Stack {
        set_test_credentials();
        let stage = format!(
            "t{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() % 1_000_000_000_000)
                .unwrap_or(0)
        );
        let prefix = format!("underwrite-{stage}-");
        let mut config = AwsConfig {
            endpoint_url: endpoint.to_string(),
            region: "us-east-1".into(),
            state_table: format!("{prefix}state"),
            idempotency_table: format!("{prefix}idempotency"),
            bucket: format!("{prefix}data"),
            queue_prefix: prefix.clone(),
            ..AwsConfig::default()
        };
        let clients = AwsClients::new(&config).await.expect("clients");
        for (table, range) in [
            (&config.state_table, true),
            (&config.idempotency_table, false),
        ] {
            let mut request = clients
                .dynamodb
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name("pk")
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .unwrap(),
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name("pk")
                        .key_type(KeyType::Hash)
                        .build()
                        .unwrap(),
                );
            if range {
                request = request
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name("sk")
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .unwrap(),
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name("sk")
                            .key_type(KeyType::Range)
                            .build()
                            .unwrap(),
                    );
            }
            request.send().await.expect("create table");
        }
        clients
            .s3
            .create_bucket()
            .bucket(&config.bucket)
            .send()
            .await
            .expect("create bucket");
        let mut queues = BTreeMap::new();
        for service in services {
            let dlq = clients
                .sqs
                .create_queue()
                .queue_name(format!("{prefix}{service}-dlq"))
                .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
                .send()
                .await
                .expect("create dead-letter queue");
            let dlq_url = dlq.queue_url().unwrap().to_string();
            let arn = clients
                .sqs
                .get_queue_attributes()
                .queue_url(&dlq_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .expect("dead-letter queue ARN")
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                .expect("QueueArn");
            let queue = clients
                .sqs
                .create_queue()
                .queue_name(format!("{prefix}{service}"))
                .attributes(
                    QueueAttributeName::RedrivePolicy,
                    serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives})
                        .to_string(),
                )
                .send()
                .await
                .expect("create queue");
            queues.insert(service.to_string(), queue.queue_url().unwrap().to_string());
            queues.insert(format!("{service}-dlq"), dlq_url);
        }
        config.queues = queues.clone();
        Stack {
            config,
            clients,
            queues,
        }
    }

    /// Returns the variables the SAM template gives a function, pointed at
    /// this stack's tables, bucket and queues, with redrive after 3 receives.
    pub fn template_variables(&self) -> BTreeMap<String, String> {
        let config = &self.config;
        [
            ("UNDERWRITE_BACKEND", "aws"),
            ("AWS_ENDPOINT_URL", config.endpoint_url.as_str()),
            ("AWS_REGION", config.region.as_str()),
            ("UNDERWRITE_STATE_TABLE", config.state_table.as_str()),
            (
                "UNDERWRITE_IDEMPOTENCY_TABLE",
                config.idempotency_table.as_str(),
            ),
            ("UNDERWRITE_BUCKET", config.bucket.as_str()),
            ("UNDERWRITE_QUEUE_PREFIX", config.queue_prefix.as_str()),
            ("UNDERWRITE_MAX_RECEIVE_COUNT", "3"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
    }

    /// Stores a secret.
    pub async fn put_secret(&self, name: &str, text: &str) {
        self.clients
            .secrets
            .create_secret()
            .name(name)
            .secret_string(text)
            .send()
            .await
            .expect("create secret");
    }
}

/// Starts an emulator for one test, or uses the one whose endpoint
/// [`ENDPOINT_VARIABLE`] names; returns the server (if started) and the
/// endpoint URL.
pub fn emulator() -> (Option<MotoServer>, String) {
    match std::env::var(ENDPOINT_VARIABLE) {
        Ok(endpoint) if !endpoint.is_empty() => (None, endpoint),
        _ => {
            let server = MotoServer::start();
            let endpoint = server.endpoint();
            (Some(server), endpoint)
        }
    }
}
