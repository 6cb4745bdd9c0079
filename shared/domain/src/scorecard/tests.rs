use super::*;

#[test]
fn auc_on_hand_checked_sets() {
    // Bads score 0.35 and 0.8, goods 0.1 and 0.4: of the four (bad, good)
    // pairs the bad one is higher in three.
    assert_eq!(
        auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
        Some(0.75)
    );
    // A tie counts half.
    assert_eq!(auc(&[0.5, 0.5], &[true, false]), Some(0.5));
    // Perfect and reversed orderings.
    assert_eq!(auc(&[0.9, 0.8, 0.1], &[true, true, false]), Some(1.0));
    assert_eq!(auc(&[0.1, 0.2, 0.9], &[true, true, false]), Some(0.0));
    // Five pairs: bad 0.3 beats goods 0.2 and 0.1, ties 0.3 (half), loses
    // to 0.7; bad 0.6 beats 0.2, 0.1, 0.3 and loses to 0.7: 5.5 of 8.
    let scores = [0.3, 0.6, 0.2, 0.1, 0.3, 0.7];
    let bad = [true, true, false, false, false, false];
    assert_eq!(auc(&scores, &bad), Some(5.5 / 8.0));
    assert_eq!(auc(&[0.1, 0.2], &[false, false]), None);
}

#[test]
fn logistic_fit_recovers_log_odds() {
    // x = 0: 3 bads of 4, log-odds ln 3; x = 1: 1 bad of 4, log-odds −ln 3.
    let x: Vec<Vec<f64>> = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
        .iter()
        .map(|v| vec![*v])
        .collect();
    let bad = [true, true, true, false, true, false, false, false];
    let (intercept, coefficients) = fit_logistic(&x, &bad).unwrap();
    let ln3 = 3f64.ln();
    assert!((intercept - ln3).abs() < 1e-3, "{intercept}");
    assert!(
        (coefficients[0] + 2.0 * ln3).abs() < 1e-3,
        "{coefficients:?}"
    );
}

fn definitions() -> Vec<(String, Binning)> {
    vec![
        (
            "age".into(),
            Binning::Numeric {
                upper_bounds: vec![25, 40],
            },
        ),
        ("housing".into(), Binning::Categorical),
    ]
}

#[test]
fn bins_count_and_weigh_evidence() {
    let rows = vec![
        vec![Value::Number(22), Value::Category("rent".into())],
        vec![Value::Number(25), Value::Category("rent".into())],
        vec![Value::Number(30), Value::Category("own".into())],
        vec![Value::Number(41), Value::Category("own".into())],
        vec![Value::Number(50), Value::Missing],
    ];
    let bad = [true, false, false, false, true];
    let features = fit_bins(&TrainingSet {
        definitions: &definitions(),
        rows: &rows,
        bad: &bad,
    })
    .unwrap();
    let age = &features[0];
    let labels: Vec<&str> = age.bins.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["..=25", "26..=40", "41.."]);
    assert_eq!((age.bins[0].good, age.bins[0].bad), (1, 1));
    // 3 goods and 2 bads in all: ln((1.5/3) / (1.5/2)) = ln(2/3).
    assert_eq!(age.bins[0].woe, round_model((2.0f64 / 3.0).ln()));
    let housing = &features[1];
    let labels: Vec<&str> = housing.bins.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["own", "rent"]);
    assert_eq!((housing.bins[0].good, housing.bins[0].bad), (2, 0));
}

fn card() -> Scorecard {
    let bin = |label: &str, woe: f64| Bin {
        label: label.into(),
        woe,
        good: 0,
        bad: 0,
    };
    Scorecard {
        version: "test-1".into(),
        training_data: "hand-made".into(),
        training_data_sha256: String::new(),
        split: String::new(),
        intercept: -1.0,
        features: vec![
            Feature {
                name: "age".into(),
                binning: Binning::Numeric {
                    upper_bounds: vec![25, 40],
                },
                bins: vec![bin("..=25", -0.5), bin("26..=40", 0.2), bin("41..", 0.4)],
                coefficient: -1.0,
            },
            Feature {
                name: "housing".into(),
                binning: Binning::Categorical,
                bins: vec![bin("own", 0.3), bin("rent", -0.3)],
                coefficient: -2.0,
            },
        ],
        grades: vec![
            GradeBand {
                grade: "A".into(),
                pd_below: 0.2,
            },
            GradeBand {
                grade: "B".into(),
                pd_below: 1.0,
            },
        ],
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
    }
}

#[test]
fn score_grades_and_gives_reasons() {
    let card = card();
    card.validate().unwrap();
    let values = BTreeMap::from([
        ("age".to_string(), Value::Number(23)),
        ("housing".to_string(), Value::Category("rent".into())),
    ]);
    let score = card.score(&values).unwrap();
    // −1 + (−1)(−0.5) + (−2)(−0.3) = 0.1.
    assert!((score.pd - logistic(0.1)).abs() < 1e-12);
    assert_eq!(score.grade, "B");
    // housing loses 0.6 + 0.6 = 1.2 against "own"; age 0.5 + 0.4 = 0.9.
    assert_eq!(score.reason_codes, ["housing", "age"]);

    let best = BTreeMap::from([
        ("age".to_string(), Value::Number(45)),
        ("housing".to_string(), Value::Category("own".into())),
    ]);
    let score = card.score(&best).unwrap();
    assert_eq!(score.grade, "A");
    assert!(score.reason_codes.is_empty());

    // An unseen category and a missing feature score the average, WoE 0.
    let unknown = BTreeMap::from([("housing".to_string(), Value::Category("boat".into()))]);
    let score = card.score(&unknown).unwrap();
    assert!((score.pd - logistic(-1.0)).abs() < 1e-12);

    let wrong = BTreeMap::from([("age".to_string(), Value::Category("old".into()))]);
    assert!(matches!(
        card.score(&wrong),
        Err(ScorecardError::WrongKind { .. })
    ));
}

#[test]
fn invalid_grades_rejected() {
    let mut card = card();
    card.grades[1].pd_below = 0.9;
    assert!(card.validate().is_err());
}

#[test]
fn pd_formats_to_four_decimals() {
    assert_eq!(format_pd(0.04234), "0.0423");
    assert_eq!(format_pd(1.0), "1.0000");
}
