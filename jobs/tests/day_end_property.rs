//! Property: for every loan, the polars day-end (`classify_frame`) gives the
//! same DPD, class, NPA date, provision and provision rate as the domain
//! rules applied borrower by borrower (`classify_borrower`, then
//! `ProvisioningPolicy::provision` and `effective_rate_bp`).

use std::collections::{BTreeMap, HashMap};

use polars::prelude::*;
use proptest::prelude::*;
use underwrite_domain::classification::{FacilityStatus, classify_borrower, days_past_due};
use underwrite_domain::provisioning::effective_rate_bp;
use underwrite_domain::{
    AssetClass, BusinessDate, ClassificationPolicy, Paise, ProvisioningPolicy, ProvisioningRegime,
};
use underwrite_jobs::day_end::{JobPolicy, classify_frame, generate_book};
use underwrite_jobs::lake::{PositionRow, position_rows, positions_frame};

/// One loan's day-end result.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoanResult {
    dpd: u32,
    class: AssetClass,
    npa_date: Option<BusinessDate>,
    provision: Paise,
    provision_rate_bp: i64,
}

fn date(text: &str) -> BusinessDate {
    text.parse().unwrap()
}

/// The borrower's NPA date in the prior snapshot: the earliest of its
/// loans' dates.
fn prior_npa_by_borrower(prior: &DataFrame) -> HashMap<String, BusinessDate> {
    let borrowers = prior.column("borrower_id").unwrap().str().unwrap();
    let dates = prior.column("npa_date").unwrap().date().unwrap().physical();
    let mut result: HashMap<String, BusinessDate> = HashMap::new();
    for (borrower, days) in borrowers.iter().zip(dates.iter()) {
        let (Some(borrower), Some(days)) = (borrower, days) else {
            continue;
        };
        let npa = BusinessDate::from_epoch_days(days);
        result
            .entry(borrower.to_string())
            .and_modify(|earliest| *earliest = (*earliest).min(npa))
            .or_insert(npa);
    }
    result
}

/// The domain's answer for every loan, keyed by loan id.
fn domain_results(
    positions: &DataFrame,
    prior: Option<&DataFrame>,
    as_of: BusinessDate,
    policy: &JobPolicy,
) -> BTreeMap<String, LoanResult> {
    let rows = position_rows(positions).unwrap();
    let prior_npa = prior.map(prior_npa_by_borrower).unwrap_or_default();
    let mut by_borrower: BTreeMap<&str, Vec<&PositionRow>> = BTreeMap::new();
    for row in &rows {
        by_borrower.entry(&row.borrower_id).or_default().push(row);
    }

    let mut results = BTreeMap::new();
    for (borrower, loans) in by_borrower {
        let facilities: Vec<FacilityStatus> = loans
            .iter()
            .map(|row| FacilityStatus {
                dpd: days_past_due(as_of, row.oldest_unpaid_due),
                loss_identified: row.loss_identified,
            })
            .collect();
        let classification = classify_borrower(
            &policy.classification,
            as_of,
            &facilities,
            prior_npa.get(borrower).copied(),
        );
        for ((row, facility), class) in loans.iter().zip(&facilities).zip(&classification.classes) {
            let provision = policy
                .provisioning
                .provision(
                    *class,
                    row.outstanding_principal,
                    row.secured_value,
                    row.unsecured_exposure,
                )
                .amount;
            results.insert(
                row.loan_id.clone(),
                LoanResult {
                    dpd: facility.dpd,
                    class: *class,
                    npa_date: classification.npa_date,
                    provision,
                    provision_rate_bp: effective_rate_bp(provision, row.outstanding_principal),
                },
            );
        }
    }
    results
}

