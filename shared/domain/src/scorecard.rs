//! A credit scorecard: logistic regression on weight-of-evidence bins.
//!
//! Each feature's value falls into one bin; the bin's weight of evidence
//! (WoE) is `ln(share of goods in the bin / share of bads in the bin)`, with
//! half a count added to each side so that an empty side stays finite. The
//! log-odds of default is `intercept + Σ coefficient × WoE`, fitted by
//! Newton's method (iteratively reweighted least squares) with a small
//! ridge penalty. Everything here is deterministic: the same rows give the
//! same model. Probabilities are `f64` because they are statistics, not
//! money.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Decimals kept for WoE values, coefficients and metrics in the model
/// file, so that retraining on another machine writes the same bytes
/// unless a value sits on a rounding boundary.
pub const MODEL_DECIMALS: i32 = 6;

/// Ridge penalty on the coefficients (not the intercept) in the fit.
const RIDGE: f64 = 1e-4;

/// The binning of a feature's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Binning {
    /// Whole-number bins by upper bounds: a value goes into the first bin
    /// whose `upper` it does not exceed; the last bin has no bound.
    Numeric {
        /// Inclusive upper bounds, ascending.
        upper_bounds: Vec<i64>,
    },
    /// One bin per category label seen in training.
    Categorical,
}

/// One bin with its weight of evidence and its training counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bin {
    /// The bin's label: a category, or a range such as `13..=24`.
    pub label: String,
    /// Weight of evidence.
    pub woe: f64,
    /// Good outcomes in the training rows.
    pub good: u32,
    /// Bad outcomes in the training rows.
    pub bad: u32,
}

/// A feature: its binning, its bins and its coefficient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// The feature's name, also its reason code.
    pub name: String,
    /// The binning of its values.
    pub binning: Binning,
    /// The bins, in bound order for numeric features and label order for
    /// categorical ones. A value in no bin (an unseen or missing category)
    /// scores a WoE of 0, the average.
    pub bins: Vec<Bin>,
    /// Coefficient on the WoE; negative, since a higher WoE means fewer
    /// defaults.
    pub coefficient: f64,
}

/// Performance of the model on a set of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Rows.
    pub rows: u32,
    /// Rows with a bad outcome.
    pub bad: u32,
    /// Area under the ROC curve.
    pub auc: f64,
    /// Gini coefficient, 2 × AUC − 1.
    pub gini: f64,
}

/// The upper PD bound of a risk grade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradeBand {
    /// The grade, which keys the pricing rate grid.
    pub grade: String,
    /// PDs below this bound get the grade; the last band's bound is 1.
    pub pd_below: f64,
}

/// A trained scorecard, as the model file stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scorecard {
    /// The model's version, carried by `risk.scored`.
    pub version: String,
    /// The training file's name.
    pub training_data: String,
    /// SHA-256 of the training file, hex.
    pub training_data_sha256: String,
    /// The rule that split rows into training and held-out sets.
    pub split: String,
    /// The intercept of the log-odds of default.
    pub intercept: f64,
    /// The features.
    pub features: Vec<Feature>,
    /// Grades by PD, best first.
    pub grades: Vec<GradeBand>,
    /// Performance on the training rows.
    pub train_metrics: Metrics,
    /// Performance on the held-out rows.
    pub holdout_metrics: Metrics,
}

/// A feature value of one applicant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A whole number, such as an age in years.
    Number(i64),
    /// A category label.
    Category(String),
    /// Not known.
    Missing,
}

/// The result of scoring one applicant.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Probability of default.
    pub pd: f64,
    /// The risk grade.
    pub grade: String,
    /// Features that pushed the score down most, worst first: those whose
    /// bin adds the most log-odds of default over the feature's best bin.
    pub reason_codes: Vec<String>,
}

/// Errors of scoring and training.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ScorecardError {
    /// A feature value has the wrong kind.
    #[error("feature {feature}: expected a {expected} value, found {found:?}")]
    WrongKind {
        /// The feature.
        feature: String,
        /// `number` or `category`.
        expected: &'static str,
        /// The value given.
        found: Value,
    },
    /// Training rows are unusable.
    #[error("invalid training data: {0}")]
    Training(String),
    /// The model file does not describe a usable model.
    #[error("invalid scorecard: {0}")]
    Invalid(String),
}

/// Rounds to [`MODEL_DECIMALS`] decimals.
pub fn round_model(value: f64) -> f64 {
    let scale = 10f64.powi(MODEL_DECIMALS);
    (value * scale).round() / scale
}

fn numeric_label(upper_bounds: &[i64], index: usize) -> String {
    match (
        index.checked_sub(1).map(|i| upper_bounds[i]),
        upper_bounds.get(index),
    ) {
        (None, Some(upper)) => format!("..={upper}"),
        (Some(lower), Some(upper)) => format!("{}..={upper}", lower + 1),
        (Some(lower), None) => format!("{}..", lower + 1),
        (None, None) => "all".into(),
    }
}

