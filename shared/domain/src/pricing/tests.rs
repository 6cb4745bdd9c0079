use super::*;

fn rupees(text: &str) -> Paise {
    text.parse().unwrap()
}

fn flat_fee(name: &str, recipient: FeeRecipient, amount: &str) -> FeeRule {
    FeeRule {
        name: name.into(),
        recipient,
        frequency: FeeFrequency::OneTime,
        amount: FeeAmount::Flat {
            amount: rupees(amount),
        },
        gst: false,
    }
}

/// Builds the policy of the RBI KFS circular's Annex B example: ₹20,000 at
/// 15% for 24 months with ₹240 of fees to the lender and ₹160 to third parties.
fn annex_b_policy(fees: Vec<FeeRule>) -> PricingPolicy {
    PricingPolicy {
        rate_grid: BTreeMap::from([(RiskGrade::parse("A").unwrap(), "15.00".parse().unwrap())]),
        fees,
        ..PricingPolicy::default()
    }
}

fn annex_b_request() -> PricingRequest {
    PricingRequest {
        grade: RiskGrade::parse("A").unwrap(),
        amount: rupees("20000.00"),
        tenor_months: 24,
        first_due_date: "2024-11-05".parse().unwrap(),
        rate_type: RateType::Fixed,
        borrower_type: BorrowerType::Individual,
        purpose: LoanPurpose::NonBusiness,
        microfinance: false,
    }
}

#[test]
fn annex_b_apr_with_fees() {
    let policy = annex_b_policy(vec![
        flat_fee("processing fee", FeeRecipient::Lender, "240.00"),
        flat_fee("insurance", FeeRecipient::ThirdParty, "160.00"),
    ]);
    let quote = quote(&policy, &annex_b_request()).unwrap();
    assert_eq!(quote.emi, rupees("969.73"));
    assert_eq!(quote.net_disbursed, rupees("19600.00"));
    assert_eq!(quote.upfront_fees, rupees("400.00"));
    assert_eq!(quote.fees_to(FeeRecipient::Lender), rupees("240.00"));
    assert_eq!(quote.fees_to(FeeRecipient::ThirdParty), rupees("160.00"));
    assert_eq!(quote.apr.round_to_basis_points().to_string(), "17.07");
    assert_eq!(quote.annual_rate.to_string(), "15.00");
}

#[test]
fn annex_b_apr_without_fees() {
    let quote = quote(&annex_b_policy(vec![]), &annex_b_request()).unwrap();
    assert_eq!(quote.emi, rupees("969.73"));
    assert_eq!(quote.net_disbursed, rupees("20000.00"));
    assert_eq!(quote.apr.round_to_basis_points().to_string(), "15.00");
}

#[test]
fn annex_b_apr_without_third_party_fee() {
    let policy = annex_b_policy(vec![flat_fee(
        "processing fee",
        FeeRecipient::Lender,
        "240.00",
    )]);
    let quote = quote(&policy, &annex_b_request()).unwrap();
    assert_eq!(quote.apr.round_to_basis_points().to_string(), "16.24");
}

#[test]
fn one_lakh_apr_net_of_fee() {
    let policy = PricingPolicy {
        rate_grid: BTreeMap::from([(RiskGrade::parse("A").unwrap(), "12.00".parse().unwrap())]),
        fees: vec![flat_fee("processing fee", FeeRecipient::Lender, "2000.00")],
        ..PricingPolicy::default()
    };
    let request = PricingRequest {
        amount: rupees("100000.00"),
        tenor_months: 12,
        ..annex_b_request()
    };
    let quote = quote(&policy, &request).unwrap();
    assert_eq!(quote.emi, rupees("8884.88"));
    assert_eq!(quote.apr.round_to_basis_points().to_string(), "15.85");
}

#[test]
fn percent_fee_with_gst() {
    let policy = annex_b_policy(vec![FeeRule {
        name: "processing fee".into(),
        recipient: FeeRecipient::Lender,
        frequency: FeeFrequency::OneTime,
        amount: FeeAmount::PercentOfAmount { basis_points: 150 },
        gst: true,
    }]);
    let quote = quote(&policy, &annex_b_request()).unwrap();
    assert_eq!(quote.fees[0].amount, rupees("300.00"));
    assert_eq!(quote.fees[0].gst, rupees("54.00"));
    assert_eq!(quote.net_disbursed, rupees("19646.00"));
}

#[test]
fn recurring_fee_raises_apr() {
    let policy = annex_b_policy(vec![FeeRule {
        name: "account maintenance".into(),
        recipient: FeeRecipient::Lender,
        frequency: FeeFrequency::Recurring,
        amount: FeeAmount::Flat {
            amount: rupees("10.00"),
        },
        gst: false,
    }]);
    let quote = quote(&policy, &annex_b_request()).unwrap();
    assert_eq!(quote.net_disbursed, rupees("20000.00"));
    assert_eq!(quote.recurring_fees, rupees("10.00"));
    assert_eq!(quote.fees_to(FeeRecipient::Lender), rupees("240.00"));
    assert!(quote.apr > "15.9".parse().unwrap(), "{}", quote.apr);
}

#[test]
fn penal_policy_leaves_rate_and_apr_alone() {
    let mut policy = annex_b_policy(vec![]);
    let base = quote(&policy, &annex_b_request()).unwrap();
    policy.penal = PenalPolicy::Flat {
        amount: rupees("500.00"),
    };
    let with_penal = quote(&policy, &annex_b_request()).unwrap();
    assert_eq!(with_penal.annual_rate, base.annual_rate);
    assert_eq!(with_penal.apr, base.apr);
    assert_eq!(with_penal.total_payable, base.total_payable);
    assert_eq!(with_penal.amount, base.amount);
}