/// The polars answer for every loan, keyed by loan id.
fn polars_results(snapshot: &DataFrame) -> BTreeMap<String, LoanResult> {
    let loan_ids = snapshot.column("loan_id").unwrap().str().unwrap();
    let dpd = snapshot.column("dpd").unwrap().i32().unwrap();
    let classes = snapshot.column("asset_class").unwrap().str().unwrap();
    let npa = snapshot
        .column("npa_date")
        .unwrap()
        .date()
        .unwrap()
        .physical();
    let provision = snapshot.column("provision").unwrap().i64().unwrap();
    let rate = snapshot.column("provision_rate_bp").unwrap().i64().unwrap();
    (0..snapshot.height())
        .map(|index| {
            let result = LoanResult {
                dpd: u32::try_from(dpd.get(index).unwrap()).unwrap(),
                class: classes.get(index).unwrap().parse().unwrap(),
                npa_date: npa.get(index).map(BusinessDate::from_epoch_days),
                provision: Paise::new(provision.get(index).unwrap()),
                provision_rate_bp: rate.get(index).unwrap(),
            };
            (loan_ids.get(index).unwrap().to_string(), result)
        })
        .collect()
}

/// Runs both computations and compares them loan by loan, so a failure
/// names the first loan that differs.
fn assert_matches_domain(
    positions: DataFrame,
    prior: Option<DataFrame>,
    as_of: BusinessDate,
    policy: &JobPolicy,
) -> Result<(), TestCaseError> {
    let expected = domain_results(&positions, prior.as_ref(), as_of, policy);
    let snapshot = classify_frame(positions, prior, as_of, policy).unwrap();
    let actual = polars_results(&snapshot);
    prop_assert_eq!(actual.len(), expected.len(), "loan count");
    let loan_ids: Vec<&String> = actual.keys().collect();
    let mut sorted_ids = loan_ids.clone();
    sorted_ids.sort();
    prop_assert_eq!(loan_ids, sorted_ids, "snapshot is sorted by loan_id");
    let snapshot_ids = snapshot.column("loan_id").unwrap().str().unwrap();
    let in_file_order: Vec<&str> = snapshot_ids.iter().map(Option::unwrap).collect();
    let mut sorted_file_order = in_file_order.clone();
    sorted_file_order.sort_unstable();
    prop_assert_eq!(in_file_order, sorted_file_order, "rows sorted by loan_id");
    for (loan_id, expected) in &expected {
        prop_assert_eq!(actual.get(loan_id), Some(expected), "loan {}", loan_id);
    }
    Ok(())
}

fn policy_strategy() -> impl Strategy<Value = JobPolicy> {
    (
        prop_oneof![
            Just(ProvisioningRegime::Bank),
            Just(ProvisioningRegime::Nbfc)
        ],
        prop_oneof![Just(90u32), Just(120), Just(150), Just(60)],
        prop_oneof![Just(40i64), Just(25)],
    )
        .prop_map(|(regime, npa_after_dpd, standard_bp)| JobPolicy {
            classification: ClassificationPolicy { npa_after_dpd },
            provisioning: ProvisioningPolicy {
                regime,
                standard_bp,
            },
        })
}

/// Dates where month arithmetic clamps (29 February, 28 February of a
/// common year, 31st of a month followed by a shorter one) and their
/// neighbours.
const TRICKY_DATES: [&str; 14] = [
    "2021-02-28",
    "2021-03-01",
    "2022-02-28",
    "2022-03-01",
    "2024-02-28",
    "2024-02-29",
    "2024-03-01",
    "2025-02-28",
    "2025-03-01",
    "2025-03-31",
    "2025-04-30",
    "2025-05-01",
    "2028-02-28",
    "2028-02-29",
];

fn as_of_strategy() -> impl Strategy<Value = BusinessDate> {
    let tricky = proptest::sample::select(TRICKY_DATES.to_vec()).prop_map(date);
    let any_day = (0i64..4000).prop_map(|offset| date("2019-01-01").add_days(offset));
    prop_oneof![tricky, any_day]
}

/// DPD at the band edges and the usual NPA thresholds.
const BOUNDARY_DPD: [u32; 17] = [
    0, 1, 30, 31, 60, 61, 62, 90, 91, 92, 120, 121, 150, 151, 365, 366, 1461,
];

fn dpd_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![proptest::sample::select(BOUNDARY_DPD.to_vec()), 0u32..2500,]
}

/// How a prior NPA date is picked relative to `as_of`.
#[derive(Debug, Clone)]
enum PriorNpa {
    None,
    /// `as_of` minus this many days.
    DaysBack(i64),
    /// Near an anniversary: `as_of` minus `years` years plus `delta` days.
    NearAnniversary {
        years: i64,
        delta: i64,
    },
    /// The month end of `as_of` minus this many days.
    MonthEnd(i64),
    /// The latest 29 February before `as_of`, this many leap years back.
    LeapDay(i32),
}