impl Feature {
    /// Returns the index of the bin `value` falls into, or `None` for a
    /// missing value or an unseen category.
    pub fn bin_index(&self, value: &Value) -> Result<Option<usize>, ScorecardError> {
        match (&self.binning, value) {
            (_, Value::Missing) => Ok(None),
            (Binning::Numeric { upper_bounds }, Value::Number(number)) => Ok(Some(
                upper_bounds
                    .iter()
                    .position(|upper| number <= upper)
                    .unwrap_or(upper_bounds.len()),
            )),
            (Binning::Categorical, Value::Category(label)) => {
                Ok(self.bins.iter().position(|bin| &bin.label == label))
            }
            (Binning::Numeric { .. }, found) => Err(ScorecardError::WrongKind {
                feature: self.name.clone(),
                expected: "number",
                found: found.clone(),
            }),
            (Binning::Categorical, found) => Err(ScorecardError::WrongKind {
                feature: self.name.clone(),
                expected: "category",
                found: found.clone(),
            }),
        }
    }

    fn woe_of(&self, value: &Value) -> Result<f64, ScorecardError> {
        Ok(self.bin_index(value)?.map_or(0.0, |i| self.bins[i].woe))
    }
}

impl Scorecard {
    /// Checks that the model can score: bins match their binning, and the
    /// grades are in ascending order of PD and end at 1.
    pub fn validate(&self) -> Result<(), ScorecardError> {
        for feature in &self.features {
            if let Binning::Numeric { upper_bounds } = &feature.binning {
                if feature.bins.len() != upper_bounds.len() + 1 {
                    return Err(ScorecardError::Invalid(format!(
                        "feature {} has {} bins for {} upper bounds; expected one more bin than bounds",
                        feature.name,
                        feature.bins.len(),
                        upper_bounds.len()
                    )));
                }
                if upper_bounds.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(ScorecardError::Invalid(format!(
                        "feature {}: upper bounds must ascend",
                        feature.name
                    )));
                }
            }
        }
        let ascending = self
            .grades
            .windows(2)
            .all(|w| w[0].pd_below < w[1].pd_below);
        if self.grades.is_empty()
            || !ascending
            || self.grades.last().map(|g| g.pd_below) != Some(1.0)
        {
            return Err(ScorecardError::Invalid(
                "grades must be in ascending order of pd_below, and the last must be 1".into(),
            ));
        }
        Ok(())
    }

    /// Scores an applicant from its feature values, keyed by feature name;
    /// a feature left out counts as missing.
    pub fn score(&self, values: &BTreeMap<String, Value>) -> Result<Score, ScorecardError> {
        let mut log_odds = self.intercept;
        let mut losses: Vec<(f64, &str)> = Vec::new();
        for feature in &self.features {
            let value = values.get(&feature.name).unwrap_or(&Value::Missing);
            let contribution = feature.coefficient * feature.woe_of(value)?;
            log_odds += contribution;
            let best = feature
                .bins
                .iter()
                .map(|bin| feature.coefficient * bin.woe)
                .fold(0.0f64, f64::min);
            let loss = contribution - best;
            if loss > 1e-9 {
                losses.push((loss, &feature.name));
            }
        }
        losses.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let pd = logistic(log_odds);
        let grade = self
            .grades
            .iter()
            .find(|band| pd < band.pd_below)
            .or(self.grades.last())
            .map(|band| band.grade.clone())
            .unwrap_or_default();
        Ok(Score {
            pd,
            grade,
            reason_codes: losses
                .into_iter()
                .take(3)
                .map(|(_, name)| name.to_string())
                .collect(),
        })
    }
}

/// The logistic function `1 / (1 + e^−x)`.
pub fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Formats a PD as the decimal string `risk.scored` carries: four
/// decimals, such as `"0.0423"`.
pub fn format_pd(pd: f64) -> String {
    format!("{:.4}", pd.clamp(0.0, 1.0))
}

/// Area under the ROC curve of `scores` (higher means more likely bad)
/// against `bad` outcomes: the share of (bad, good) pairs in which the bad
/// one scores higher, ties counting half. `None` when either class is
/// empty.
pub fn auc(scores: &[f64], bad: &[bool]) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(bad.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let bads = pairs.iter().filter(|p| p.1).count() as f64;
    let goods = pairs.len() as f64 - bads;
    if bads == 0.0 || goods == 0.0 {
        return None;
    }
    // Rank-sum form of the Mann-Whitney U statistic, with tied scores
    // sharing the average of their ranks.
    let mut rank_sum_bad = 0.0;
    let mut start = 0;
    while start < pairs.len() {
        let mut end = start;
        while end < pairs.len() && pairs[end].0 == pairs[start].0 {
            end += 1;
        }
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let tied_bads = pairs[start..end].iter().filter(|p| p.1).count() as f64;
        rank_sum_bad += average_rank * tied_bads;
        start = end;
    }
    Some((rank_sum_bad - bads * (bads + 1.0) / 2.0) / (bads * goods))
}

