//! The NPA report written from a day-end snapshot in a temporary lake.

use std::fs;
use std::path::Path;

use polars::prelude::*;
use underwrite_domain::{AssetClass, BusinessDate, Paise};
use underwrite_jobs::day_end::{JobPolicy, run_day_end};
use underwrite_jobs::lake::{PositionRow, write_positions};
use underwrite_jobs::report::{REPORT_COLUMNS, ReportSummary, npa_report};

const HEADER: &str = "loan_id,borrower_id,as_of,outstanding_principal,overdue_amount,dpd,\
                      asset_class,npa_date,secured_value,provision_rate,provision_amount";

fn date(text: &str) -> BusinessDate {
    text.parse().unwrap()
}

fn position(
    loan_id: &str,
    borrower_id: &str,
    oldest_unpaid_due: Option<&str>,
    outstanding_paise: i64,
    secured_paise: i64,
) -> PositionRow {
    PositionRow {
        loan_id: loan_id.to_string(),
        borrower_id: borrower_id.to_string(),
        oldest_unpaid_due: oldest_unpaid_due.map(date),
        overdue: Paise::new(if oldest_unpaid_due.is_some() {
            12_345
        } else {
            0
        }),
        outstanding_principal: Paise::new(outstanding_paise),
        secured_value: Paise::new(secured_paise),
        unsecured_exposure: secured_paise == 0,
        loss_identified: false,
    }
}