#[test]
fn unknown_grade_is_named() {
    let request = PricingRequest {
        grade: RiskGrade::parse("Z").unwrap(),
        ..annex_b_request()
    };
    let error = quote(&annex_b_policy(vec![]), &request).unwrap_err();
    assert!(error.to_string().contains("risk grade Z"), "{error}");
    assert!(error.to_string().contains("grades priced: A"), "{error}");
}

#[test]
fn zero_tenor_is_rejected() {
    let request = PricingRequest {
        tenor_months: 0,
        ..annex_b_request()
    };
    let error = quote(&annex_b_policy(vec![]), &request).unwrap_err();
    assert!(
        error.to_string().contains("invalid tenor_months 0"),
        "{error}"
    );
}

#[test]
fn rejects_bad_grades() {
    for text in ["", "a b", "<A>", "ABCDEFGHIJKLMNOPQ"] {
        assert!(RiskGrade::parse(text).is_err(), "{text:?}");
    }
    assert!(RiskGrade::parse("B2+").is_ok());
}

fn case(
    rate_type: RateType,
    borrower_type: BorrowerType,
    purpose: LoanPurpose,
    lender: LenderCategory,
    amount: &str,
) -> PrepaymentCase {
    PrepaymentCase {
        rate_type,
        borrower_type,
        purpose,
        lender,
        amount: rupees(amount),
        microfinance: false,
    }
}

#[test]
fn prepayment_forbidden_cases() {
    use BorrowerType::*;
    use LenderCategory::*;
    use LoanPurpose::*;
    use PrepaymentProhibition::*;
    use RateType::*;
    let cases = [
        (
            case(
                Floating,
                Individual,
                NonBusiness,
                NbfcBaseLayer,
                "10000000.00",
            ),
            FloatingNonBusinessIndividual,
        ),
        (
            case(Floating, Individual, NonBusiness, LocalAreaBank, "20000.00"),
            FloatingNonBusinessIndividual,
        ),
        (
            case(
                Floating,
                Individual,
                Business,
                CommercialBank,
                "90000000.00",
            ),
            FloatingBusinessAnyAmount,
        ),
        (
            case(Floating, Mse, Business, UcbTier4, "90000000.00"),
            FloatingBusinessAnyAmount,
        ),
        (
            case(Floating, Mse, Business, NbfcUpperLayer, "90000000.00"),
            FloatingBusinessAnyAmount,
        ),
        (
            case(
                Floating,
                Mse,
                Business,
                AllIndiaFinancialInstitution,
                "90000000.00",
            ),
            FloatingBusinessAnyAmount,
        ),
        (
            case(Floating, Mse, Business, NbfcMiddleLayer, "5000000.00"),
            FloatingBusinessUpToLimit,
        ),
        (
            case(
                Floating,
                Individual,
                Business,
                SmallFinanceBank,
                "100000.00",
            ),
            FloatingBusinessUpToLimit,
        ),
        (
            case(Floating, Mse, Business, RegionalRuralBank, "100000.00"),
            FloatingBusinessUpToLimit,
        ),
        (
            case(Floating, Mse, Business, UcbTier3, "100000.00"),
            FloatingBusinessUpToLimit,
        ),
        (
            case(Floating, Mse, Business, StateCooperativeBank, "100000.00"),
            FloatingBusinessUpToLimit,
        ),
        (
            case(Floating, Mse, Business, CentralCooperativeBank, "100000.00"),
            FloatingBusinessUpToLimit,
        ),
    ];
    for (case, expected) in cases {
        assert_eq!(prepayment_prohibition(&case), Some(expected), "{case:?}");
    }
    let microfinance = PrepaymentCase {
        microfinance: true,
        ..case(Fixed, Individual, Business, NbfcMiddleLayer, "50000.00")
    };
    assert_eq!(prepayment_prohibition(&microfinance), Some(Microfinance));
}

#[test]
fn prepayment_allowed_cases() {
    use BorrowerType::*;
    use LenderCategory::*;
    use LoanPurpose::*;
    use RateType::*;
    let cases = [
        // Fixed-rate loans are outside the directions.
        case(Fixed, Individual, NonBusiness, CommercialBank, "20000.00"),
        // Above ₹50 lakh, a middle-layer NBFC may charge.
        case(Floating, Mse, Business, NbfcMiddleLayer, "5000000.01"),
        // Base-layer NBFCs and local area banks are not listed for business loans.
        case(Floating, Individual, Business, NbfcBaseLayer, "100000.00"),
        case(Floating, Mse, Business, LocalAreaBank, "100000.00"),
        // Borrowers that are neither individuals nor MSEs are not covered.
        case(Floating, Other, Business, CommercialBank, "100000.00"),
    ];
    for case in cases {
        assert_eq!(prepayment_prohibition(&case), None, "{case:?}");
    }
}

#[test]
fn forbidden_prepayment_charge_is_zero_in_quote() {
    let mut policy = annex_b_policy(vec![]);
    policy.prepayment_basis_points = 300;
    let floating = PricingRequest {
        rate_type: RateType::Floating,
        ..annex_b_request()
    };
    let quote_floating = quote(&policy, &floating).unwrap();
    assert_eq!(
        quote_floating.prepayment.forbidden_by,
        Some(PrepaymentProhibition::FloatingNonBusinessIndividual)
    );
    assert_eq!(quote_floating.prepayment.basis_points, 0);
    assert_eq!(
        quote_floating.prepayment.charge_on(rupees("10000.00")),
        Paise::ZERO
    );
    let quote_fixed = quote(&policy, &annex_b_request()).unwrap();
    assert_eq!(quote_fixed.prepayment.forbidden_by, None);
    assert_eq!(
        quote_fixed.prepayment.charge_on(rupees("10000.00")),
        rupees("300.00")
    );
}
