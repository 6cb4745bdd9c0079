use super::*;

fn date(text: &str) -> BusinessDate {
    text.parse().unwrap()
}

fn applicant() -> Applicant<'static> {
    Applicant {
        application_id: "APP9",
        pan: "ABCPE1234F",
        name: "Ravi Kumar",
        date_of_birth: date("1990-05-20"),
        has_device: true,
        amount: "100000.00".parse().unwrap(),
        tenor_months: 12,
        monthly_income: "50000.00".parse().unwrap(),
        applied_on: date("2025-03-31"),
    }
}

fn sighting(application: &str, value: &str, applied_on: &str) -> Sighting {
    Sighting {
        application_id: application.into(),
        value: value.into(),
        applied_on: date(applied_on),
    }
}

fn fired_ids(policy: &FraudPolicy, applicant: &Applicant<'_>, history: &History) -> Vec<String> {
    evaluate(policy, applicant, history)
        .into_iter()
        .map(|f| f.rule)
        .collect()
}

#[test]
fn clean_application_fires_nothing() {
    let fired = evaluate(&FraudPolicy::default(), &applicant(), &History::default());
    assert!(fired.is_empty(), "{fired:?}");
}

#[test]
fn pan_names_at_and_past_threshold() {
    let policy = FraudPolicy {
        pan_names: WindowRule {
            enabled: true,
            window_days: 365,
            max_count: 2,
        },
        ..FraudPolicy::default()
    };
    // Case and punctuation do not make a different name.
    let at = History {
        pan: vec![
            sighting("APP1", "RAVI KUMAR", "2025-01-01"),
            sighting("APP2", "RAVI K", "2025-02-01"),
        ],
        ..History::default()
    };
    assert!(fired_ids(&policy, &applicant(), &at).is_empty());
    let mut past = at.clone();
    past.pan
        .push(sighting("APP3", "RAVINDRA KUMAR", "2025-03-01"));
    let fired = evaluate(&policy, &applicant(), &past);
    assert_eq!(
        fired,
        vec![FiredRule {
            rule: PAN_NAMES.into(),
            threshold: "2".into(),
            observed: "3".into()
        }]
    );
    // Outside the window the other names no longer count.
    let mut old = past.clone();
    old.pan[2].applied_on = date("2024-03-31");
    assert!(fired_ids(&policy, &applicant(), &old).is_empty());
}

#[test]
fn pan_velocity_at_and_past_threshold() {
    let policy = FraudPolicy::default();
    let name = "RAVI KUMAR";
    // Three applications in 30 days (two earlier and this one) are allowed.
    let at = History {
        pan: vec![
            sighting("APP1", name, "2025-03-02"),
            sighting("APP2", name, "2025-03-20"),
        ],
        ..History::default()
    };
    assert!(fired_ids(&policy, &applicant(), &at).is_empty());
    let mut past = at.clone();
    past.pan.push(sighting("APP3", name, "2025-03-30"));
    let fired = evaluate(&policy, &applicant(), &past);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].rule, PAN_VELOCITY);
    assert_eq!(fired[0].threshold, "3");
    assert_eq!(fired[0].observed, "4");
    // 1 March is 30 days before 31 March: outside a 30-day window.
    let mut edge = past.clone();
    edge.pan[0].applied_on = date("2025-03-01");
    assert!(fired_ids(&policy, &applicant(), &edge).is_empty());
    // The same application seen again is not a new one.
    let mut repeated = at.clone();
    repeated.pan.push(sighting("APP9", name, "2025-03-31"));
    assert!(fired_ids(&policy, &applicant(), &repeated).is_empty());
}

#[test]
fn phone_and_device_reuse_at_and_past_threshold() {
    let policy = FraudPolicy::default();
    let at = History {
        phone: vec![sighting("APP1", "ZZZPZ9999Z", "2025-01-15")],
        device: vec![sighting("APP1", "ZZZPZ9999Z", "2025-03-15")],
        ..History::default()
    };
    assert!(fired_ids(&policy, &applicant(), &at).is_empty());
    let mut past = at.clone();
    past.phone
        .push(sighting("APP2", "YYYPY8888Y", "2025-02-15"));
    past.device
        .push(sighting("APP2", "YYYPY8888Y", "2025-03-16"));
    let fired = evaluate(&policy, &applicant(), &past);
    let ids: Vec<&str> = fired.iter().map(|f| f.rule.as_str()).collect();
    assert_eq!(ids, [PHONE_REUSE, DEVICE_REUSE]);
    assert!(
        fired
            .iter()
            .all(|f| f.threshold == "2" && f.observed == "3")
    );
    // Without a device id the device rule has nothing to count.
    let no_device = Applicant {
        has_device: false,
        ..applicant()
    };
    assert_eq!(fired_ids(&policy, &no_device, &past), [PHONE_REUSE]);
}

