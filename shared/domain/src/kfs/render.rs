//! The KFS as labelled rows and as HTML, in English and in Hindi.
//!
//! Every label has an English and a Hindi (Devanagari) text. Values that
//! come from configuration, such as fee names and the grievance officer's
//! details, are shown as configured. Values whose wording underwrite writes
//! (rate type, fee frequency, charge descriptions, clauses) are translated.

use crate::money::Paise;
use crate::pricing::{
    FeeFrequency, FeeLine, FeeRecipient, PenalPolicy, PrepaymentProhibition, RateType,
};

use super::Kfs;

/// The language of a rendered KFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// English.
    English,
    /// Hindi, in Devanagari.
    Hindi,
}

impl Language {
    /// Returns the BCP 47 tag, for the HTML `lang` attribute.
    pub fn tag(self) -> &'static str {
        match self {
            Language::English => "en",
            Language::Hindi => "hi",
        }
    }

    fn pick(self, english: &'static str, hindi: &'static str) -> &'static str {
        match self {
            Language::English => english,
            Language::Hindi => hindi,
        }
    }
}

/// A titled group of labelled values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The section's title.
    pub title: &'static str,
    /// Label and value pairs, in display order.
    pub rows: Vec<(String, String)>,
}

fn rupees(amount: Paise) -> String {
    format!("₹{amount}")
}

fn rate_type(language: Language, rate_type: RateType) -> &'static str {
    match rate_type {
        RateType::Fixed => language.pick("fixed", "स्थिर"),
        RateType::Floating => language.pick("floating", "परिवर्तनशील"),
    }
}

fn frequency(language: Language, frequency: FeeFrequency) -> &'static str {
    match frequency {
        FeeFrequency::OneTime => language.pick("one-time", "एकमुश्त"),
        FeeFrequency::Recurring => language.pick("with every instalment", "प्रत्येक किस्त के साथ"),
    }
}

fn percent(basis_points: u32) -> String {
    format!("{}.{:02}%", basis_points / 100, basis_points % 100)
}

fn penal(language: Language, policy: PenalPolicy) -> String {
    match policy {
        PenalPolicy::Flat { amount } => match language {
            Language::English => format!("{} per overdue instalment", rupees(amount)),
            Language::Hindi => format!("प्रत्येक अतिदेय किस्त पर {}", rupees(amount)),
        },
        PenalPolicy::PercentOfOverdue { basis_points } => match language {
            Language::English => format!(
                "{} of the overdue instalment's unpaid interest and principal, once per instalment",
                percent(basis_points)
            ),
            Language::Hindi => format!(
                "अतिदेय किस्त के बकाया ब्याज और मूलधन का {}, प्रति किस्त एक बार",
                percent(basis_points)
            ),
        },
    }
}

fn prohibition(language: Language, rule: PrepaymentProhibition) -> &'static str {
    match (language, rule) {
        (Language::English, rule) => rule.describe(),
        (Language::Hindi, PrepaymentProhibition::Microfinance) => {
            "सूक्ष्म वित्त ऋणों पर कोई पूर्व-भुगतान प्रभार नहीं लगता (आरबीआई सूक्ष्म वित्त निदेश)"
        }
        (Language::Hindi, PrepaymentProhibition::FloatingNonBusinessIndividual) => {
            "गैर-व्यावसायिक प्रयोजन के लिए व्यक्तियों को दिए गए परिवर्तनशील दर वाले ऋणों पर कोई पूर्व-भुगतान प्रभार नहीं लगता (आरबीआई ऋणों पर पूर्व-भुगतान प्रभार निदेश 2025)"
        }
        (Language::Hindi, PrepaymentProhibition::FloatingBusinessAnyAmount) => {
            "व्यक्तियों और सूक्ष्म एवं लघु उद्यमों को दिए गए परिवर्तनशील दर वाले व्यावसायिक ऋणों पर इस श्रेणी का ऋणदाता कोई पूर्व-भुगतान प्रभार नहीं ले सकता (आरबीआई ऋणों पर पूर्व-भुगतान प्रभार निदेश 2025)"
        }
        (Language::Hindi, PrepaymentProhibition::FloatingBusinessUpToLimit) => {
            "व्यक्तियों और सूक्ष्म एवं लघु उद्यमों को दिए गए 50 लाख रुपये तक के परिवर्तनशील दर वाले व्यावसायिक ऋणों पर इस श्रेणी का ऋणदाता कोई पूर्व-भुगतान प्रभार नहीं ले सकता (आरबीआई ऋणों पर पूर्व-भुगतान प्रभार निदेश 2025)"
        }
    }
}

