//! Day-end scenarios over a lake in a temporary folder: given positions,
//! when day-end runs for a date, then DPD, class, NPA date and provision.

use std::path::Path;

use polars::prelude::*;
use underwrite_domain::{
    AssetClass, BusinessDate, ClassificationPolicy, Paise, ProvisioningPolicy, ProvisioningRegime,
};
use underwrite_jobs::day_end::{DayEndSummary, JobPolicy, run_day_end};
use underwrite_jobs::lake::{
    CHANGES, PositionRow, SNAPSHOT, partition_path, read_partition, write_positions,
};

fn date(text: &str) -> BusinessDate {
    text.parse().unwrap()
}

fn rupees(amount: i64) -> Paise {
    Paise::from_rupees(amount)
}

fn loan(loan_id: &str, borrower_id: &str, oldest_unpaid_due: Option<&str>) -> PositionRow {
    PositionRow {
        loan_id: loan_id.to_string(),
        borrower_id: borrower_id.to_string(),
        oldest_unpaid_due: oldest_unpaid_due.map(date),
        overdue: if oldest_unpaid_due.is_some() {
            rupees(10_000)
        } else {
            Paise::ZERO
        },
        outstanding_principal: rupees(100_000),
        secured_value: Paise::ZERO,
        unsecured_exposure: true,
        loss_identified: false,
    }
}

/// One loan's row of a snapshot.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    dpd: i32,
    class: String,
    npa_date: Option<BusinessDate>,
    provision: Paise,
    provision_rate_bp: i64,
}

fn snapshot_row(lake: &Path, as_of: BusinessDate, loan_id: &str) -> Row {
    let snapshot = read_partition(lake, SNAPSHOT, as_of).unwrap();
    let ids = snapshot.column("loan_id").unwrap().str().unwrap();
    let index = ids
        .iter()
        .position(|id| id == Some(loan_id))
        .unwrap_or_else(|| panic!("{loan_id} missing from the {as_of} snapshot"));
    Row {
        dpd: snapshot
            .column("dpd")
            .unwrap()
            .i32()
            .unwrap()
            .get(index)
            .unwrap(),
        class: snapshot
            .column("asset_class")
            .unwrap()
            .str()
            .unwrap()
            .get(index)
            .unwrap()
            .to_string(),
        npa_date: snapshot
            .column("npa_date")
            .unwrap()
            .date()
            .unwrap()
            .physical()
            .get(index)
            .map(BusinessDate::from_epoch_days),
        provision: Paise::new(
            snapshot
                .column("provision")
                .unwrap()
                .i64()
                .unwrap()
                .get(index)
                .unwrap(),
        ),
        provision_rate_bp: snapshot
            .column("provision_rate_bp")
            .unwrap()
            .i64()
            .unwrap()
            .get(index)
            .unwrap(),
    }
}

/// The `changes` partition as (loan, previous class, class, dpd) tuples.
fn changes(lake: &Path, as_of: BusinessDate) -> Vec<(String, String, String, i32)> {
    let frame = read_partition(lake, CHANGES, as_of).unwrap();
    let text = |name: &str| -> Vec<String> {
        frame
            .column(name)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|value| value.unwrap().to_string())
            .collect()
    };
    let dpd: Vec<i32> = frame
        .column("dpd")
        .unwrap()
        .i32()
        .unwrap()
        .iter()
        .map(Option::unwrap)
        .collect();
    let loans = text("loan_id");
    let previous = text("previous_class");
    let classes = text("asset_class");
    (0..frame.height())
        .map(|i| {
            (
                loans[i].clone(),
                previous[i].clone(),
                classes[i].clone(),
                dpd[i],
            )
        })
        .collect()
}

fn run(
    lake: &Path,
    as_of: BusinessDate,
    rows: &[PositionRow],
    policy: &JobPolicy,
) -> DayEndSummary {
    write_positions(lake, as_of, rows).unwrap();
    run_day_end(lake, as_of, policy).unwrap()
}

