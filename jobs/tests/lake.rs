//! Lake partitions: layout, round trips, deterministic bytes and input
//! checks.

use std::fs;

use polars::prelude::*;
use underwrite_domain::{BusinessDate, Paise};
use underwrite_jobs::day_end::{JobPolicy, classify_frame};
use underwrite_jobs::lake::{
    POSITIONS, PositionRow, SNAPSHOT, latest_snapshot_before, partition_dates, partition_path,
    position_rows, positions_frame, read_positions, write_partition, write_positions,
};

fn date(text: &str) -> BusinessDate {
    text.parse().unwrap()
}

fn row(loan_id: &str, borrower_id: &str, due: Option<&str>) -> PositionRow {
    PositionRow {
        loan_id: loan_id.to_string(),
        borrower_id: borrower_id.to_string(),
        oldest_unpaid_due: due.map(date),
        overdue: Paise::from_rupees(2_500),
        outstanding_principal: Paise::from_rupees(100_000),
        secured_value: Paise::from_rupees(10_000),
        unsecured_exposure: true,
        loss_identified: loan_id.ends_with('9'),
    }
}

fn rows() -> Vec<PositionRow> {
    vec![
        row("L10", "B2", Some("2024-02-29")),
        row("L02", "B1", None),
        row("L09", "B1", Some("2024-03-01")),
    ]
}

#[test]
fn partition_path_layout() {
    let path = partition_path(std::path::Path::new("/lake"), POSITIONS, date("2024-03-31"));
    assert_eq!(
        path,
        std::path::Path::new("/lake/positions/business_date=2024-03-31/positions.parquet")
    );
}

#[test]
fn positions_round_trip_sorted() {
    let lake = tempfile::tempdir().unwrap();
    let as_of = date("2024-03-31");
    let path = write_positions(lake.path(), as_of, &rows()).unwrap();
    assert_eq!(path, partition_path(lake.path(), POSITIONS, as_of));

    let frame = read_positions(lake.path(), as_of).unwrap();
    assert_eq!(
        frame.column("oldest_unpaid_due").unwrap().dtype(),
        &DataType::Date
    );
    assert_eq!(frame.column("overdue").unwrap().dtype(), &DataType::Int64);
    let mut expected = rows();
    expected.sort_by(|a, b| a.loan_id.cmp(&b.loan_id));
    assert_eq!(position_rows(&frame).unwrap(), expected);

    let folder = path.parent().unwrap();
    let names: Vec<String> = fs::read_dir(folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["positions.parquet"]);
}

#[test]
fn positions_bytes_independent_of_row_order() {
    let lake = tempfile::tempdir().unwrap();
    let first = write_positions(lake.path(), date("2024-03-30"), &rows()).unwrap();
    let mut reversed = rows();
    reversed.reverse();
    let second = write_positions(lake.path(), date("2024-03-31"), &reversed).unwrap();
    assert_eq!(fs::read(first).unwrap(), fs::read(second).unwrap());
}

#[test]
fn duplicate_loan_rejected() {
    let lake = tempfile::tempdir().unwrap();
    let as_of = date("2024-03-31");
    let mut duplicated = rows();
    duplicated.push(row("L02", "B3", None));
    let error = write_positions(lake.path(), as_of, &duplicated).unwrap_err();
    assert!(error.to_string().contains("\"L02\""), "{error}");
    assert!(!partition_path(lake.path(), POSITIONS, as_of).exists());

    let frame = positions_frame(&duplicated).unwrap();
    let error = classify_frame(frame, None, as_of, &JobPolicy::default()).unwrap_err();
    assert!(error.to_string().contains("distinct loan_id"), "{error}");
}

#[test]
fn missing_positions_partition_names_path() {
    let lake = tempfile::tempdir().unwrap();
    let as_of = date("2024-03-31");
    let error = read_positions(lake.path(), as_of).unwrap_err();
    let expected = partition_path(lake.path(), POSITIONS, as_of);
    assert!(
        error.to_string().contains(&expected.display().to_string()),
        "{error}"
    );
}

#[test]
fn snapshot_dates_listed_in_order() {
    let lake = tempfile::tempdir().unwrap();
    let mut frame = df!("loan_id" => ["L1"]).unwrap();
    for day in ["2024-03-05", "2024-03-01", "2024-03-03"] {
        write_partition(lake.path(), SNAPSHOT, date(day), &mut frame).unwrap();
    }
    // A folder that is not a partition, and a partition folder without its file.
    fs::create_dir_all(lake.path().join(SNAPSHOT).join("notes")).unwrap();
    fs::create_dir_all(lake.path().join(SNAPSHOT).join("business_date=2024-03-04")).unwrap();

    assert_eq!(
        partition_dates(lake.path(), SNAPSHOT).unwrap(),
        [date("2024-03-01"), date("2024-03-03"), date("2024-03-05")]
    );
    let latest = |day: &str| latest_snapshot_before(lake.path(), date(day)).unwrap();
    assert_eq!(latest("2024-03-05"), Some(date("2024-03-03")));
    assert_eq!(latest("2024-03-06"), Some(date("2024-03-05")));
    assert_eq!(latest("2024-03-01"), None);
    assert!(partition_dates(lake.path(), "changes").unwrap().is_empty());
}

#[test]
fn classify_rejects_missing_column() {
    let frame = positions_frame(&rows())
        .unwrap()
        .drop("loss_identified")
        .unwrap();
    let error = classify_frame(frame, None, date("2024-03-31"), &JobPolicy::default()).unwrap_err();
    assert!(error.to_string().contains("loss_identified"), "{error}");
}

#[test]
fn classify_rejects_outstanding_beyond_i64_provision() {
    let mut huge = row("L1", "B1", None);
    huge.outstanding_principal = Paise::new(i64::MAX / 2);
    let frame = positions_frame(&[huge]).unwrap();
    let error = classify_frame(frame, None, date("2024-03-31"), &JobPolicy::default()).unwrap_err();
    assert!(
        error.to_string().contains("exceeds the supported maximum"),
        "{error}"
    );
}

#[test]
fn classify_handles_largest_supported_outstanding() {
    let mut large = row("L1", "B1", Some("2020-01-01"));
    large.outstanding_principal = Paise::new(underwrite_jobs::day_end::MAX_OUTSTANDING_PAISE);
    large.secured_value = Paise::ZERO;
    let frame = positions_frame(&[large]).unwrap();
    let snapshot = classify_frame(frame, None, date("2024-03-31"), &JobPolicy::default()).unwrap();
    // Doubtful-3 unsecured part at 100%: the whole outstanding.
    let provision = snapshot.column("provision").unwrap().i64().unwrap().get(0);
    assert_eq!(
        provision,
        Some(underwrite_jobs::day_end::MAX_OUTSTANDING_PAISE)
    );
    let rate = snapshot
        .column("provision_rate_bp")
        .unwrap()
        .i64()
        .unwrap()
        .get(0);
    assert_eq!(rate, Some(10_000));
}