fn prepayment(language: Language, kfs: &Kfs) -> String {
    let terms = kfs.quote.prepayment;
    match (terms.forbidden_by, language) {
        (Some(rule), Language::English) => format!("nil: {}", prohibition(language, rule)),
        (Some(rule), Language::Hindi) => format!("शून्य: {}", prohibition(language, rule)),
        (None, Language::English) => {
            format!("{} of the principal prepaid", percent(terms.basis_points))
        }
        (None, Language::Hindi) => {
            format!(
                "पूर्व-भुगतान की गई मूलधन राशि का {}",
                percent(terms.basis_points)
            )
        }
    }
}

fn fee_rows(
    language: Language,
    fees: &[FeeLine],
    recipient: FeeRecipient,
) -> Vec<(String, String)> {
    fees.iter()
        .filter(|fee| fee.recipient == recipient)
        .map(|fee| {
            let label = match language {
                Language::English => format!("Fee: {}", fee.name),
                Language::Hindi => format!("शुल्क: {}", fee.name),
            };
            let value = match language {
                Language::English => format!(
                    "{} + GST {} = {}, {}",
                    rupees(fee.amount),
                    rupees(fee.gst),
                    rupees(fee.total()),
                    frequency(language, fee.frequency)
                ),
                Language::Hindi => format!(
                    "{} + जीएसटी {} = {}, {}",
                    rupees(fee.amount),
                    rupees(fee.gst),
                    rupees(fee.total()),
                    frequency(language, fee.frequency)
                ),
            };
            (label, value)
        })
        .collect()
}