fn change(
    loan: &str,
    previous: AssetClass,
    class: AssetClass,
    dpd: i32,
) -> (String, String, String, i32) {
    (
        loan.to_string(),
        previous.as_str().to_string(),
        class.as_str().to_string(),
        dpd,
    )
}

#[test]
fn rbi_example_over_daily_chain() {
    let lake = tempfile::tempdir().unwrap();
    let policy = JobPolicy::default();
    let unpaid = [loan("L1", "B1", Some("2021-03-31"))];
    let mut days_with_changes = Vec::new();

    // Given the instalment due 2021-03-31 unpaid, when day-end runs every
    // day from 2021-03-30 to 2021-06-30:
    let mut day = date("2021-03-30");
    while day <= date("2021-06-30") {
        let rows = if day < date("2021-03-31") {
            vec![loan("L1", "B1", None)]
        } else {
            unpaid.to_vec()
        };
        let summary = run(lake.path(), day, &rows, &policy);
        assert_eq!(summary.loans, 1, "{day}");
        if day > date("2021-03-30") {
            assert_eq!(summary.prior_snapshot, Some(day.pred()), "{day}");
        }
        if summary.changes > 0 {
            days_with_changes.push(day.to_string());
        }
        day = day.succ();
    }

    // Then the classes follow RBI's example.
    let sma = |dpd: i32, class: &str| Row {
        dpd,
        class: class.to_string(),
        npa_date: None,
        // NBFC standard-asset rate 0.40% of ₹1,00,000.
        provision: rupees(400),
        provision_rate_bp: 40,
    };
    let path = lake.path();
    assert_eq!(
        snapshot_row(path, date("2021-03-30"), "L1"),
        sma(0, "STANDARD")
    );
    assert_eq!(
        snapshot_row(path, date("2021-03-31"), "L1"),
        sma(1, "SMA-0")
    );
    assert_eq!(
        snapshot_row(path, date("2021-04-29"), "L1"),
        sma(30, "SMA-0")
    );
    assert_eq!(
        snapshot_row(path, date("2021-04-30"), "L1"),
        sma(31, "SMA-1")
    );
    assert_eq!(
        snapshot_row(path, date("2021-05-29"), "L1"),
        sma(60, "SMA-1")
    );
    assert_eq!(
        snapshot_row(path, date("2021-05-30"), "L1"),
        sma(61, "SMA-2")
    );
    assert_eq!(
        snapshot_row(path, date("2021-06-28"), "L1"),
        sma(90, "SMA-2")
    );
    let npa = Row {
        dpd: 91,
        class: "SUBSTANDARD".to_string(),
        npa_date: Some(date("2021-06-29")),
        // NBFC sub-standard: 10% of ₹1,00,000.
        provision: rupees(10_000),
        provision_rate_bp: 1_000,
    };
    assert_eq!(snapshot_row(path, date("2021-06-29"), "L1"), npa);
    assert_eq!(
        days_with_changes,
        ["2021-03-31", "2021-04-30", "2021-05-30", "2021-06-29"]
    );
    assert_eq!(
        changes(path, date("2021-04-30")),
        [change("L1", AssetClass::Sma0, AssetClass::Sma1, 31)]
    );

    // When a part payment on 2021-07-01 clears the instalments up to April,
    // then the NPA date carries over although DPD is below 91.
    let part_paid = [loan("L1", "B1", Some("2021-04-30"))];
    run(path, date("2021-07-01"), &part_paid, &policy);
    let row = snapshot_row(path, date("2021-07-01"), "L1");
    assert_eq!(row.dpd, 63);
    assert_eq!(row.class, "SUBSTANDARD");
    assert_eq!(row.npa_date, Some(date("2021-06-29")));
    assert!(changes(path, date("2021-07-01")).is_empty());

    // When every arrear is paid on 2021-07-02, then the loan is upgraded.
    run(path, date("2021-07-02"), &[loan("L1", "B1", None)], &policy);
    let row = snapshot_row(path, date("2021-07-02"), "L1");
    assert_eq!(row.class, "STANDARD");
    assert_eq!(row.npa_date, None);
    assert_eq!(
        changes(path, date("2021-07-02")),
        [change(
            "L1",
            AssetClass::Substandard,
            AssetClass::Standard,
            0
        )]
    );
}

