//! The SAM template in `infra/`: cfn-lint, then the rules cfn-lint does not
//! check. Those are queue visibility against function timeout, a
//! dead-letter queue behind every function's queue, no wildcard resource in
//! any policy, the stores' protection settings, and each state machine's
//! definition file, substitutions and queue permissions.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Value, json};
use underwrite_tests::python::{tools_bin, workspace_root};

/// Seconds SQS keeps a dead letter: the maximum, 14 days.
const DLQ_RETENTION_SECONDS: i64 = 1_209_600;

/// AWS recommends a queue visibility timeout of at least six times the
/// function timeout, so that retries of one batch do not overlap.
const VISIBILITY_FACTOR: i64 = 6;

/// Converts YAML to JSON, turning CloudFormation's short tags (`!Ref X`,
/// `!GetAtt A.B`, `!Sub s`) into their long forms.
fn to_json(yaml: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Yaml;
    match yaml {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => serde_json::to_value(n).expect("YAML numbers are JSON numbers"),
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Yaml::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let key = key.as_str().expect("template keys are strings").to_string();
                    (key, to_json(value))
                })
                .collect(),
        ),
        Yaml::Tagged(tagged) => {
            let name = tagged.tag.to_string();
            let name = name.trim_start_matches('!');
            let long = if name == "Ref" {
                "Ref".to_string()
            } else {
                format!("Fn::{name}")
            };
            json!({ long: to_json(tagged.value) })
        }
    }
}

fn template() -> Value {
    let path = workspace_root().join("infra/template.yaml");
    let text = std::fs::read_to_string(&path).expect("infra/template.yaml exists");
    to_json(serde_yaml_ng::from_str(&text).expect("infra/template.yaml is valid YAML"))
}

fn resources(template: &Value) -> &serde_json::Map<String, Value> {
    template["Resources"]
        .as_object()
        .expect("the template has resources")
}

fn of_type<'a>(template: &'a Value, kind: &str) -> BTreeMap<&'a str, &'a Value> {
    resources(template)
        .iter()
        .filter(|(_, resource)| resource["Type"] == kind)
        .map(|(name, resource)| (name.as_str(), resource))
        .collect()
}

/// Returns the logical id that a `!GetAtt X.Arn` or `!Ref X` points at.
fn target(reference: &Value) -> Option<&str> {
    if let Some(name) = reference["Ref"].as_str() {
        return Some(name);
    }
    match &reference["Fn::GetAtt"] {
        Value::String(text) => text.split('.').next(),
        Value::Array(parts) => parts.first().and_then(Value::as_str),
        _ => None,
    }
}

