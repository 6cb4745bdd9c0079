//! Training of the risk scorecard on the German credit applicants.
//!
//! Rows are split into a training set and a held-out set by a seeded hash
//! of the row number; bins and their weights of evidence, then the
//! logistic regression, are fitted on the training rows only, and both sets
//! are scored for the AUC and Gini written into the model file. The result
//! is a deterministic function of the CSV bytes: `underwrite train risk`
//! writes it, and a test checks that the committed model file is what
//! training produces.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use sha2::{Digest, Sha256};
use underwrite_domain::scorecard::{
    Binning, GradeBand, Metrics, Scorecard, TrainingSet, Value, auc, fit_bins, fit_logistic,
    round_model,
};

use crate::german_credit::{DEFAULT_INR_PER_DM, split_csv_line};

/// Version of the model this training produces; `risk.scored` carries it.
pub const MODEL_VERSION: &str = "german-credit-woe-1";

/// Seed of the held-out split.
pub const SPLIT_SEED: u64 = 20_241_205;

/// Share of rows held out, in tenths of a percent (300 is 30%).
pub const HOLDOUT_PER_MILLE: u64 = 300;

/// The CSV column of a feature and its kind.
enum Source {
    /// A category label, taken as written.
    Category(&'static str),
    /// A whole number multiplied by a factor.
    Number(&'static str, i64),
}

/// The features: name, CSV column and binning bounds (empty for
/// categorical features). Numeric bounds were fixed before training, at
/// round values of each quantity, not searched for on the data.
const FEATURES: [(&str, Source, &[i64]); 10] = [
    (
        "checking_account",
        Source::Category("status_of_existing_checking_account"),
        &[],
    ),
    ("credit_history", Source::Category("credit_history"), &[]),
    (
        "savings",
        Source::Category("savings_account_and_bonds"),
        &[],
    ),
    (
        "employment_since",
        Source::Category("present_employment_since"),
        &[],
    ),
    ("property", Source::Category("property"), &[]),
    ("housing", Source::Category("housing"), &[]),
    (
        "other_installment_plans",
        Source::Category("other_installment_plans"),
        &[],
    ),
    (
        "tenor_months",
        Source::Number("duration_in_month", 1),
        &[12, 24, 36],
    ),
    (
        "amount_rupees",
        // Rupees at the German credit conversion's rate per Deutsche Mark.
        Source::Number("credit_amount", DEFAULT_INR_PER_DM),
        &[120_000, 300_000, 600_000],
    ),
    (
        "age_years",
        Source::Number("age_in_years", 1),
        &[25, 35, 50],
    ),
];

/// Grades by PD: A below 15%, B below 30%, C below 50%, D the rest. The
/// grades are those of the default pricing rate grid.
const GRADES: [(&str, f64); 4] = [("A", 0.15), ("B", 0.30), ("C", 0.50), ("D", 1.0)];

/// SplitMix64, a fixed 64-bit mixing function, so the split does not
/// depend on any library's generator.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Checks whether 1-based data row `row` is held out.
pub fn is_held_out(row: u64) -> bool {
    splitmix64(SPLIT_SEED ^ row) % 1000 < HOLDOUT_PER_MILLE
}

struct Rows {
    values: Vec<Vec<Value>>,
    bad: Vec<bool>,
    held_out: Vec<bool>,
}

fn read_rows(csv_text: &str) -> anyhow::Result<Rows> {
    let text = csv_text.strip_prefix('\u{feff}').unwrap_or(csv_text);
    let mut lines = text.lines();
    let header = split_csv_line(lines.next().ok_or_else(|| anyhow!("the CSV is empty"))?)
        .map_err(|reason| anyhow!("line 1: {reason}"))?;
    let position = |column: &str| {
        header
            .iter()
            .position(|name| name == column)
            .ok_or_else(|| anyhow!("line 1: missing column {column:?} in the header"))
    };
    let outcome = position("creditability")?;
    let mut columns = Vec::new();
    for (_, source, _) in &FEATURES {
        let column = match source {
            Source::Category(column) | Source::Number(column, _) => column,
        };
        columns.push(position(column)?);
    }
    let mut rows = Rows {
        values: Vec::new(),
        bad: Vec::new(),
        held_out: Vec::new(),
    };
    for (index, line) in lines.enumerate() {
        let line_number = index + 2;
        let fields =
            split_csv_line(line).map_err(|reason| anyhow!("line {line_number}: {reason}"))?;
        if fields.len() != header.len() {
            bail!(
                "line {line_number}: expected {} fields as in the header, found {}",
                header.len(),
                fields.len()
            );
        }
        let mut values = Vec::with_capacity(FEATURES.len());
        for ((name, source, _), &column) in FEATURES.iter().zip(&columns) {
            let text = fields[column].as_str();
            values.push(match source {
                Source::Category(_) => Value::Category(text.to_string()),
                Source::Number(_, factor) => {
                    let number: i64 = text.parse().with_context(|| {
                        format!("line {line_number}: {name} {text:?} is not a whole number")
                    })?;
                    Value::Number(number * factor)
                }
            });
        }
        let bad = match fields[outcome].as_str() {
            "bad" => true,
            "good" => false,
            other => bail!("line {line_number}: creditability {other:?} is neither good nor bad"),
        };
        rows.values.push(values);
        rows.bad.push(bad);
        rows.held_out.push(is_held_out(index as u64 + 1));
    }
    Ok(rows)
}

fn metrics(card: &Scorecard, rows: &[&Vec<Value>], bad: &[bool]) -> anyhow::Result<Metrics> {
    let mut scores = Vec::with_capacity(rows.len());
    for row in rows {
        let values: BTreeMap<String, Value> = card
            .features
            .iter()
            .zip(row.iter())
            .map(|(feature, value)| (feature.name.clone(), value.clone()))
            .collect();
        scores.push(card.score(&values)?.pd);
    }
    let area = auc(&scores, bad).ok_or_else(|| anyhow!("a set has only one outcome"))?;
    Ok(Metrics {
        rows: rows.len() as u32,
        bad: bad.iter().filter(|b| **b).count() as u32,
        auc: round_model(area),
        gini: round_model(2.0 * area - 1.0),
    })
}

/// Trains the scorecard on the German credit CSV. `source` names the file
/// in the model's `training_data` field.
pub fn train(csv_bytes: &[u8], source: &str) -> anyhow::Result<Scorecard> {
    let text = std::str::from_utf8(csv_bytes).context("the CSV is not UTF-8")?;
    let rows = read_rows(text)?;
    let pick = |held_out: bool| -> (Vec<&Vec<Value>>, Vec<bool>) {
        rows.values
            .iter()
            .zip(&rows.bad)
            .zip(&rows.held_out)
            .filter(|(_, h)| **h == held_out)
            .map(|((v, b), _)| (v, *b))
            .unzip()
    };
    let (train_rows, train_bad) = pick(false);
    let (holdout_rows, holdout_bad) = pick(true);

    let definitions: Vec<(String, Binning)> = FEATURES
        .iter()
        .map(|(name, _, bounds)| {
            let binning = if bounds.is_empty() {
                Binning::Categorical
            } else {
                Binning::Numeric {
                    upper_bounds: bounds.to_vec(),
                }
            };
            (name.to_string(), binning)
        })
        .collect();
    let owned: Vec<Vec<Value>> = train_rows.iter().map(|r| (*r).clone()).collect();
    let mut features = fit_bins(&TrainingSet {
        definitions: &definitions,
        rows: &owned,
        bad: &train_bad,
    })?;
    let design: Vec<Vec<f64>> = owned
        .iter()
        .map(|row| {
            features
                .iter()
                .zip(row)
                .map(|(feature, value)| {
                    feature
                        .bin_index(value)
                        .map(|i| i.map_or(0.0, |i| feature.bins[i].woe))
                })
                .collect::<Result<Vec<f64>, _>>()
        })
        .collect::<Result<_, _>>()?;
    let (intercept, coefficients) = fit_logistic(&design, &train_bad)?;
    for (feature, coefficient) in features.iter_mut().zip(coefficients) {
        feature.coefficient = round_model(coefficient);
    }
    let mut card = Scorecard {
        version: MODEL_VERSION.into(),
        training_data: source.into(),
        training_data_sha256: hex::encode(Sha256::digest(csv_bytes)),
        split: format!(
            "row n (1-based) is held out when splitmix64({SPLIT_SEED} xor n) mod 1000 < {HOLDOUT_PER_MILLE}"
        ),
        intercept: round_model(intercept),
        features,
        grades: GRADES
            .iter()
            .map(|(grade, pd_below)| GradeBand {
                grade: grade.to_string(),
                pd_below: *pd_below,
            })
            .collect(),
        train_metrics: Metrics {
            rows: 0,
            bad: 0,
            auc: 0.0,
            gini: 0.0,
        },
        holdout_metrics: Metrics {
            rows: 0,
            bad: 0,
            auc: 0.0,
            gini: 0.0,
        },
    };
    card.train_metrics = metrics(&card, &train_rows, &train_bad)?;
    card.holdout_metrics = metrics(&card, &holdout_rows, &holdout_bad)?;
    card.validate()?;
    Ok(card)
}

/// Renders a model as the JSON the model file holds: pretty-printed with a
/// final newline.
pub fn model_json(card: &Scorecard) -> String {
    serde_json::to_string_pretty(card).expect("a scorecard serialises") + "\n"
}