#[test]
fn npa_loan_drags_borrower_other_loans() {
    let lake = tempfile::tempdir().unwrap();
    let as_of = date("2024-05-10");
    // Given borrower B1 with L1 at 95 DPD, L2 current and L3 at 12 DPD
    // flagged as a loss, and borrower B2 with one loan at 12 DPD:
    let mut loss = loan("L3", "B1", Some("2024-04-29"));
    loss.loss_identified = true;
    let rows = [
        loan("L1", "B1", Some("2024-02-06")),
        loan("L2", "B1", None),
        loss,
        loan("L4", "B2", Some("2024-04-29")),
    ];

    // When day-end runs for 2024-05-10,
    let summary = run(lake.path(), as_of, &rows, &JobPolicy::default());

    // then all of B1's loans are NPA from L1's NPA date, L3 is LOSS, and B2
    // stays SMA-0.
    let npa_date = Some(date("2024-05-06"));
    let l1 = snapshot_row(lake.path(), as_of, "L1");
    assert_eq!(
        (l1.dpd, l1.class.as_str(), l1.npa_date),
        (95, "SUBSTANDARD", npa_date)
    );
    let l2 = snapshot_row(lake.path(), as_of, "L2");
    assert_eq!(
        (l2.dpd, l2.class.as_str(), l2.npa_date),
        (0, "SUBSTANDARD", npa_date)
    );
    assert_eq!(l2.provision, rupees(10_000));
    let l3 = snapshot_row(lake.path(), as_of, "L3");
    assert_eq!(
        (l3.dpd, l3.class.as_str(), l3.npa_date),
        (12, "LOSS", npa_date)
    );
    assert_eq!(l3.provision, rupees(100_000));
    let l4 = snapshot_row(lake.path(), as_of, "L4");
    assert_eq!(
        (l4.dpd, l4.class.as_str(), l4.npa_date),
        (12, "SMA-0", None)
    );

    let count = |class: AssetClass| {
        summary
            .by_class
            .iter()
            .find(|total| total.0 == class)
            .map(|total| total.1)
    };
    assert_eq!(count(AssetClass::Substandard), Some(2));
    assert_eq!(count(AssetClass::Loss), Some(1));
    assert_eq!(count(AssetClass::Sma0), Some(1));
    assert_eq!(summary.total_outstanding, rupees(400_000));
    assert_eq!(
        summary.total_provision,
        rupees(10_000 + 10_000 + 100_000 + 400)
    );
}

/// Outstanding ₹10 lakh, security ₹6 lakh, NPA for 400 days on 2024-06-30,
/// so doubtful for under a year (D1).
fn worked_example(regime: ProvisioningRegime) -> Row {
    let lake = tempfile::tempdir().unwrap();
    let as_of = date("2024-06-30");
    let mut row = loan("L1", "B1", Some(&as_of.add_days(-490).to_string()));
    row.outstanding_principal = rupees(1_000_000);
    row.secured_value = rupees(600_000);
    row.unsecured_exposure = false;
    let policy = JobPolicy {
        classification: ClassificationPolicy::default(),
        provisioning: ProvisioningPolicy {
            regime,
            standard_bp: 40,
        },
    };
    run(lake.path(), as_of, &[row], &policy);
    snapshot_row(lake.path(), as_of, "L1")
}

#[test]
fn worked_provisioning_example_nbfc() {
    let row = worked_example(ProvisioningRegime::Nbfc);
    assert_eq!(row.class, "DOUBTFUL-1");
    assert_eq!(row.dpd, 491);
    // 20% of ₹6 lakh secured plus 100% of ₹4 lakh unsecured.
    assert_eq!(row.provision, rupees(520_000));
    assert_eq!(row.provision_rate_bp, 5_200);
}

