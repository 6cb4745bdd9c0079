use std::collections::BTreeMap;

use super::*;
use crate::pricing::{
    BorrowerType, FeeAmount, FeeFrequency, FeeRule, LoanPurpose, PricingPolicy, PricingRequest,
    RateType, RiskGrade, quote,
};

fn date(text: &str) -> BusinessDate {
    text.parse().unwrap()
}

fn rupees(text: &str) -> Paise {
    text.parse().unwrap()
}

fn officer() -> GrievanceOfficer {
    GrievanceOfficer {
        name: "Meera Iyer".into(),
        designation: "Grievance Redressal Officer".into(),
        phone: "+91-22-4000-1234".into(),
        email: "grievance@example-lender.in".into(),
        address: "12 Marine Lines, Mumbai 400002".into(),
    }
}

fn annex_b_quote(rate_type: RateType) -> Quote {
    let fee = |name: &str, recipient, amount: &str| FeeRule {
        name: name.into(),
        recipient,
        frequency: FeeFrequency::OneTime,
        amount: FeeAmount::Flat {
            amount: rupees(amount),
        },
        gst: false,
    };
    let policy = PricingPolicy {
        rate_grid: BTreeMap::from([(RiskGrade::parse("A").unwrap(), "15.00".parse().unwrap())]),
        fees: vec![
            fee("processing fee", FeeRecipient::Lender, "240.00"),
            fee("credit insurance", FeeRecipient::ThirdParty, "160.00"),
        ],
        ..PricingPolicy::default()
    };
    let request = PricingRequest {
        grade: RiskGrade::parse("A").unwrap(),
        amount: rupees("20000.00"),
        tenor_months: 24,
        first_due_date: date("2024-07-05"),
        rate_type,
        borrower_type: BorrowerType::Individual,
        purpose: LoanPurpose::NonBusiness,
        microfinance: false,
    };
    quote(&policy, &request).unwrap()
}

fn issue_on(issued_on: &str, lender_name: &str, calendar: &WorkingCalendar) -> Kfs {
    let officer = officer();
    Kfs::issue(
        &annex_b_quote(RateType::Floating),
        &KfsIssue {
            application_id: "APP-1",
            borrower_id: "B1",
            lender_name,
            issued_on: date(issued_on),
            cooling_off_days: 3,
            grievance_officer: &officer,
            calendar,
        },
    )
}

#[test]
fn three_working_days_across_sunday() {
    let calendar = WorkingCalendar::default();
    // Friday 7 Jun 2024: Saturday 8, (Sunday 9 skipped), Monday 10, Tuesday 11.
    assert_eq!(
        valid_until(&calendar, date("2024-06-07"), 730),
        date("2024-06-11")
    );
    // Monday 3 Jun 2024: no Sunday in the way.
    assert_eq!(
        valid_until(&calendar, date("2024-06-03"), 730),
        date("2024-06-06")
    );
    // Saturday 8 Jun 2024: Monday 10, Tuesday 11, Wednesday 12.
    assert_eq!(
        valid_until(&calendar, date("2024-06-08"), 730),
        date("2024-06-12")
    );
}

#[test]
fn one_working_day_for_short_tenor() {
    let calendar = WorkingCalendar::default();
    assert_eq!(validity_working_days(6), 1);
    assert_eq!(validity_working_days(7), 3);
    // Saturday 8 Jun 2024, 6-day tenor: the next working day is Monday 10.
    assert_eq!(
        valid_until(&calendar, date("2024-06-08"), 6),
        date("2024-06-10")
    );
    assert_eq!(
        valid_until(&calendar, date("2024-06-04"), 6),
        date("2024-06-05")
    );
    assert_eq!(
        valid_until(&calendar, date("2024-06-04"), 7),
        date("2024-06-07")
    );
}

#[test]
fn holidays_are_skipped() {
    // Monday 10 Jun 2024 listed as a holiday.
    let calendar = WorkingCalendar::new([date("2024-06-10")]);
    assert!(!calendar.is_working_day(date("2024-06-10")));
    assert!(!calendar.is_working_day(date("2024-06-09")));
    assert!(calendar.is_working_day(date("2024-06-08")));
    assert_eq!(
        valid_until(&calendar, date("2024-06-07"), 730),
        date("2024-06-12")
    );
}

#[test]
fn issued_kfs_carries_annex_b_figures() {
    let kfs = issue_on(
        "2024-06-07",
        "Example Finance Ltd",
        &WorkingCalendar::default(),
    );
    assert_eq!(kfs.proposal_number, "KFS-APP-1-20240607");
    assert_eq!(kfs.valid_until, date("2024-06-11"));
    assert_eq!(kfs.apr.to_string(), "17.07");
    assert_eq!(kfs.fees_to_lender, rupees("240.00"));
    assert_eq!(kfs.fees_to_third_parties, rupees("160.00"));
    assert_eq!(kfs.quote.net_disbursed, rupees("19600.00"));
    assert_eq!(kfs.ombudsman_after_days, 30);
}