/// Creates a lake with a day-end for 2024-06-30 covering performing, SMA, NPA and
/// doubtful loans.
fn lake_with_snapshot() -> (tempfile::TempDir, BusinessDate) {
    let lake = tempfile::tempdir().unwrap();
    let as_of = date("2024-06-30");
    let mut loss = position("L06", "B05", Some("2024-06-20"), 2_000_000, 0);
    loss.loss_identified = true;
    let rows = [
        position("L03", "B03", Some("2024-05-20"), 25_000_050, 0),
        position("L01", "B01", None, 123_450, 0),
        position("L02", "B02", Some("2024-06-25"), 99_999, 0),
        position("L04", "B04", Some("2024-03-01"), 100_000_000, 0),
        position("L05", "B05", Some("2023-01-01"), 100_000_000, 60_000_000),
        loss,
        position("L07", "B07", None, 0, 0),
    ];
    write_positions(lake.path(), as_of, &rows).unwrap();
    run_day_end(lake.path(), as_of, &JobPolicy::default()).unwrap();
    (lake, as_of)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn file_name(path: &Path) -> &str {
    path.file_name().unwrap().to_str().unwrap()
}

fn report(lake: &Path, as_of: BusinessDate, out: &Path) -> ReportSummary {
    npa_report(lake, as_of, out, &JobPolicy::default()).unwrap()
}

#[test]
fn report_files_and_columns() {
    let (lake, as_of) = lake_with_snapshot();
    let out = tempfile::tempdir().unwrap();
    let summary = report(lake.path(), as_of, out.path());

    let names: Vec<&str> = summary.files.iter().map(|path| file_name(path)).collect();
    assert_eq!(
        names,
        [
            "npa_report_2024-06-30.csv",
            "npa_report_2024-06-30.parquet",
            "npa_summary_2024-06-30.csv",
            "npa_summary_2024-06-30.md",
        ]
    );
    for path in &summary.files {
        assert!(path.is_file(), "{} missing", path.display());
    }
    let leftovers: Vec<String> = fs::read_dir(out.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let csv = lines(&summary.files[0]);
    assert_eq!(csv[0], HEADER);
    assert_eq!(csv.len(), 1 + 7);
    let loan_ids: Vec<&str> = csv[1..]
        .iter()
        .map(|line| line.split(',').next().unwrap())
        .collect();
    assert_eq!(loan_ids, ["L01", "L02", "L03", "L04", "L05", "L06", "L07"]);

    let parquet = fs::File::open(&summary.files[1]).unwrap();
    let frame = ParquetReader::new(parquet).finish().unwrap();
    let columns: Vec<&str> = frame
        .get_column_names()
        .into_iter()
        .map(|name| name.as_str())
        .collect();
    assert_eq!(columns, REPORT_COLUMNS);
    assert_eq!(HEADER.split(',').collect::<Vec<_>>(), REPORT_COLUMNS);
    assert_eq!(frame.height(), 7);
}

#[test]
fn report_rows_format_money_rates_and_dates() {
    let (lake, as_of) = lake_with_snapshot();
    let out = tempfile::tempdir().unwrap();
    let summary = report(lake.path(), as_of, out.path());
    let csv = lines(&summary.files[0]);

    // Current loan: no NPA date, 0.40% of ₹1,234.50 rounds to ₹4.94.
    assert_eq!(
        csv[1],
        "L01,B01,2024-06-30,1234.50,0.00,0,STANDARD,,0.00,0.40,4.94"
    );
    // Six days past due: SMA-0.
    assert_eq!(
        csv[2],
        "L02,B02,2024-06-30,999.99,123.45,6,SMA-0,,0.00,0.40,4.00"
    );
    // 122 days past due from 2024-03-01: NPA since 2024-05-30 (DPD 91), NBFC 10%.
    assert_eq!(
        csv[4],
        "L04,B04,2024-06-30,1000000.00,123.45,122,SUBSTANDARD,2024-05-30,0.00,10.00,100000.00"
    );
    // NPA since 2023-04-01, so D1 on 2024-06-30: 20% of ₹6 lakh secured plus
    // all of the ₹4 lakh unsecured part.
    assert_eq!(
        csv[5],
        "L05,B05,2024-06-30,1000000.00,123.45,547,DOUBTFUL-1,2023-04-01,600000.00,52.00,520000.00"
    );
    // Loss-identified loan of the same NPA borrower.
    assert_eq!(
        csv[6],
        "L06,B05,2024-06-30,20000.00,123.45,11,LOSS,2023-04-01,0.00,100.00,20000.00"
    );
    // Nothing outstanding: rate 0.
    assert_eq!(
        csv[7],
        "L07,B07,2024-06-30,0.00,0.00,0,STANDARD,,0.00,0.00,0.00"
    );
}

#[test]
fn summary_totals_equal_sum_of_rows() {
    let (lake, as_of) = lake_with_snapshot();
    let out = tempfile::tempdir().unwrap();
    let summary = report(lake.path(), as_of, out.path());

    let rows = lines(&summary.files[0]);
    let mut row_outstanding = Paise::ZERO;
    let mut row_provision = Paise::ZERO;
    for line in &rows[1..] {
        let fields: Vec<&str> = line.split(',').collect();
        row_outstanding += fields[3].parse::<Paise>().unwrap();
        row_provision += fields[10].parse::<Paise>().unwrap();
    }

    let table = lines(&summary.files[2]);
    assert_eq!(table[0], "asset_class,count,outstanding,provision");
    let classes: Vec<&str> = table[1..]
        .iter()
        .map(|line| line.split(',').next().unwrap())
        .collect();
    let mut expected_classes: Vec<&str> =
        AssetClass::ALL.iter().map(|class| class.as_str()).collect();
    expected_classes.push("TOTAL");
    assert_eq!(classes, expected_classes);

    let mut count = 0u64;
    let mut outstanding = Paise::ZERO;
    let mut provision = Paise::ZERO;
    for line in &table[1..10] {
        let fields: Vec<&str> = line.split(',').collect();
        count += fields[1].parse::<u64>().unwrap();
        outstanding += fields[2].parse::<Paise>().unwrap();
        provision += fields[3].parse::<Paise>().unwrap();
    }
    let total: Vec<&str> = table[10].split(',').collect();
    assert_eq!(total[1].parse::<u64>().unwrap(), count);
    assert_eq!(total[2].parse::<Paise>().unwrap(), outstanding);
    assert_eq!(total[3].parse::<Paise>().unwrap(), provision);
    assert_eq!(count, 7);
    assert_eq!(outstanding, row_outstanding);
    assert_eq!(provision, row_provision);
    assert_eq!(summary.total_outstanding, row_outstanding);
    assert_eq!(summary.total_provision, row_provision);
    assert_eq!(summary.loans, 7);

    // Classes without loans are listed with zeros.
    assert_eq!(table[4], "SMA-2,0,0.00,0.00");
    assert_eq!(table[7], "DOUBTFUL-2,0,0.00,0.00");
    assert_eq!(table[2], "SMA-0,1,999.99,4.00");
}

#[test]
fn markdown_summary_states_ratio_and_table() {
    let (lake, as_of) = lake_with_snapshot();
    let out = tempfile::tempdir().unwrap();
    let summary = report(lake.path(), as_of, out.path());
    let text = fs::read_to_string(&summary.files[3]).unwrap();

    assert!(text.contains("2024-06-30"), "{text}");
    assert!(text.contains("NBFC"), "{text}");
    assert!(text.contains("- Loans: 7"), "{text}");
    assert!(
        text.contains("- NPA loans (SUBSTANDARD, DOUBTFUL-1 to 3, LOSS): 3"),
        "{text}"
    );
    // NPA outstanding ₹10,00,000 + ₹10,00,000 + ₹20,000 of ₹22,72,234.99.
    assert!(
        text.contains("₹20,20,000.00 of ₹22,72,234.99 outstanding principal = 88.90%"),
        "{text}"
    );
    assert!(
        text.contains("| DOUBTFUL-1 | 1 | 10,00,000.00 | 5,20,000.00 |"),
        "{text}"
    );
    assert!(text.contains("| SMA-2 | 0 | 0.00 | 0.00 |"), "{text}");
}

#[test]
fn rerun_writes_identical_bytes() {
    let (lake, as_of) = lake_with_snapshot();
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let first_summary = report(lake.path(), as_of, first.path());
    let second_summary = report(lake.path(), as_of, second.path());

    assert_eq!(first_summary.files.len(), 4);
    for (one, other) in first_summary.files.iter().zip(&second_summary.files) {
        assert_eq!(file_name(one), file_name(other));
        assert_eq!(
            fs::read(one).unwrap(),
            fs::read(other).unwrap(),
            "{} differs between runs",
            file_name(one)
        );
    }
    assert_eq!(first_summary.by_class, second_summary.by_class);
}

#[test]
fn missing_snapshot_names_partition() {
    let lake = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let as_of = date("2024-06-30");
    let error = npa_report(lake.path(), as_of, out.path(), &JobPolicy::default()).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("snapshot/business_date=2024-06-30/snapshot.parquet"),
        "{message}"
    );
    assert!(message.contains("Run day-end for 2024-06-30"), "{message}");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn report_rejects_other_policy() {
    let (lake, as_of) = lake_with_snapshot();
    let out = tempfile::tempdir().unwrap();
    let mut bank = JobPolicy::default();
    bank.provisioning.regime = underwrite_domain::ProvisioningRegime::Bank;
    let error = npa_report(lake.path(), as_of, out.path(), &bank).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("underwrite.provisioning_regime=nbfc"),
        "{message}"
    );
    assert!(
        message.contains("underwrite.provisioning_regime=bank"),
        "{message}"
    );
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}