#[test]
fn emi_income_at_and_past_threshold() {
    let policy = FraudPolicy {
        emi_income: EmiIncomeRule {
            enabled: true,
            assessment_rate: "12.00".parse().unwrap(),
            max_basis_points: 5000,
        },
        ..FraudPolicy::default()
    };
    // ₹1,00,000 at 12% over 12 months has an EMI of ₹8,884.88: exactly
    // half of ₹17,769.76.
    let at = Applicant {
        monthly_income: "17769.76".parse().unwrap(),
        ..applicant()
    };
    assert!(fired_ids(&policy, &at, &History::default()).is_empty());
    let past = Applicant {
        monthly_income: "17750.00".parse().unwrap(),
        ..applicant()
    };
    let fired = evaluate(&policy, &past, &History::default());
    assert_eq!(
        fired,
        vec![FiredRule {
            rule: EMI_INCOME.into(),
            threshold: "50.00".into(),
            observed: "50.06".into()
        }]
    );
}

#[test]
fn pan_format_cases() {
    assert_eq!(pan_format_problem("ABCPE1234F"), None);
    assert_eq!(pan_format_problem(" abcpe1234f "), None);
    for holder in PAN_HOLDER_TYPES.chars() {
        assert_eq!(pan_format_problem(&format!("ABC{holder}E1234F")), None);
    }
    let cases = [
        ("ABCPE1234", "9 characters"),
        ("ABCPE12345F", "11 characters"),
        ("ABCPE12C4F", "character 8 is not a digit"),
        ("1BCPE1234F", "character 1 is not a letter"),
        ("ABCPE12345", "character 10 is not a letter"),
        ("ABCZE1234F", "character 4 'Z' is not a holder type"),
    ];
    for (pan, problem) in cases {
        assert_eq!(pan_format_problem(pan).as_deref(), Some(problem), "{pan}");
    }
    let bad = Applicant {
        pan: "ABCZE1234F",
        ..applicant()
    };
    let fired = evaluate(&FraudPolicy::default(), &bad, &History::default());
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].rule, PAN_FORMAT);
}

#[test]
fn applicant_age_at_and_past_bounds() {
    let policy = FraudPolicy::default();
    let born = |dob: &str| Applicant {
        date_of_birth: date(dob),
        ..applicant()
    };
    // 18 on the application date itself.
    assert!(fired_ids(&policy, &born("2007-03-31"), &History::default()).is_empty());
    let young = evaluate(&policy, &born("2007-04-01"), &History::default());
    assert_eq!(
        young,
        vec![FiredRule {
            rule: APPLICANT_AGE.into(),
            threshold: "18 to 65".into(),
            observed: "17".into()
        }]
    );
    // 65 until the day before the 66th birthday.
    assert!(fired_ids(&policy, &born("1959-04-01"), &History::default()).is_empty());
    let old = evaluate(&policy, &born("1959-03-31"), &History::default());
    assert_eq!(old[0].observed, "66");
}

#[test]
fn age_counts_whole_years() {
    assert_eq!(age_in_years(date("2000-02-29"), date("2018-02-28")), 17);
    assert_eq!(age_in_years(date("2000-02-29"), date("2018-03-01")), 18);
    assert_eq!(age_in_years(date("1990-05-20"), date("2025-05-20")), 35);
}

#[test]
fn disabled_rules_do_not_fire() {
    let mut policy = FraudPolicy::default();
    policy.pan_format.enabled = false;
    policy.applicant_age.enabled = false;
    let bad = Applicant {
        pan: "bad",
        date_of_birth: date("2020-01-01"),
        ..applicant()
    };
    assert!(fired_ids(&policy, &bad, &History::default()).is_empty());
    assert!(!policy.enabled_rules().contains(&PAN_FORMAT));
    assert_eq!(FraudPolicy::default().enabled_rules().len(), 7);
}

#[test]
fn names_normalise() {
    assert_eq!(normalise_name("  ravi   kumar. "), "RAVI KUMAR");
    assert_eq!(normalise_name("Ravi-Kumar"), "RAVI KUMAR");
}