#[test]
fn acceptance_within_validity() {
    let kfs = issue_on(
        "2024-06-07",
        "Example Finance Ltd",
        &WorkingCalendar::default(),
    );
    assert_eq!(kfs.check_acceptance(date("2024-06-07")), Ok(()));
    assert_eq!(kfs.check_acceptance(date("2024-06-11")), Ok(()));
}

#[test]
fn expired_kfs_is_not_accepted() {
    let kfs = issue_on(
        "2024-06-07",
        "Example Finance Ltd",
        &WorkingCalendar::default(),
    );
    let error = kfs.check_acceptance(date("2024-06-12")).unwrap_err();
    assert_eq!(error.code(), "kfs_expired");
    assert!(
        error.to_string().contains("KFS-APP-1-20240607 expired"),
        "{error}"
    );
    assert!(
        error.to_string().contains("valid until 2024-06-11"),
        "{error}"
    );
    let early = kfs.check_acceptance(date("2024-06-06")).unwrap_err();
    assert_eq!(early.code(), "kfs_not_yet_issued");
}

fn has_devanagari(text: &str) -> bool {
    text.chars().any(|c| ('\u{0900}'..='\u{097F}').contains(&c))
}

#[test]
fn hindi_kfs_renders_every_field() {
    let kfs = issue_on(
        "2024-06-07",
        "Example Finance Ltd",
        &WorkingCalendar::default(),
    );
    let english = sections(&kfs, Language::English);
    let hindi = sections(&kfs, Language::Hindi);
    let html = render_html(&kfs, Language::Hindi);
    assert!(html.contains("<html lang=\"hi\">"));
    assert_eq!(english.len(), hindi.len());
    for (english_section, hindi_section) in english.iter().zip(&hindi) {
        assert!(
            has_devanagari(hindi_section.title),
            "{}",
            hindi_section.title
        );
        assert!(html.contains(&escape_html(hindi_section.title)));
        assert_eq!(english_section.rows.len(), hindi_section.rows.len());
        for ((english_label, _), (label, value)) in
            english_section.rows.iter().zip(&hindi_section.rows)
        {
            assert!(has_devanagari(label), "label {label:?} is not translated");
            assert_ne!(label, english_label);
            assert!(
                html.contains(&escape_html(label)),
                "HTML lacks label {label:?}"
            );
            assert!(
                html.contains(&escape_html(value)),
                "HTML lacks value {value:?} of {label:?}"
            );
        }
    }
    // The values every KFS must carry appear in the Hindi page.
    for expected in [
        "KFS-APP-1-20240607",
        "Example Finance Ltd",
        "2024-06-11",
        "₹20000.00",
        "₹969.73",
        "15.00",
        "परिवर्तनशील",
        "₹240.00",
        "₹160.00",
        "processing fee",
        "credit insurance",
        "₹19600.00",
        "17.07%",
        "अतिदेय किस्त",
        "शून्य: ",
        "Meera Iyer",
        "grievance@example-lender.in",
        "+91-22-4000-1234",
        "आरबीआई लोकपाल",
    ] {
        assert!(html.contains(expected), "Hindi KFS lacks {expected:?}");
    }
}

#[test]
fn english_kfs_renders_every_field() {
    let kfs = issue_on(
        "2024-06-07",
        "Example Finance Ltd",
        &WorkingCalendar::default(),
    );
    let html = render_html(&kfs, Language::English);
    assert!(html.contains("<html lang=\"en\">"));
    for section in sections(&kfs, Language::English) {
        for (label, value) in section.rows {
            assert!(
                html.contains(&escape_html(&label)),
                "HTML lacks label {label:?}"
            );
            assert!(
                html.contains(&escape_html(&value)),
                "HTML lacks value {value:?}"
            );
        }
    }
    assert!(html.contains("nil: floating-rate loans to individuals"));
}

#[test]
fn fixed_rate_kfs_shows_prepayment_charge() {
    let officer = officer();
    let calendar = WorkingCalendar::default();
    let kfs = Kfs::issue(
        &annex_b_quote(RateType::Fixed),
        &KfsIssue {
            application_id: "APP-2",
            borrower_id: "B2",
            lender_name: "Example Finance Ltd",
            issued_on: date("2024-06-07"),
            cooling_off_days: 3,
            grievance_officer: &officer,
            calendar: &calendar,
        },
    );
    let html = render_html(&kfs, Language::Hindi);
    assert!(
        html.contains("पूर्व-भुगतान की गई मूलधन राशि का 2.00%"),
        "{html}"
    );
}

#[test]
fn html_escapes_values() {
    let kfs = issue_on(
        "2024-06-07",
        "<script>alert('x')</script> & Co \"Ltd\"",
        &WorkingCalendar::default(),
    );
    for language in [Language::English, Language::Hindi] {
        let html = render_html(&kfs, language);
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains(
                "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; Co &quot;Ltd&quot;"
            )
        );
    }
}