impl PriorNpa {
    fn resolve(&self, as_of: BusinessDate) -> Option<BusinessDate> {
        let before = |candidate: BusinessDate| {
            if candidate < as_of {
                candidate
            } else {
                as_of.pred()
            }
        };
        match self {
            PriorNpa::None => None,
            PriorNpa::DaysBack(days) => Some(as_of.add_days(-days)),
            PriorNpa::NearAnniversary { years, delta } => {
                Some(before(as_of.add_days(-365 * years + delta)))
            }
            PriorNpa::MonthEnd(days) => Some(before(as_of.add_days(-days).month_end())),
            PriorNpa::LeapDay(leap_years_back) => {
                let mut found = 0;
                let mut year = as_of.year();
                loop {
                    if let Some(day) = BusinessDate::from_ymd(year, 2, 29)
                        && day < as_of
                    {
                        if found == *leap_years_back {
                            return Some(day);
                        }
                        found += 1;
                    }
                    year -= 1;
                }
            }
        }
    }
}

fn prior_npa_strategy() -> impl Strategy<Value = PriorNpa> {
    prop_oneof![
        3 => Just(PriorNpa::None),
        1 => (1i64..2500).prop_map(PriorNpa::DaysBack),
        2 => (prop_oneof![Just(1i64), Just(2), Just(4)], -3i64..=3)
            .prop_map(|(years, delta)| PriorNpa::NearAnniversary { years, delta }),
        1 => (1i64..2000).prop_map(PriorNpa::MonthEnd),
        1 => (0i32..3).prop_map(PriorNpa::LeapDay),
    ]
}

/// One generated facility: DPD, outstanding and security in paise (up to
/// ₹10^10), unsecured-exposure and loss flags.
type Facility = (u32, i64, i64, bool, bool);