#[test]
fn worked_provisioning_example_bank() {
    let row = worked_example(ProvisioningRegime::Bank);
    assert_eq!(row.class, "DOUBTFUL-1");
    // 25% of ₹6 lakh secured plus 100% of ₹4 lakh unsecured.
    assert_eq!(row.provision, rupees(550_000));
    assert_eq!(row.provision_rate_bp, 5_500);
}

#[test]
fn bank_unsecured_substandard_at_25_percent() {
    let lake = tempfile::tempdir().unwrap();
    let as_of = date("2024-06-30");
    let policy = JobPolicy {
        classification: ClassificationPolicy::default(),
        provisioning: ProvisioningPolicy {
            regime: ProvisioningRegime::Bank,
            standard_bp: 40,
        },
    };
    let mut secured = loan("L2", "B2", Some("2024-03-01"));
    secured.secured_value = rupees(50_000);
    secured.unsecured_exposure = false;
    let rows = [loan("L1", "B1", Some("2024-03-01")), secured];
    run(lake.path(), as_of, &rows, &policy);
    let unsecured = snapshot_row(lake.path(), as_of, "L1");
    assert_eq!(unsecured.class, "SUBSTANDARD");
    assert_eq!(unsecured.provision, rupees(25_000));
    let secured = snapshot_row(lake.path(), as_of, "L2");
    assert_eq!(secured.class, "SUBSTANDARD");
    assert_eq!(secured.provision, rupees(15_000));
}

#[test]
fn changes_list_only_class_changes() {
    let lake = tempfile::tempdir().unwrap();
    let policy = JobPolicy::default();
    let day1 = date("2024-01-10");
    let day2 = day1.succ();
    let day3 = day2.succ();

    // Given day 1 with A current, B at 10 DPD and C at 40 DPD,
    let first = [
        loan("A", "BA", None),
        loan("B", "BB", Some("2024-01-01")),
        loan("C", "BC", Some("2023-12-02")),
    ];
    let summary = run(lake.path(), day1, &first, &policy);
    // then on the first day of the chain every loan not STANDARD is a change.
    assert_eq!(summary.prior_snapshot, None);
    assert_eq!(
        changes(lake.path(), day1),
        [
            change("B", AssetClass::Standard, AssetClass::Sma0, 10),
            change("C", AssetClass::Standard, AssetClass::Sma1, 40),
        ]
    );

    // When on day 2 every DPD grows by one within its band, a new current
    // loan D and a new loan E at 5 DPD appear, and A leaves the book,
    let second = [
        loan("B", "BB", Some("2024-01-01")),
        loan("C", "BC", Some("2023-12-02")),
        loan("D", "BD", None),
        loan("E", "BE", Some("2024-01-07")),
    ];
    let summary = run(lake.path(), day2, &second, &policy);
    // then only E is listed: D counts as previously STANDARD.
    assert_eq!(summary.prior_snapshot, Some(day1));
    assert_eq!(summary.changes, 1);
    assert_eq!(
        changes(lake.path(), day2),
        [change("E", AssetClass::Standard, AssetClass::Sma0, 5)]
    );

    // When on day 3 B reaches 31 DPD (its oldest unpaid due moves back),
    let third = [
        loan("B", "BB", Some("2023-12-13")),
        loan("C", "BC", Some("2023-12-02")),
        loan("D", "BD", None),
        loan("E", "BE", Some("2024-01-07")),
    ];
    run(lake.path(), day3, &third, &policy);
    // then B is the only change.
    assert_eq!(
        changes(lake.path(), day3),
        [change("B", AssetClass::Sma0, AssetClass::Sma1, 31)]
    );
}

