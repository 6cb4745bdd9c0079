//! The README's main job on the bundled real applicants, end to end. Every
//! application goes through origination and the approved ones are
//! disbursed. The report reconciles to the ledger and its summary to its
//! rows, and the npa service's classes match the polars day-end's.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use rusqlite::Connection;
use underwrite_domain::{BusinessDate, ClassificationPolicy, Paise};
use underwrite_npa::BorrowerBook;

const AS_OF: &str = "2025-06-30";

fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|line| {
            header
                .iter()
                .cloned()
                .zip(line.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

fn money(text: &str) -> Paise {
    text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

#[test]
fn main_job_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(env!("CARGO_BIN_EXE_underwrite"))
        .args(["example", "german-credit", "--out"])
        .arg(dir.path())
        .current_dir(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Outstanding reconciles to the ledger"),
        "{stdout}"
    );
    assert!(stdout.contains("0 dead letters"), "{stdout}");
    assert!(stdout.contains("Audit ledger intact"), "{stdout}");

    // Origination: one decision per application, approvals disbursed and
    // declines with their reason codes.
    let origination = dir.path().join("origination");
    let decisions = read_csv(&origination.join("decisions.csv"));
    assert_eq!(decisions.len(), 1034, "one row per application");
    let approved = decisions
        .iter()
        .filter(|r| r["status"] == "completed")
        .count();
    let declined: Vec<_> = decisions
        .iter()
        .filter(|r| r["status"] == "rolled_back")
        .collect();
    assert_eq!(
        approved + declined.len(),
        decisions.len(),
        "every saga finished"
    );
    assert!(approved > 700, "{approved} approved");
    assert!(!declined.is_empty(), "no application was declined");
    for row in &declined {
        assert!(!row["reason_codes"].is_empty(), "{row:?}");
    }
    assert!(
        stdout.contains(&format!("  {:<40} {approved:>7}", "loans disbursed")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Drew the repayment histories of {approved} loans")),
        "{stdout}"
    );
    let summary_md = std::fs::read_to_string(origination.join("origination_summary.md")).unwrap();
    assert!(summary_md.contains("applications"), "{summary_md}");
    let hindi: Vec<_> = std::fs::read_dir(&origination)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".hi.html"))
        .collect();
    assert_eq!(hindi.len(), 1, "one sample Hindi KFS");
    let hindi_text = std::fs::read_to_string(&hindi[0]).unwrap();
    assert!(
        hindi_text
            .chars()
            .any(|c| ('\u{0900}'..='\u{097F}').contains(&c)),
        "the Hindi KFS has no Devanagari"
    );

    let report = dir.path().join("report");
    let rows = read_csv(&report.join(format!("npa_report_{AS_OF}.csv")));
    assert!(rows.len() > 500, "{} loans in the report", rows.len());
    let summary = read_csv(&report.join(format!("npa_summary_{AS_OF}.csv")));
    let total = summary
        .iter()
        .find(|r| r.values().any(|v| v == "TOTAL"))
        .expect("TOTAL row");
    let outstanding: Paise = rows
        .iter()
        .map(|r| money(&r["outstanding_principal"]))
        .sum();
    let provision: Paise = rows.iter().map(|r| money(&r["provision_amount"])).sum();
    assert!(
        total.values().any(|v| *v == outstanding.to_string()),
        "summary {total:?} vs rows {outstanding}"
    );
    assert!(
        total.values().any(|v| *v == provision.to_string()),
        "summary {total:?} vs rows {provision}"
    );
    let npa_loans = rows
        .iter()
        .filter(|r| ["SUBSTANDARD", "DOUBTFUL-1"].contains(&r["asset_class"].as_str()))
        .count();
    assert!(
        npa_loans > 10,
        "the bad applicants should produce NPAs, found {npa_loans}"
    );
    assert!(
        rows.iter().any(|r| r["asset_class"].starts_with("SMA")),
        "some loans should be SMA"
    );

    // The npa service, which classified event by event, agrees with the
    // polars day-end on every loan in the report.
    let connection = Connection::open(dir.path().join("underwrite.db")).unwrap();
    let mut statement = connection
        .prepare("SELECT value FROM kv WHERE key LIKE 'npa/borrower/%'")
        .unwrap();
    let books: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let as_of: BusinessDate = AS_OF.parse().unwrap();
    let mut service_classes = BTreeMap::new();
    for text in books {
        let book: BorrowerBook = serde_json::from_str(&text).unwrap();
        // The changes announced event by event, resuming from checkpoints,
        // are exactly those a full replay of the history derives.
        let replayed = book.derived_transitions(&ClassificationPolicy::default(), as_of);
        let announced: Vec<_> = book
            .announced
            .iter()
            .map(|a| a.transition.clone())
            .collect();
        assert_eq!(announced.len(), replayed.len(), "{:?}", book.loans.keys());
        for transition in &replayed {
            assert!(
                announced.iter().any(|a| a.same_change(transition)),
                "{transition:?} was never announced"
            );
        }
        for (loan, state) in book.state_on(&ClassificationPolicy::default(), as_of) {
            service_classes.insert(loan, (state.class.as_str().to_string(), state.dpd));
        }
    }
    for row in &rows {
        let (class, dpd) = &service_classes[&row["loan_id"]];
        assert_eq!(class, &row["asset_class"], "loan {}", row["loan_id"]);
        assert_eq!(dpd.to_string(), row["dpd"], "loan {}", row["loan_id"]);
    }
}