fn as_list(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// Checks every function fed by a queue: the queue's visibility timeout
/// against the function's timeout, its redrive policy and dead-letter
/// queue, and the event source mapping's partial batch responses.
fn queue_problems(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let default_timeout = template["Globals"]["Function"]["Timeout"]
        .as_i64()
        .unwrap_or(3);
    let queues = of_type(template, "AWS::SQS::Queue");
    for (name, function) in of_type(template, "AWS::Serverless::Function") {
        let timeout = function["Properties"]["Timeout"]
            .as_i64()
            .unwrap_or(default_timeout);
        let events = function["Properties"]["Events"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (event_name, event) in events.iter().filter(|(_, e)| e["Type"] == "SQS") {
            let properties = &event["Properties"];
            let Some(queue_name) = target(&properties["Queue"]) else {
                problems.push(format!("{name}.{event_name}: the queue is not a reference"));
                continue;
            };
            let Some(queue) = queues.get(queue_name) else {
                problems.push(format!("{name}.{event_name}: no queue named {queue_name}"));
                continue;
            };
            let visibility = queue["Properties"]["VisibilityTimeout"]
                .as_i64()
                .unwrap_or(30);
            if visibility < VISIBILITY_FACTOR * timeout {
                problems.push(format!(
                    "{queue_name}: visibility timeout {visibility} s is under {VISIBILITY_FACTOR} x the {timeout} s timeout of {name}"
                ));
            }
            let redrive = &queue["Properties"]["RedrivePolicy"];
            match target(&redrive["deadLetterTargetArn"]).and_then(|dlq| queues.get(dlq)) {
                None => problems.push(format!("{queue_name}: no dead-letter queue")),
                Some(dlq) => {
                    if dlq["Properties"]["MessageRetentionPeriod"].as_i64()
                        != Some(DLQ_RETENTION_SECONDS)
                    {
                        problems.push(format!(
                            "{queue_name}: its dead-letter queue does not keep messages 14 days"
                        ));
                    }
                }
            }
            if redrive["maxReceiveCount"].as_i64().is_none() {
                problems.push(format!("{queue_name}: no maxReceiveCount"));
            }
            if !as_list(&properties["FunctionResponseTypes"])
                .iter()
                .any(|t| *t == "ReportBatchItemFailures")
            {
                problems.push(format!(
                    "{name}.{event_name}: no ReportBatchItemFailures, so one bad record fails the whole batch"
                ));
            }
            if properties["ScalingConfig"]["MaximumConcurrency"]
                .as_i64()
                .is_none()
            {
                problems.push(format!("{name}.{event_name}: no MaximumConcurrency"));
            }
        }
    }
    problems
}

/// The variables a function reads at start-up with `UNDERWRITE_BACKEND=aws`
/// (the AWS region comes from Lambda itself).
const AWS_BACKEND_VARIABLES: [&str; 4] = [
    "UNDERWRITE_STATE_TABLE",
    "UNDERWRITE_IDEMPOTENCY_TABLE",
    "UNDERWRITE_BUCKET",
    "UNDERWRITE_QUEUE_PREFIX",
];

/// Checks each function's environment (the Globals' variables overlaid by
/// its own) against what the function reads at start-up. That is the AWS
/// backend with its tables, bucket and queue prefix, and both signing
/// secrets. A function fed by a queue also needs a
/// `UNDERWRITE_MAX_RECEIVE_COUNT` equal to the queue's `maxReceiveCount`.
fn environment_problems(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let globals = template["Globals"]["Function"]["Environment"]["Variables"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let queues = of_type(template, "AWS::SQS::Queue");
    for (name, function) in of_type(template, "AWS::Serverless::Function") {
        let mut variables = globals.clone();
        if let Some(own) = function["Properties"]["Environment"]["Variables"].as_object() {
            variables.extend(own.clone());
        }
        if variables.get("UNDERWRITE_BACKEND") != Some(&json!("aws")) {
            problems.push(format!("{name}: UNDERWRITE_BACKEND is not aws"));
        }
        for variable in AWS_BACKEND_VARIABLES
            .iter()
            .chain(&["UNDERWRITE_SIGNING_KEY_SECRET", "UNDERWRITE_KEYRING_SECRET"])
        {
            if !variables.contains_key(*variable) {
                problems.push(format!("{name}: {variable} is not set"));
            }
        }
        let events = function["Properties"]["Events"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for event in events.values().filter(|e| e["Type"] == "SQS") {
            let Some(queue) = target(&event["Properties"]["Queue"]).and_then(|q| queues.get(q))
            else {
                continue;
            };
            let limit = &queue["Properties"]["RedrivePolicy"]["maxReceiveCount"];
            let limit = limit.as_i64().map(|n| n.to_string());
            let setting = variables
                .get("UNDERWRITE_MAX_RECEIVE_COUNT")
                .and_then(Value::as_str)
                .map(str::to_string);
            if setting != limit {
                problems.push(format!(
                    "{name}: UNDERWRITE_MAX_RECEIVE_COUNT {setting:?} differs from its queue's maxReceiveCount {limit:?}"
                ));
            }
        }
    }
    problems
}

/// Checks that no resource in an `Allow` statement is a wildcard. A `*` is
/// allowed only as the last segment after a concrete prefix, as in
/// `${Bucket.Arn}/audit/*`.
fn wildcard_problems(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut documents: Vec<(String, &Value)> = Vec::new();
    for (name, role) in of_type(template, "AWS::IAM::Role") {
        for policy in as_list(&role["Properties"]["Policies"]) {
            documents.push((
                format!("{name}/{}", policy["PolicyName"]),
                &policy["PolicyDocument"],
            ));
        }
    }
    for (name, policy) in of_type(template, "AWS::IAM::Policy") {
        documents.push((name.to_string(), &policy["Properties"]["PolicyDocument"]));
    }
    for (name, function) in of_type(template, "AWS::Serverless::Function") {
        if !function["Properties"]["Policies"].is_null() {
            problems.push(format!(
                "{name}: inline SAM policies; give the function an explicit role"
            ));
        }
    }
    for (name, document) in documents {
        for statement in as_list(&document["Statement"]) {
            if statement["Effect"] != "Allow" {
                continue;
            }
            if statement["Resource"].is_null() {
                problems.push(format!("{name}: an Allow statement without a resource"));
            }
            for resource in as_list(&statement["Resource"]) {
                let text = match resource {
                    Value::String(text) => text.clone(),
                    other => other["Fn::Sub"].as_str().unwrap_or_default().to_string(),
                };
                let Some(position) = text.find('*') else {
                    continue;
                };
                let scoped = position == text.len() - 1
                    && position > 0
                    && matches!(&text[position - 1..position], "/" | ":")
                    && text.len() > 2;
                if !scoped {
                    problems.push(format!("{name}: wildcard resource {text:?}"));
                }
            }
        }
    }
    problems
}

/// Checks the protection settings of the tables and the bucket.
fn store_problems(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, table) in of_type(template, "AWS::DynamoDB::Table") {
        let properties = &table["Properties"];
        if properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] != true {
            problems.push(format!("{name}: no point-in-time recovery"));
        }
        if properties["SSESpecification"]["SSEEnabled"] != true {
            problems.push(format!("{name}: no encryption setting"));
        }
        if properties["TimeToLiveSpecification"]["Enabled"] != true {
            problems.push(format!("{name}: no TTL attribute"));
        }
    }
    let buckets = of_type(template, "AWS::S3::Bucket");
    assert!(!buckets.is_empty(), "the template has a bucket");
    for (name, bucket) in &buckets {
        let properties = &bucket["Properties"];
        if properties["VersioningConfiguration"]["Status"] != "Enabled" {
            problems.push(format!("{name}: versioning is off"));
        }
        if properties["BucketEncryption"].is_null() {
            problems.push(format!("{name}: no default encryption"));
        }
        let block = &properties["PublicAccessBlockConfiguration"];
        for setting in [
            "BlockPublicAcls",
            "BlockPublicPolicy",
            "IgnorePublicAcls",
            "RestrictPublicBuckets",
        ] {
            if block[setting] != true {
                problems.push(format!("{name}: {setting} is not true"));
            }
        }
        let tls_only = of_type(template, "AWS::S3::BucketPolicy")
            .values()
            .filter(|policy| target(&policy["Properties"]["Bucket"]) == Some(name))
            .flat_map(|policy| as_list(&policy["Properties"]["PolicyDocument"]["Statement"]))
            .any(|statement| {
                statement["Effect"] == "Deny"
                    && statement["Condition"]["Bool"]["aws:SecureTransport"] == "false"
            });
        if !tls_only {
            problems.push(format!("{name}: no policy denying plain HTTP"));
        }
    }
    problems
}

#[test]
fn template_passes_cfn_lint() {
    let output = Command::new(tools_bin().join("cfn-lint"))
        .arg(workspace_root().join("infra/template.yaml"))
        .output()
        .expect("cfn-lint starts");
    assert!(
        output.status.success(),
        "cfn-lint reported problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_queue_has_dlq_and_timeout() {
    let template = template();
    assert_eq!(queue_problems(&template), Vec::<String>::new());
}

/// Lists the service crates under `functions/`: each is one Lambda function.
fn service_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace_root().join("functions"))
        .expect("functions/ exists")
        .map(|entry| entry.expect("functions/ is readable").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Returns the `[[bin]]` names declared by the workspace's members, read
/// from the `members` list of the root manifest.
fn workspace_binaries() -> Vec<String> {
    let root = workspace_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("root manifest");
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("the root manifest lists its members");
    let mut names = Vec::new();
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        if member.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(root.join(member).join("Cargo.toml"))
            .expect("member manifest is readable");
        let mut in_bin = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(value) = line.strip_prefix("name = ") {
                names.push(value.trim_matches('"').to_string());
            }
        }
    }
    names
}

#[test]
fn every_service_has_queue_fed_function() {
    let template = template();
    let mut fed_by_queues: Vec<String> = of_type(&template, "AWS::Serverless::Function")
        .values()
        .filter(|f| f["Properties"]["Events"].to_string().contains("\"SQS\""))
        .map(|f| {
            f["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .expect("each function names its binary")
                .to_string()
        })
        .collect();
    fed_by_queues.sort();
    assert_eq!(fed_by_queues, service_names());
}

#[test]
fn every_function_binary_exists() {
    let template = template();
    let binaries = workspace_binaries();
    for (name, function) in of_type(&template, "AWS::Serverless::Function") {
        let binary = function["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} names no binary"));
        assert!(
            binaries.iter().any(|b| b == binary),
            "{name}: no [[bin]] named {binary:?} in {binaries:?}"
        );
    }
}

#[test]
fn no_policy_has_wildcard_resource() {
    assert_eq!(wildcard_problems(&template()), Vec::<String>::new());
}

#[test]
fn stores_are_protected() {
    assert_eq!(store_problems(&template()), Vec::<String>::new());
}

#[test]
fn day_end_runs_at_ist_midnight() {
    let template = template();
    let schedules = of_type(&template, "AWS::Scheduler::Schedule");
    let schedule = schedules.get("DayEndSchedule").expect("a day-end schedule");
    let properties = &schedule["Properties"];
    assert_eq!(properties["ScheduleExpression"], "cron(0 0 * * ? *)");
    assert_eq!(properties["ScheduleExpressionTimezone"], "Asia/Kolkata");
    assert_eq!(target(&properties["Target"]["Arn"]), Some("DayEndFunction"));
}

#[test]
fn stage_parameter_names_resources() {
    let template = template();
    assert_eq!(template["Parameters"]["Stage"]["Default"], "dev");
    let text = template.to_string();
    assert!(
        text.contains("underwrite-${Stage}-mechanism"),
        "names carry the stage"
    );
}

#[test]
fn every_function_gets_aws_settings() {
    let template = template();
    assert_eq!(environment_problems(&template), Vec::<String>::new());
}

#[test]
fn checks_catch_broken_templates() {
    let mut template = template();
    let resources = template["Resources"].as_object_mut().unwrap();
    resources["NpaQueue"]["Properties"]["VisibilityTimeout"] = json!(60);
    resources["AuditQueue"]["Properties"]
        .as_object_mut()
        .unwrap()
        .remove("RedrivePolicy");
    resources["MechanismRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_array_mut()
        .unwrap()
        .push(json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}));
    resources["StateTable"]["Properties"]
        .as_object_mut()
        .unwrap()
        .remove("PointInTimeRecoverySpecification");
    resources["DataBucket"]["Properties"]["PublicAccessBlockConfiguration"]["BlockPublicPolicy"] =
        json!(false);
    resources["FeeFunction"]["Properties"]["Environment"]["Variables"]
        .as_object_mut()
        .unwrap()
        .remove("UNDERWRITE_KEYRING_SECRET");
    template["Globals"]["Function"]["Environment"]["Variables"]["UNDERWRITE_MAX_RECEIVE_COUNT"] =
        json!("3");

    let queues = queue_problems(&template);
    assert!(
        queues
            .iter()
            .any(|p| p.contains("NpaQueue: visibility timeout 60 s")),
        "{queues:?}"
    );
    assert!(
        queues
            .iter()
            .any(|p| p == "AuditQueue: no dead-letter queue"),
        "{queues:?}"
    );
    let wildcards = wildcard_problems(&template);
    assert!(
        wildcards
            .iter()
            .any(|p| p.contains("wildcard resource \"*\"")),
        "{wildcards:?}"
    );
    let environment = environment_problems(&template);
    assert!(
        environment.contains(&"FeeFunction: UNDERWRITE_KEYRING_SECRET is not set".to_string()),
        "{environment:?}"
    );
    assert!(
        environment
            .iter()
            .any(|p| p.contains("NpaFunction: UNDERWRITE_MAX_RECEIVE_COUNT")),
        "{environment:?}"
    );
    let stores = store_problems(&template);
    assert!(
        stores.contains(&"StateTable: no point-in-time recovery".to_string()),
        "{stores:?}"
    );
    assert!(
        stores.contains(&"DataBucket: BlockPublicPolicy is not true".to_string()),
        "{stores:?}"
    );
}