#[test]
fn gap_in_chain_drops_prior_npa() {
    let lake = tempfile::tempdir().unwrap();
    let policy = JobPolicy::default();
    let npa_day = date("2024-05-10");
    run(
        lake.path(),
        npa_day,
        &[loan("L1", "B1", Some("2024-02-06"))],
        &policy,
    );
    assert_eq!(
        snapshot_row(lake.path(), npa_day, "L1").class,
        "SUBSTANDARD"
    );

    // With the previous day's snapshot the NPA date carries over.
    let part_paid = [loan("L1", "B1", Some("2024-04-20"))];
    let next = npa_day.succ();
    run(lake.path(), next, &part_paid, &policy);
    let row = snapshot_row(lake.path(), next, "L1");
    assert_eq!(row.class, "SUBSTANDARD");
    assert_eq!(row.npa_date, Some(date("2024-05-06")));

    // Two days later, without the day in between, there is no prior state.
    let after_gap = next.succ().succ();
    let summary = run(lake.path(), after_gap, &part_paid, &policy);
    assert_eq!(summary.prior_snapshot, None);
    let row = snapshot_row(lake.path(), after_gap, "L1");
    assert_eq!(row.class, "SMA-0");
    assert_eq!(row.npa_date, None);
}

#[test]
fn missing_positions_error_names_file() {
    let lake = tempfile::tempdir().unwrap();
    let as_of = date("2024-05-10");
    let error = run_day_end(lake.path(), as_of, &JobPolicy::default()).unwrap_err();
    let message = format!("{error:#}");
    let expected_path = partition_path(lake.path(), "positions", as_of);
    assert!(
        message.contains(&expected_path.display().to_string()),
        "{message}"
    );
    assert!(message.contains("Export the loan positions"), "{message}");
    assert!(!partition_path(lake.path(), SNAPSHOT, as_of).exists());
}

#[test]
fn rerun_writes_identical_files() {
    let lake = tempfile::tempdir().unwrap();
    let as_of = date("2024-05-10");
    let rows = [
        loan("L2", "B1", None),
        loan("L1", "B1", Some("2024-02-06")),
        loan("L3", "B2", Some("2024-05-01")),
    ];
    run(lake.path(), as_of, &rows, &JobPolicy::default());
    let snapshot = std::fs::read(partition_path(lake.path(), SNAPSHOT, as_of)).unwrap();
    let changed = std::fs::read(partition_path(lake.path(), CHANGES, as_of)).unwrap();

    let mut reversed = rows.to_vec();
    reversed.reverse();
    run(lake.path(), as_of, &reversed, &JobPolicy::default());
    assert_eq!(
        std::fs::read(partition_path(lake.path(), SNAPSHOT, as_of)).unwrap(),
        snapshot
    );
    assert_eq!(
        std::fs::read(partition_path(lake.path(), CHANGES, as_of)).unwrap(),
        changed
    );
}

#[test]
fn snapshot_has_documented_columns() {
    let lake = tempfile::tempdir().unwrap();
    let as_of = date("2024-05-10");
    run(
        lake.path(),
        as_of,
        &[loan("L1", "B1", None)],
        &JobPolicy::default(),
    );
    let snapshot = read_partition(lake.path(), SNAPSHOT, as_of).unwrap();
    let names: Vec<&str> = snapshot
        .get_column_names()
        .into_iter()
        .map(|name| name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "loan_id",
            "borrower_id",
            "as_of",
            "dpd",
            "asset_class",
            "npa_date",
            "overdue",
            "outstanding_principal",
            "secured_value",
            "provision_rate_bp",
            "provision",
        ]
    );
    assert_eq!(snapshot.column("as_of").unwrap().dtype(), &DataType::Date);
    assert_eq!(
        snapshot.column("provision").unwrap().dtype(),
        &DataType::Int64
    );
    let changes = read_partition(lake.path(), CHANGES, as_of).unwrap();
    let names: Vec<&str> = changes
        .get_column_names()
        .into_iter()
        .map(|name| name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "loan_id",
            "borrower_id",
            "previous_class",
            "asset_class",
            "dpd"
        ]
    );
}

#[test]
fn bench_runs_on_small_book() {
    let (seconds, peak_bytes) = underwrite_jobs::day_end::bench_day_end(2_000).unwrap();
    assert!(seconds > 0.0);
    if Path::new("/proc/self/status").exists() {
        assert!(peak_bytes > 0);
    }
}
