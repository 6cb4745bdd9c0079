//! Training the risk scorecard on the bundled German credit applicants.

use std::path::PathBuf;

use underwrite_jobs::scorecard::{is_held_out, model_json, train};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn retraining_reproduces_committed_model() {
    let csv = std::fs::read(repository().join("examples/german_credit/german_credit.csv")).unwrap();
    let card = train(&csv, "german_credit.csv").unwrap();
    let committed =
        std::fs::read_to_string(repository().join("functions/risk/model/german-credit-woe-1.json"))
            .unwrap();
    assert!(
        model_json(&card) == committed,
        "the committed model differs from a fresh training; run `underwrite train risk` and commit the file"
    );
    // md5 712bf57e22db0170159f6172363cca76 in examples/german_credit/README.md.
    assert_eq!(
        card.training_data_sha256.len(),
        64,
        "{}",
        card.training_data_sha256
    );
    assert_eq!(card.train_metrics.rows + card.holdout_metrics.rows, 1000);
    assert_eq!(card.train_metrics.bad + card.holdout_metrics.bad, 300);
    // The scorecard ranks the held-out applicants far better than chance.
    assert!(card.holdout_metrics.auc > 0.7, "{:?}", card.holdout_metrics);
    assert!(
        (card.holdout_metrics.gini - (2.0 * card.holdout_metrics.auc - 1.0)).abs() < 1e-5,
        "{:?}",
        card.holdout_metrics
    );
    for feature in &card.features {
        assert!(
            feature.coefficient < 0.0,
            "{}: {}",
            feature.name,
            feature.coefficient
        );
    }
}

#[test]
fn split_is_seeded_and_about_thirty_percent() {
    let held_out = (1..=1000u64).filter(|row| is_held_out(*row)).count();
    assert!((250..=350).contains(&held_out), "{held_out}");
    let again = (1..=1000u64).filter(|row| is_held_out(*row)).count();
    assert_eq!(held_out, again);
}

#[test]
fn bad_outcome_label_rejected() {
    let csv =
        std::fs::read_to_string(repository().join("examples/german_credit/german_credit.csv"))
            .unwrap();
    let broken = csv.replacen(",good\r\n", ",fine\r\n", 1);
    let error = format!("{:#}", train(broken.as_bytes(), "broken.csv").unwrap_err());
    assert!(
        error.contains("creditability \"fine\" is neither good nor bad"),
        "{error}"
    );
}