/// Checks the state machines: each is a Standard workflow whose definition
/// file exists, whose `DefinitionSubstitutions` fill exactly the file's
/// `${...}` placeholders with queue references, and whose role may send to
/// exactly those queues.
fn state_machine_problems(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let queues = of_type(template, "AWS::SQS::Queue");
    let machines = of_type(template, "AWS::Serverless::StateMachine");
    if machines.is_empty() {
        problems.push("no state machine".to_string());
    }
    for (name, machine) in machines {
        let properties = &machine["Properties"];
        if properties["Type"] != "STANDARD" {
            problems.push(format!(
                "{name}: not a STANDARD workflow, so executions may run twice"
            ));
        }
        let uri = properties["DefinitionUri"].as_str().unwrap_or_default();
        let Ok(definition) = std::fs::read_to_string(workspace_root().join("infra").join(uri))
        else {
            problems.push(format!("{name}: definition file infra/{uri} not found"));
            continue;
        };
        let placeholders: std::collections::BTreeSet<&str> = definition
            .split("${")
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
            .collect();
        let substitutions = properties["DefinitionSubstitutions"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let substituted: std::collections::BTreeSet<&str> =
            substitutions.keys().map(String::as_str).collect();
        if placeholders != substituted {
            problems.push(format!(
                "{name}: placeholders {placeholders:?} but substitutions {substituted:?}"
            ));
        }
        let mut sent_to: Vec<&str> = substitutions
            .values()
            .filter_map(target)
            .filter(|queue| queues.contains_key(queue))
            .collect();
        sent_to.sort_unstable();
        let role = target(&properties["Role"]).unwrap_or_default();
        let mut allowed: Vec<&str> = resources(template)[role]["Properties"]["Policies"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|policy| as_list(&policy["PolicyDocument"]["Statement"]))
            .filter(|statement| statement["Action"] == "sqs:SendMessage")
            .flat_map(|statement| as_list(&statement["Resource"]))
            .filter_map(target)
            .collect();
        allowed.sort_unstable();
        if sent_to != allowed {
            problems.push(format!(
                "{name}: sends to {sent_to:?} but its role {role} allows sqs:SendMessage on {allowed:?}"
            ));
        }
    }
    problems
}

#[test]
fn state_machine_matches_its_queues() {
    assert_eq!(state_machine_problems(&template()), Vec::<String>::new());

    let mut template = template();
    let resources = template["Resources"].as_object_mut().unwrap();
    let machine = &mut resources["OriginationStateMachine"]["Properties"];
    machine["Type"] = json!("EXPRESS");
    machine["DefinitionSubstitutions"]
        .as_object_mut()
        .unwrap()
        .remove("KfsQueueUrl");
    let problems = state_machine_problems(&template);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("not a STANDARD workflow")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("placeholders") && p.contains("KfsQueueUrl")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("its role OriginationStateMachineRole allows")),
        "{problems:?}"
    );
}
