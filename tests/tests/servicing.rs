//! Servicing scenarios on the embedded runtime: given input events, when the
//! services run, then the ledger, DPD, classes and emitted events.

use serde_json::Value;
use underwrite_domain::{BusinessDate, ClassificationPolicy};
use underwrite_mechanism::{LoanRecord, loan_key};
use underwrite_runtime::Store;
use underwrite_runtime::service::read_state;
use underwrite_tests::{Harness, days_closed, disbursal, repayment, reversal};

fn date(text: &str) -> BusinessDate {
    text.parse().unwrap()
}

fn summary(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(kind, p)| {
            let class = p.get("asset_class").and_then(Value::as_str).unwrap_or("-");
            format!(
                "{kind} {} {} {class} {}",
                p["loan_id"].as_str().unwrap(),
                p["as_of"].as_str().unwrap(),
                p["revision"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn rbi_example_dates() {
    let harness = Harness::new();
    let mut lines = vec![disbursal(
        "L1",
        "B1",
        "100000.00",
        "12.00",
        12,
        "2021-02-28",
        "2021-03-31",
    )];
    lines.extend(days_closed("2021-03-01", "2021-07-31"));
    harness.publish(&lines);
    harness.run().await;
    let events = summary(&harness.npa_events().await);
    assert_eq!(
        events,
        [
            "sma.classified L1 2021-03-31 SMA-0 original",
            "sma.classified L1 2021-04-30 SMA-1 original",
            "sma.classified L1 2021-05-30 SMA-2 original",
            "npa.bucket.changed L1 2021-06-29 SUBSTANDARD original",
            "npa.dlg.triggered L1 2021-07-28 - original",
        ]
    );
}

#[tokio::test]
async fn backdated_repayment_rewrites_history() {
    let harness = Harness::new();
    let mut lines = vec![disbursal(
        "L1",
        "B1",
        "100000.00",
        "12.00",
        12,
        "2024-02-01",
        "2024-03-01",
    )];
    lines.extend(days_closed("2024-02-01", "2024-03-20"));
    harness.publish(&lines);
    harness.run().await;
    let book = underwrite_npa::borrower_book(harness.store(), "B1")
        .await
        .unwrap()
        .unwrap();
    let before = &book.dpd_history(&ClassificationPolicy::default(), date("2024-03-20"))["L1"];
    assert_eq!(
        before
            .iter()
            .find(|(d, _)| *d == date("2024-03-20"))
            .unwrap()
            .1,
        20
    );

    // On 20 March a repayment valued 5 March arrives.
    harness.publish(&[repayment("P1", "L1", "8884.88", "2024-03-05", "2024-03-20")]);
    harness.run().await;
    let book = underwrite_npa::borrower_book(harness.store(), "B1")
        .await
        .unwrap()
        .unwrap();
    let after = &book.dpd_history(&ClassificationPolicy::default(), date("2024-03-20"))["L1"];
    for (day, dpd) in after.iter().filter(|(d, _)| *d >= date("2024-03-01")) {
        let expected = if *day < date("2024-03-05") {
            day.days_since(date("2024-03-01")) as u32 + 1
        } else {
            0
        };
        assert_eq!(*dpd, expected, "DPD on {day}");
    }
    let events = harness.npa_events().await;
    assert_eq!(
        summary(&events),
        [
            "sma.classified L1 2024-03-01 SMA-0 original",
            "sma.classified L1 2024-03-05 STANDARD correction",
        ]
    );
    assert_eq!(events[1].1["previous_class"], "SMA-0");
}

#[tokio::test]
async fn reversal_brings_back_arrears_as_correction() {
    let harness = Harness::new();
    let mut lines = vec![
        disbursal(
            "L1",
            "B1",
            "100000.00",
            "12.00",
            12,
            "2024-02-01",
            "2024-03-01",
        ),
        repayment("P1", "L1", "8884.88", "2024-03-01", "2024-03-01"),
    ];
    lines.extend(days_closed("2024-02-01", "2024-03-10"));
    harness.publish(&lines);
    harness.run().await;
    assert!(harness.npa_events().await.is_empty());

    harness.publish(&[reversal("P1", "L1", "2024-03-10")]);
    harness.run().await;
    assert_eq!(
        summary(&harness.npa_events().await),
        ["sma.classified L1 2024-03-01 SMA-0 correction"]
    );

    // A later reversal of the reversal's effect: the borrower pays again.
    harness.publish(&[repayment("P2", "L1", "8884.88", "2024-03-11", "2024-03-11")]);
    harness.publish(&days_closed("2024-03-11", "2024-03-12"));
    harness.run().await;
    let events = summary(&harness.npa_events().await);
    assert_eq!(
        events.last().unwrap(),
        "sma.classified L1 2024-03-11 STANDARD original"
    );
}

#[tokio::test]
async fn retraction_names_withdrawn_event() {
    let harness = Harness::new();
    let mut lines = vec![disbursal(
        "L1",
        "B1",
        "100000.00",
        "12.00",
        12,
        "2024-02-01",
        "2024-03-01",
    )];
    lines.extend(days_closed("2024-02-01", "2024-03-05"));
    harness.publish(&lines);
    harness.run().await;
    let first = harness
        .audited()
        .await
        .into_iter()
        .find(|e| e.source == "npa")
        .unwrap();

    // A payment valued before the due date: the SMA-0 never happened.
    harness.publish(&[repayment("P1", "L1", "8884.88", "2024-02-28", "2024-03-05")]);
    harness.run().await;
    let events = harness.npa_events().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].1["revision"], "retraction");
    assert_eq!(events[1].1["corrects"], first.id.as_str());
}

#[tokio::test]
async fn duplicate_repayment_changes_ledger_once() {
    let harness = Harness::new();
    let pay = repayment("P1", "L1", "5000.00", "2024-03-01", "2024-03-01");
    harness.publish(&[disbursal(
        "L1",
        "B1",
        "100000.00",
        "12.00",
        12,
        "2024-02-01",
        "2024-03-01",
    )]);
    harness.publish(std::slice::from_ref(&pay));
    harness.publish(std::slice::from_ref(&pay));
    // The same payment resent under a new event id is also a no-op.
    harness.publish(&[pay.replace("pay-P1", "pay-P1-resent")]);
    let progress = harness.run().await;
    assert_eq!(
        progress.duplicates, 3,
        "mechanism, npa and audit each drop one duplicate delivery"
    );
    let (record, _) = read_state::<LoanRecord>(harness.store(), &loan_key("L1"))
        .await
        .unwrap();
    let record = record.unwrap();
    assert_eq!(record.ledger.payments.len(), 1);
    assert_eq!(
        record
            .ledger
            .position(date("2024-03-01"))
            .overdue
            .to_string(),
        "3884.88"
    );
}

#[tokio::test]
async fn unknown_loan_lands_in_dlq() {
    let harness = Harness::new();
    harness.publish(&[repayment("P1", "NOPE", "10.00", "2024-03-01", "2024-03-01")]);
    let progress = harness.run().await;
    assert_eq!(
        progress.dead_lettered, 2,
        "mechanism and npa each dead-letter it"
    );
    let letters = harness.store().dead_letters(None).unwrap();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        assert_eq!(letter.error_kind, "retries_exhausted");
        assert_eq!(letter.error_code, "loan_not_found");
        assert!(
            letter.error_message.contains("loan NOPE not found"),
            "{}",
            letter.error_message
        );
        assert_eq!(letter.receive_count, 3);
    }
    let store: &dyn Store = harness.store();
    assert!(store.scan("loan/", None, 10).await.unwrap().is_empty());
    assert!(
        store
            .scan("npa/borrower/", None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // After the disbursal arrives, a replay succeeds.
    harness.publish(&[disbursal(
        "NOPE",
        "B9",
        "1000.00",
        "12.00",
        3,
        "2024-02-01",
        "2024-03-01",
    )]);
    harness.run().await;
    assert_eq!(harness.store().replay_dead_letters(None, None).unwrap(), 2);
    let progress = harness.run().await;
    assert_eq!(progress.dead_lettered, 0);
    let (record, _) = read_state::<LoanRecord>(harness.store(), &loan_key("NOPE"))
        .await
        .unwrap();
    assert_eq!(record.unwrap().ledger.payments.len(), 1);
}

#[tokio::test]
async fn malformed_message_is_dead_lettered_at_once() {
    let harness = Harness::new();
    harness
        .store()
        .send(&["mechanism"], "raw-1", "{not json")
        .unwrap();
    let progress = harness.run().await;
    assert_eq!(progress.dead_lettered, 1);
    let letter = &harness.store().dead_letters(Some("mechanism")).unwrap()[0];
    assert_eq!(letter.error_kind, "permanent");
    assert_eq!(letter.body, "{not json");
    assert_eq!(letter.receive_count, 1);
    assert!(
        letter.error_message.contains("malformed JSON"),
        "{}",
        letter.error_message
    );
}

#[tokio::test]
async fn npa_spreads_across_borrower_loans() {
    let harness = Harness::new();
    let mut lines = vec![
        disbursal(
            "L1",
            "B1",
            "100000.00",
            "12.00",
            12,
            "2024-01-05",
            "2024-02-05",
        ),
        disbursal(
            "L2",
            "B1",
            "50000.00",
            "14.00",
            12,
            "2024-01-10",
            "2024-02-10",
        ),
    ];
    // L2 is paid on time every month; L1 never.
    for (n, day) in ["2024-02-10", "2024-03-10", "2024-04-10", "2024-05-10"]
        .iter()
        .enumerate()
    {
        lines.push(repayment(&format!("L2-{n}"), "L2", "4489.21", day, day));
    }
    lines.sort_by_key(|l| {
        serde_json::from_str::<Value>(l).unwrap()["occurred_at"]
            .as_str()
            .unwrap()
            .to_string()
    });
    let mut all = lines.clone();
    all.extend(days_closed("2024-01-05", "2024-05-10"));
    all.sort_by_key(|l| {
        serde_json::from_str::<Value>(l).unwrap()["occurred_at"]
            .as_str()
            .unwrap()
            .to_string()
    });
    harness.publish(&all);
    harness.run().await;
    let events = summary(&harness.npa_events().await);
    assert!(
        events.contains(&"npa.bucket.changed L1 2024-05-05 SUBSTANDARD original".to_string()),
        "{events:#?}"
    );
    assert!(
        events.contains(&"npa.bucket.changed L2 2024-05-05 SUBSTANDARD original".to_string()),
        "{events:#?}"
    );
}

#[tokio::test]
async fn day_closed_twice_or_late_changes_nothing() {
    let harness = Harness::new();
    let mut lines = vec![disbursal(
        "L1",
        "B1",
        "100000.00",
        "12.00",
        12,
        "2024-02-01",
        "2024-03-01",
    )];
    lines.extend(days_closed("2024-02-01", "2024-03-02"));
    harness.publish(&lines);
    harness.run().await;
    let before = harness.npa_events().await;
    let mut again = days_closed("2024-03-01", "2024-03-01");
    again[0] = again[0].replace("close-2024-03-01", "close-2024-03-01-again");
    harness.publish(&again);
    harness.run().await;
    assert_eq!(harness.npa_events().await, before);
}

#[tokio::test]
async fn audit_chain_verifies_and_names_tampering() {
    let harness = Harness::new();
    let mut lines = vec![disbursal(
        "L1",
        "B1",
        "100000.00",
        "12.00",
        12,
        "2024-02-01",
        "2024-03-01",
    )];
    lines.extend(days_closed("2024-02-01", "2024-03-03"));
    harness.publish(&lines);
    harness.run().await;
    let verification = underwrite_audit::verify(harness.store()).await.unwrap();
    assert_eq!(verification.first_broken, None);
    assert_eq!(verification.entries as usize, lines.len() + 1);

    let store: &dyn Store = harness.store();
    let key = underwrite_audit::entry_key(5);
    let mut entry: Value = store.get(&key).await.unwrap().unwrap().parse(&key).unwrap();
    entry["event"]["subject"] = Value::String("tampered".into());
    harness
        .store()
        .write_direct(&[underwrite_runtime::StateWrite::put_any(key, &entry)])
        .unwrap();
    let verification = underwrite_audit::verify(harness.store()).await.unwrap();
    let (seq, reason) = verification.first_broken.unwrap();
    assert_eq!(seq, 5);
    assert!(reason.contains("content was changed"), "{reason}");
}