/// Lays out a KFS as titled sections of label and value rows.
pub fn sections(kfs: &Kfs, language: Language) -> Vec<Section> {
    let l = |english: &'static str, hindi: &'static str| language.pick(english, hindi).to_string();
    let quote = &kfs.quote;
    let officer = &kfs.grievance_officer;

    let header = Section {
        title: language.pick("Key Fact Statement", "मुख्य तथ्य विवरण"),
        rows: vec![
            (
                l("Proposal number", "प्रस्ताव संख्या"),
                kfs.proposal_number.clone(),
            ),
            (l("Lender", "ऋणदाता"), kfs.lender_name.clone()),
            (l("Application", "आवेदन संख्या"), kfs.application_id.clone()),
            (l("Borrower", "उधारकर्ता"), kfs.borrower_id.clone()),
            (
                l("Date of issue", "जारी करने की तिथि"),
                kfs.issued_on.to_string(),
            ),
            (
                l("Valid for acceptance until", "स्वीकृति हेतु अंतिम वैध तिथि"),
                kfs.valid_until.to_string(),
            ),
        ],
    };

    let mut part_one_rows = vec![
        (l("Loan amount", "ऋण राशि"), rupees(quote.amount)),
        (
            l("Disbursal schedule", "संवितरण अनुसूची"),
            l("single disbursal on sanction", "स्वीकृति पर एकमुश्त संवितरण"),
        ),
        (
            l("Loan term (months)", "ऋण अवधि (महीने)"),
            quote.tenor_months.to_string(),
        ),
        (
            l("Number of instalments", "किस्तों की संख्या"),
            quote.tenor_months.to_string(),
        ),
        (
            l("Monthly instalment (EMI)", "मासिक किस्त (ईएमआई)"),
            rupees(quote.emi),
        ),
        (
            l("First instalment due on", "पहली किस्त की देय तिथि"),
            quote.first_due_date.to_string(),
        ),
        (
            l("Last instalment due on", "अंतिम किस्त की देय तिथि"),
            quote.last_due_date.to_string(),
        ),
        (
            l("Interest rate (% per year)", "ब्याज दर (% प्रति वर्ष)"),
            quote.annual_rate.to_string(),
        ),
        (
            l("Interest rate type", "ब्याज दर का प्रकार"),
            rate_type(language, quote.rate_type).to_string(),
        ),
        (l("Total interest", "कुल ब्याज"), rupees(quote.total_interest)),
        (
            l("(A) Fees payable to the lender", "(क) ऋणदाता को देय शुल्क"),
            rupees(kfs.fees_to_lender),
        ),
    ];
    part_one_rows.extend(fee_rows(language, &quote.fees, FeeRecipient::Lender));
    part_one_rows.push((
        l(
            "(B) Fees payable to third parties through the lender",
            "(ख) ऋणदाता के माध्यम से तृतीय पक्षों को देय शुल्क",
        ),
        rupees(kfs.fees_to_third_parties),
    ));
    part_one_rows.extend(fee_rows(language, &quote.fees, FeeRecipient::ThirdParty));
    part_one_rows.extend([
        (
            l("Net disbursed amount", "शुद्ध संवितरित राशि"),
            rupees(quote.net_disbursed),
        ),
        (
            l("Total amount payable", "कुल देय राशि"),
            rupees(quote.total_payable),
        ),
        (
            l("Annual percentage rate (APR)", "वार्षिक प्रतिशत दर (एपीआर)"),
            format!("{}%", kfs.apr),
        ),
        (
            l("Penal charges", "दंडात्मक प्रभार"),
            penal(language, quote.penal),
        ),
        (
            l(
                "Prepayment and foreclosure charges",
                "पूर्व-भुगतान और पुरोबंध (फोरक्लोज़र) प्रभार",
            ),
            prepayment(language, kfs),
        ),
    ]);
    let part_one = Section {
        title: language.pick(
            "Part 1: Interest rate and fees or charges",
            "भाग 1: ब्याज दर और शुल्क या प्रभार",
        ),
        rows: part_one_rows,
    };

    let part_two = Section {
        title: language.pick(
            "Part 2: Other qualitative information",
            "भाग 2: अन्य गुणात्मक जानकारी",
        ),
        rows: vec![
            (
                l("Cooling-off period (days)", "कूलिंग-ऑफ़ (पुनर्विचार) अवधि (दिन)"),
                kfs.cooling_off_days.to_string(),
            ),
            (
                l(
                    "Exit during the cooling-off period",
                    "कूलिंग-ऑफ़ अवधि में ऋण से बाहर निकलना",
                ),
                l(
                    "repay the principal and the proportionate APR; no penalty is charged",
                    "मूलधन और आनुपातिक एपीआर चुकाएँ; कोई दंड नहीं लगेगा",
                ),
            ),
            (
                l("Grievance redressal officer", "शिकायत निवारण अधिकारी"),
                officer.name.clone(),
            ),
            (l("Designation", "पदनाम"), officer.designation.clone()),
            (l("Telephone", "दूरभाष"), officer.phone.clone()),
            (l("Email", "ईमेल"), officer.email.clone()),
            (l("Address", "पता"), officer.address.clone()),
            (
                l("Escalation", "आगे शिकायत"),
                match language {
                    Language::English => format!(
                        "if the complaint is not resolved within {} days, you may approach the RBI Ombudsman",
                        kfs.ombudsman_after_days
                    ),
                    Language::Hindi => format!(
                        "यदि {} दिनों के भीतर शिकायत का समाधान नहीं होता, तो आप आरबीआई लोकपाल से संपर्क कर सकते हैं",
                        kfs.ombudsman_after_days
                    ),
                },
            ),
            (
                l("Recovery agents", "वसूली एजेंट"),
                l(
                    "recovery agents act under the RBI's code of conduct, and you are told who they are before they contact you",
                    "वसूली एजेंट आरबीआई की आचार संहिता के अधीन काम करते हैं, और संपर्क से पहले आपको उनकी जानकारी दी जाती है",
                ),
            ),
            (
                l("Transfer or securitisation", "ऋण का हस्तांतरण या प्रतिभूतिकरण"),
                l(
                    "the lender may transfer or securitise the loan and will tell you if it does",
                    "ऋणदाता ऋण का हस्तांतरण या प्रतिभूतिकरण कर सकता है और ऐसा करने पर आपको सूचित करेगा",
                ),
            ),
        ],
    };
    vec![header, part_one, part_two]
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Renders a KFS as a standalone HTML page, every label and value escaped.
pub fn render_html(kfs: &Kfs, language: Language) -> String {
    let sections = sections(kfs, language);
    let mut html = String::new();
    html.push_str("<!DOCTYPE html>\n");
    html.push_str(&format!("<html lang=\"{}\">\n<head>\n", language.tag()));
    html.push_str("<meta charset=\"utf-8\">\n");
    html.push_str(&format!(
        "<title>{} {}</title>\n</head>\n<body>\n",
        escape_html(sections[0].title),
        escape_html(&kfs.proposal_number)
    ));
    for (index, section) in sections.iter().enumerate() {
        let heading = if index == 0 { "h1" } else { "h2" };
        html.push_str(&format!(
            "<{heading}>{}</{heading}>\n<table>\n",
            escape_html(section.title)
        ));
        for (label, value) in &section.rows {
            html.push_str(&format!(
                "<tr><th scope=\"row\">{}</th><td>{}</td></tr>\n",
                escape_html(label),
                escape_html(value)
            ));
        }
        html.push_str("</table>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}
