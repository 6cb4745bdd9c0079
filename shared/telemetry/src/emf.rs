//! CloudWatch embedded metric format (EMF): a JSON log line from which
//! CloudWatch Logs extracts metrics, so a Lambda reports counters and timers
//! by printing one line instead of calling PutMetricData.
//!
//! Structure and limits follow the EMF specification in the CloudWatch
//! user guide: an `_aws` object with a millisecond `Timestamp` and one
//! `CloudWatchMetrics` directive (namespace, one dimension set, metric
//! definitions), and each dimension and metric as a top-level member. A
//! directive contains at most 100 metrics, a dimension set at most 30
//! dimensions, and a metric at most 100 values.

use serde_json::{Map, Value, json};

/// Maximum number of metrics in one directive.
pub const MAX_METRICS: usize = 100;

/// Maximum number of dimensions in one dimension set.
pub const MAX_DIMENSIONS: usize = 30;

/// Maximum number of values of one metric in one document.
pub const MAX_VALUES: usize = 100;

/// CloudWatch units used by underwrite's counters and timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count of occurrences.
    Count,
    /// A duration in milliseconds.
    Milliseconds,
    /// A duration in seconds.
    Seconds,
    /// A size in bytes.
    Bytes,
    /// No unit.
    None,
}

impl Unit {
    /// Returns the unit's name as CloudWatch spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
            Unit::Bytes => "Bytes",
            Unit::None => "None",
        }
    }
}

/// One metric and its values in this document.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Metric name, such as `events.handled`.
    pub name: String,
    /// Its unit.
    pub unit: Unit,
    /// One or more values; CloudWatch aggregates them.
    pub values: Vec<f64>,
}

impl Metric {
    /// Creates a metric with one value.
    pub fn new(name: impl Into<String>, unit: Unit, value: f64) -> Metric {
        Metric {
            name: name.into(),
            unit,
            values: vec![value],
        }
    }
}

/// Builds an EMF document for `metrics` under `namespace`, with the given
/// dimensions (such as `service`), at `timestamp_ms` since the Unix epoch.
/// Fails when a limit is exceeded, a name is empty or repeated, or a value
/// is not finite. The message names the value and the limit.
pub fn document(
    namespace: &str,
    dimensions: &[(&str, &str)],
    metrics: &[Metric],
    timestamp_ms: i64,
) -> Result<Value, String> {
    if namespace.is_empty() {
        return Err("EMF namespace is empty: name one, such as \"underwrite\"".into());
    }
    if metrics.is_empty() || metrics.len() > MAX_METRICS {
        return Err(format!(
            "EMF document has {} metrics: allowed are 1 to {MAX_METRICS}; split them into several documents",
            metrics.len()
        ));
    }
    if dimensions.len() > MAX_DIMENSIONS {
        return Err(format!(
            "EMF dimension set has {} dimensions: the maximum is {MAX_DIMENSIONS}",
            dimensions.len()
        ));
    }
    let mut root = Map::new();
    for (name, value) in dimensions {
        if name.is_empty() || root.insert(name.to_string(), json!(value)).is_some() {
            return Err(format!(
                "EMF dimension name {name:?} is empty or repeated: each dimension needs its own name"
            ));
        }
    }
    let mut definitions = Vec::with_capacity(metrics.len());
    for metric in metrics {
        if metric.values.is_empty() || metric.values.len() > MAX_VALUES {
            return Err(format!(
                "EMF metric {:?} has {} values: allowed are 1 to {MAX_VALUES}",
                metric.name,
                metric.values.len()
            ));
        }
        if let Some(bad) = metric.values.iter().find(|v| !v.is_finite()) {
            return Err(format!(
                "EMF metric {:?} has the value {bad}: values must be finite numbers",
                metric.name
            ));
        }
        let value = match metric.values.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        if metric.name.is_empty() || root.insert(metric.name.clone(), value).is_some() {
            return Err(format!(
                "EMF metric name {:?} is empty or repeats another metric or dimension",
                metric.name
            ));
        }
        definitions.push(json!({ "Name": metric.name, "Unit": metric.unit.as_str() }));
    }
    let dimension_names: Vec<&str> = dimensions.iter().map(|(name, _)| *name).collect();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dimension_names],
                "Metrics": definitions,
            }],
        }),
    );
    Ok(Value::Object(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_directive_dimensions_and_values() {
        let metrics = [
            Metric::new("events.handled", Unit::Count, 12.0),
            Metric {
                name: "handle.duration".into(),
                unit: Unit::Milliseconds,
                values: vec![1.5, 2.0],
            },
        ];
        let doc = document(
            "underwrite",
            &[("service", "npa")],
            &metrics,
            1_711_915_200_000,
        )
        .unwrap();
        assert_eq!(doc["_aws"]["Timestamp"], 1_711_915_200_000_i64);
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "underwrite");
        assert_eq!(directive["Dimensions"], json!([["service"]]));
        assert_eq!(
            directive["Metrics"],
            json!([
                {"Name": "events.handled", "Unit": "Count"},
                {"Name": "handle.duration", "Unit": "Milliseconds"}
            ])
        );
        assert_eq!(doc["service"], "npa");
        assert_eq!(doc["events.handled"], 12.0);
        assert_eq!(doc["handle.duration"], json!([1.5, 2.0]));
    }

    #[test]
    fn document_rejects_limits_and_bad_values() {
        let one = [Metric::new("a", Unit::Count, 1.0)];
        assert!(
            document("", &[], &one, 0)
                .unwrap_err()
                .contains("namespace")
        );
        assert!(
            document("n", &[], &[], 0)
                .unwrap_err()
                .contains("0 metrics")
        );
        let many: Vec<Metric> = (0..101)
            .map(|i| Metric::new(format!("m{i}"), Unit::Count, 1.0))
            .collect();
        assert!(
            document("n", &[], &many, 0)
                .unwrap_err()
                .contains("101 metrics")
        );
        let dims: Vec<(String, String)> = (0..31).map(|i| (format!("d{i}"), "x".into())).collect();
        let dims: Vec<(&str, &str)> = dims.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert!(
            document("n", &dims, &one, 0)
                .unwrap_err()
                .contains("31 dimensions")
        );
        let nan = [Metric::new("a", Unit::Count, f64::NAN)];
        assert!(document("n", &[], &nan, 0).unwrap_err().contains("finite"));
        assert!(
            document("n", &[("a", "x")], &one, 0)
                .unwrap_err()
                .contains("repeats")
        );
    }
}