fn facility_strategy() -> impl Strategy<Value = Facility> {
    let amount = prop_oneof![
        8 => 0i64..=1_000_000_000_000,
        1 => Just(0i64),
        1 => -100_000i64..0,
    ];
    let security = prop_oneof![
        3 => Just(0i64),
        5 => 0i64..=1_500_000_000_000,
        1 => -100i64..0,
    ];
    (
        dpd_strategy(),
        amount,
        security,
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
}

/// A borrower: its facilities, its prior NPA date and whether its loans are
/// in the prior snapshot.
type Borrower = (Vec<Facility>, PriorNpa, bool);

fn borrower_strategy() -> impl Strategy<Value = Borrower> {
    (
        prop::collection::vec(facility_strategy(), 1..4),
        prior_npa_strategy(),
        prop::bool::weighted(0.9),
    )
}

/// Builds the positions and prior snapshot frames of generated borrowers.
fn frames(borrowers: &[Borrower], as_of: BusinessDate) -> (DataFrame, DataFrame) {
    let mut rows = Vec::new();
    let mut prior_loans: Vec<String> = Vec::new();
    let mut prior_borrowers: Vec<String> = Vec::new();
    let mut prior_classes: Vec<&str> = Vec::new();
    let mut prior_npa: Vec<Option<i32>> = Vec::new();
    for (borrower_index, (facilities, npa, in_prior)) in borrowers.iter().enumerate() {
        let borrower_id = format!("B{borrower_index:04}");
        let npa = npa.resolve(as_of);
        for (loan_index, (dpd, outstanding, secured, unsecured, loss)) in
            facilities.iter().enumerate()
        {
            // Interleave ids so a borrower's loans are not adjacent once sorted.
            let loan_id = format!("L{loan_index}-{borrower_index:04}");
            rows.push(PositionRow {
                loan_id: loan_id.clone(),
                borrower_id: borrower_id.clone(),
                oldest_unpaid_due: (*dpd > 0).then(|| as_of.add_days(1 - i64::from(*dpd))),
                overdue: Paise::new(i64::from(*dpd) * 100),
                outstanding_principal: Paise::new(*outstanding),
                secured_value: Paise::new(*secured),
                unsecured_exposure: *unsecured,
                loss_identified: *loss,
            });
            if *in_prior {
                prior_loans.push(loan_id);
                prior_borrowers.push(borrower_id.clone());
                prior_classes.push(if npa.is_some() {
                    AssetClass::Substandard.as_str()
                } else {
                    AssetClass::Standard.as_str()
                });
                prior_npa.push(npa.map(BusinessDate::epoch_days));
            }
        }
    }
    let npa_column: Int32Chunked = prior_npa.into_iter().collect();
    let prior = DataFrame::new(
        prior_loans.len(),
        vec![
            Column::new("loan_id".into(), prior_loans),
            Column::new("borrower_id".into(), prior_borrowers),
            Column::new("asset_class".into(), prior_classes),
            npa_column
                .with_name("npa_date".into())
                .into_date()
                .into_column(),
        ],
    )
    .unwrap();
    (positions_frame(&rows).unwrap(), prior)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn generated_book_matches_domain(
        seed in any::<u64>(),
        loans in 1usize..400,
        as_of in as_of_strategy(),
        policy in policy_strategy(),
        with_prior in prop::bool::weighted(0.8),
    ) {
        let (positions, prior) = generate_book(loans, seed, as_of);
        assert_matches_domain(positions, with_prior.then_some(prior), as_of, &policy)?;
    }

    #[test]
    fn generated_borrowers_match_domain(
        borrowers in prop::collection::vec(borrower_strategy(), 1..40),
        as_of in as_of_strategy(),
        policy in policy_strategy(),
    ) {
        let (positions, prior) = frames(&borrowers, as_of);
        assert_matches_domain(positions, Some(prior), as_of, &policy)?;
    }
}

#[test]
fn leap_day_npa_ages_on_28_february() {
    // 2020-02-29 plus 12 months clamps to 2021-02-28 (BusinessDate::add_months).
    for (as_of, expected) in [
        ("2021-02-27", AssetClass::Substandard),
        ("2021-02-28", AssetClass::Doubtful1),
        ("2022-02-27", AssetClass::Doubtful1),
        ("2022-02-28", AssetClass::Doubtful2),
        ("2024-02-28", AssetClass::Doubtful2),
        ("2024-02-29", AssetClass::Doubtful3),
    ] {
        let as_of = date(as_of);
        let borrowers = vec![(
            vec![(40, 1_000_000, 0, false, false)],
            PriorNpa::LeapDay(0),
            true,
        )];
        let (positions, prior) = frames(&borrowers, as_of);
        let npa = prior
            .column("npa_date")
            .unwrap()
            .date()
            .unwrap()
            .physical()
            .get(0);
        assert_eq!(npa, Some(date("2020-02-29").epoch_days()), "{as_of}");
        let snapshot =
            classify_frame(positions, Some(prior), as_of, &JobPolicy::default()).unwrap();
        let class = snapshot
            .column("asset_class")
            .unwrap()
            .str()
            .unwrap()
            .get(0);
        assert_eq!(class, Some(expected.as_str()), "{as_of}");
    }
}

#[test]
fn boundary_dpd_bands() {
    let as_of = date("2024-03-31");
    for (dpd, expected) in [
        (0, AssetClass::Standard),
        (1, AssetClass::Sma0),
        (30, AssetClass::Sma0),
        (31, AssetClass::Sma1),
        (60, AssetClass::Sma1),
        (61, AssetClass::Sma2),
        (90, AssetClass::Sma2),
        (91, AssetClass::Substandard),
        (120, AssetClass::Substandard),
    ] {
        let borrowers = vec![(
            vec![(dpd, 1_000_000, 0, false, false)],
            PriorNpa::None,
            false,
        )];
        let (positions, prior) = frames(&borrowers, as_of);
        let snapshot =
            classify_frame(positions, Some(prior), as_of, &JobPolicy::default()).unwrap();
        let actual_dpd = snapshot.column("dpd").unwrap().i32().unwrap().get(0);
        let class = snapshot
            .column("asset_class")
            .unwrap()
            .str()
            .unwrap()
            .get(0);
        assert_eq!(actual_dpd, Some(dpd as i32), "dpd {dpd}");
        assert_eq!(class, Some(expected.as_str()), "dpd {dpd}");
    }
}