/// Training rows: each row's feature values, in the order of the feature
/// definitions, and its outcome.
pub struct TrainingSet<'a> {
    /// Feature names and binnings.
    pub definitions: &'a [(String, Binning)],
    /// Values per row, one per definition.
    pub rows: &'a [Vec<Value>],
    /// Whether each row defaulted.
    pub bad: &'a [bool],
}

/// Computes each feature's bins and WoE from the training rows.
pub fn fit_bins(set: &TrainingSet<'_>) -> Result<Vec<Feature>, ScorecardError> {
    let total_bad = set.bad.iter().filter(|b| **b).count() as f64;
    let total_good = set.bad.len() as f64 - total_bad;
    if total_bad == 0.0 || total_good == 0.0 {
        return Err(ScorecardError::Training(
            "both good and bad outcomes are needed".into(),
        ));
    }
    let mut features = Vec::with_capacity(set.definitions.len());
    for (column, (name, binning)) in set.definitions.iter().enumerate() {
        let mut counts: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        let mut labels: Vec<String> = Vec::new();
        if let Binning::Numeric { upper_bounds } = binning {
            for index in 0..=upper_bounds.len() {
                let label = numeric_label(upper_bounds, index);
                counts.insert(label.clone(), (0, 0));
                labels.push(label);
            }
        }
        for (row, bad) in set.rows.iter().zip(set.bad) {
            let label = match (binning, &row[column]) {
                (_, Value::Missing) => continue,
                (Binning::Numeric { upper_bounds }, Value::Number(n)) => {
                    let index = upper_bounds
                        .iter()
                        .position(|upper| n <= upper)
                        .unwrap_or(upper_bounds.len());
                    labels[index].clone()
                }
                (Binning::Categorical, Value::Category(label)) => label.clone(),
                (_, found) => {
                    return Err(ScorecardError::Training(format!(
                        "feature {name}: value {found:?} does not match its binning"
                    )));
                }
            };
            let entry = counts.entry(label).or_insert((0, 0));
            if *bad {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
        if matches!(binning, Binning::Categorical) {
            labels = counts.keys().cloned().collect();
        }
        let bins = labels
            .into_iter()
            .map(|label| {
                let (good, bad) = counts[&label];
                let woe =
                    ((f64::from(good) + 0.5) / total_good / ((f64::from(bad) + 0.5) / total_bad))
                        .ln();
                Bin {
                    label,
                    woe: round_model(woe),
                    good,
                    bad,
                }
            })
            .collect();
        features.push(Feature {
            name: name.clone(),
            binning: binning.clone(),
            bins,
            coefficient: 0.0,
        });
    }
    Ok(features)
}

/// Fits the intercept and coefficients of the logistic regression of `bad`
/// on the design matrix `x` (one row per applicant, one column per
/// feature) by Newton's method, and returns `(intercept, coefficients)`.
pub fn fit_logistic(x: &[Vec<f64>], bad: &[bool]) -> Result<(f64, Vec<f64>), ScorecardError> {
    let columns = x.first().map_or(0, Vec::len) + 1;
    let mut beta = vec![0.0; columns];
    for _ in 0..100 {
        let mut gradient = vec![0.0; columns];
        let mut hessian = vec![vec![0.0; columns]; columns];
        for (row, &outcome) in x.iter().zip(bad) {
            let design: Vec<f64> = std::iter::once(1.0).chain(row.iter().copied()).collect();
            let eta: f64 = design.iter().zip(&beta).map(|(a, b)| a * b).sum();
            let p = logistic(eta);
            let residual = f64::from(u8::from(outcome)) - p;
            let weight = p * (1.0 - p);
            for i in 0..columns {
                gradient[i] += design[i] * residual;
                for j in 0..columns {
                    hessian[i][j] += weight * design[i] * design[j];
                }
            }
        }
        for i in 1..columns {
            gradient[i] -= RIDGE * beta[i];
            hessian[i][i] += RIDGE;
        }
        let step = solve(hessian, gradient).ok_or_else(|| {
            ScorecardError::Training(
                "the design matrix is singular; drop a constant feature".into(),
            )
        })?;
        let mut largest = 0.0f64;
        for (b, s) in beta.iter_mut().zip(&step) {
            *b += s;
            largest = largest.max(s.abs());
        }
        if largest < 1e-12 {
            break;
        }
    }
    let intercept = beta[0];
    Ok((intercept, beta[1..].to_vec()))
}

/// Solves `a · x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let factor = a[row][col] / a[col][col];
            let (upper, lower) = a.split_at_mut(row);
            for (target, source) in lower[0][col..].iter_mut().zip(&upper[col][col..]) {
                *target -= factor * source;
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    Some(x)
}

#[cfg(test)]
mod tests;
