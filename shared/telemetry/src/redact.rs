//! Redaction of personal identifiers and secrets in log text.
//!
//! Each rule replaces what it finds with `[REDACTED:<kind>]`:
//!
//! | kind | what is matched |
//! |---|---|
//! | `secret` | the value of a field whose name contains `password`, `passwd`, `secret`, `token`, `api_key`, `apikey` or `authorization`, written `name=value`, `name: value` or `"name":"value"`; and the credential after `Bearer` or `Basic` |
//! | `email` | `local@domain.tld` |
//! | `pan` | a PAN: five letters, four digits, one letter (`ABCDE1234F`) |
//! | `aadhaar` | 12 digits whose first is 2 to 9, alone or grouped 4-4-4 by spaces or hyphens |
//! | `phone` | an Indian mobile number: 10 digits whose first is 6 to 9, optionally after `+91`, `91` or `0` |
//! | `account` | 9 to 18 digits right after an account label: `account`, `acct`, `a/c` or `bank_account`, optionally followed by `no`, `number` or `#` |
//!
//! Digit rules apply only to a standalone number: one not preceded by a
//! letter, digit, `_`, `-`, `.`, `/` or `:` and not followed by a letter,
//! digit, `_`, `-`, `/` or a decimal part. So parts of UUIDs, event and loan
//! ids (`pay-9876543210`), dates, times and decimal amounts stay readable.
//! Bank account numbers need their label because a bare run of 9 to 18
//! digits is as likely an amount in paise or a timestamp in milliseconds.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

const SECRET_NAMES: &str = r"password|passwd|secret|token|api_?key|authorization";

static SECRET_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    // name, then `=` or `:` with optional quotes and spaces, then a quoted
    // string (with escapes) or a bare value up to a separator.
    Regex::new(&format!(
        r#"(?i)(\b[a-z0-9_]*(?:{SECRET_NAMES})[a-z0-9_]*"?\s*[=:]\s*)("(?:[^"\\]|\\.)*"|\\"(?:[^"\\]|\\[^"])*\\"|[^\s",;&}}]+)"#
    ))
    .expect("secret field pattern compiles")
});

static BEARER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*").expect("bearer pattern compiles")
});

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
        .expect("email pattern compiles")
});

static PAN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b[A-Z]{5}[0-9]{4}[A-Z]\b").expect("PAN pattern compiles"));

static ACCOUNT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)(\b(?:bank_?)?(?:account|acct|a/c)(?:[_ .]?(?:no|number|num|#))?\.?"?\s*[:=]?\s*"?)([0-9]{9,18})\b"#,
    )
    .expect("account pattern compiles")
});

static AADHAAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[2-9][0-9]{3}(?:[0-9]{8}|[ ][0-9]{4}[ ][0-9]{4}|-[0-9]{4}-[0-9]{4})")
        .expect("Aadhaar pattern compiles")
});

static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+91[ \-]?|91[ \-]?|0)?[6-9][0-9]{4}[ ]?[0-9]{5}")
        .expect("phone pattern compiles")
});

/// Checks whether a log field of this name contains a secret, so that its whole
/// value is masked.
pub fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Masks personal identifiers and secrets in `text`, borrowing it unchanged
/// when nothing matches.
pub fn redact(text: &str) -> Cow<'_, str> {
    // Most log lines contain no digit run, '@' or secret name; checking
    // for these first keeps redaction cheap on them.
    let mut out = Cow::Borrowed(text);
    out = replace(out, &SECRET_FIELD, |caps| {
        // A quoted value keeps its quotes, so that JSON stays valid.
        let quote = match &caps[2] {
            value if value.starts_with("\\\"") => "\\\"",
            value if value.starts_with('"') => "\"",
            _ => "",
        };
        format!("{}{quote}[REDACTED:secret]{quote}", &caps[1])
    });
    out = replace(out, &BEARER, |caps| {
        format!("{} [REDACTED:secret]", &caps[1])
    });
    if out.contains('@') {
        out = replace(out, &EMAIL, |_| "[REDACTED:email]".into());
    }
    if out.bytes().any(|b| b.is_ascii_digit()) {
        out = replace(out, &PAN, |_| "[REDACTED:pan]".into());
        out = replace(out, &ACCOUNT, |caps| {
            format!("{}[REDACTED:account]", &caps[1])
        });
        out = replace_standalone(out, &AADHAAR, "[REDACTED:aadhaar]");
        out = replace_standalone(out, &PHONE, "[REDACTED:phone]");
    }
    out
}

fn replace<'a>(
    text: Cow<'a, str>,
    pattern: &Regex,
    with: impl Fn(&Captures) -> String,
) -> Cow<'a, str> {
    if !pattern.is_match(&text) {
        return text;
    }
    Cow::Owned(
        pattern
            .replace_all(&text, |caps: &Captures| with(caps))
            .into_owned(),
    )
}

/// Replaces the matches of a digit pattern that stand alone (see the
/// module's documentation).
fn replace_standalone<'a>(text: Cow<'a, str>, pattern: &Regex, with: &str) -> Cow<'a, str> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    for found in pattern.find_iter(&text) {
        let before = text[..found.start()].bytes().next_back();
        let after = bytes.get(found.end()).copied();
        let after_next = bytes.get(found.end() + 1).copied();
        let joined_before = before.is_some_and(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b':' | b'+')
        });
        let joined_after = after
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/'))
            || (after == Some(b'.') && after_next.is_some_and(|b| b.is_ascii_digit()));
        if joined_before || joined_after {
            continue;
        }
        out.push_str(&text[copied..found.start()]);
        out.push_str(with);
        copied = found.end();
    }
    if copied == 0 {
        return text;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(redact(input), expected, "redacting {input:?}");
    }

    #[test]
    fn pan_is_masked() {
        check(
            "borrower PAN ABCPE1234F verified",
            "borrower PAN [REDACTED:pan] verified",
        );
        check("pan=abcpe1234f", "pan=[REDACTED:pan]");
    }

    #[test]
    fn aadhaar_is_masked_plain_and_grouped() {
        check(
            "aadhaar 234567890123 seen",
            "aadhaar [REDACTED:aadhaar] seen",
        );
        check(
            "aadhaar 2345 6789 0123 seen",
            "aadhaar [REDACTED:aadhaar] seen",
        );
        check(
            "aadhaar 2345-6789-0123 seen",
            "aadhaar [REDACTED:aadhaar] seen",
        );
    }

    #[test]
    fn phone_is_masked_with_prefixes() {
        check("call 9876543210 now", "call [REDACTED:phone] now");
        check("call +91 9876543210 now", "call [REDACTED:phone] now");
        check("call +91-9876543210 now", "call [REDACTED:phone] now");
        check("call 09876543210 now", "call [REDACTED:phone] now");
        check("call 98765 43210 now", "call [REDACTED:phone] now");
        check(
            r#"{"mobile":"7012345678"}"#,
            r#"{"mobile":"[REDACTED:phone]"}"#,
        );
    }

    #[test]
    fn email_is_masked() {
        check(
            "sent to priya.sharma+loans@example.co.in today",
            "sent to [REDACTED:email] today",
        );
    }

    #[test]
    fn account_number_is_masked_after_its_label() {
        check(
            "credited to account 001234567890123",
            "credited to account [REDACTED:account]",
        );
        check("A/C No. 123456789", "A/C No. [REDACTED:account]");
        check(
            "bank_account=50100012345678",
            "bank_account=[REDACTED:account]",
        );
        check(
            r#""account_number":"123456789012345""#,
            r#""account_number":"[REDACTED:account]""#,
        );
    }

    #[test]
    fn secrets_are_masked_by_field_name() {
        check(
            "password=hunter2 user=a",
            "password=[REDACTED:secret] user=a",
        );
        check(r#"api_key="k-123 456""#, r#"api_key="[REDACTED:secret]""#);
        check(
            r#"{"client_secret":"s3cr\"et","n":1}"#,
            r#"{"client_secret":"[REDACTED:secret]","n":1}"#,
        );
        check(
            "UNDERWRITE_API_TOKEN: abc.def",
            "UNDERWRITE_API_TOKEN: [REDACTED:secret]",
        );
        assert!(is_secret_field("api_key"));
        assert!(is_secret_field("refresh_token"));
        assert!(!is_secret_field("key_id"));
    }

    #[test]
    fn bearer_token_is_masked() {
        check(
            "header Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig= sent",
            "header Bearer [REDACTED:secret] sent",
        );
    }

    #[test]
    fn ordinary_lines_are_unchanged() {
        let lines = [
            "Handled an event. emitted=2",
            "amount=\"20000.00\" principal_paise=2000000000 outstanding=9876543210.55",
            "business_date=2024-03-31 occurred_at=2024-03-31T20:00:00+05:30",
            "event_id=01890a5d-ac96-774b-bcce-302099180578 loan_id=L-9876543210",
            "event_id=pay-9876543210 correlation_id=disb-234567890123",
            "occurred_at_ms=1711915200000 seq=123456789",
            "trace_id=01890a5dac96774bbcce302099180578",
            "key_id=npa:0a1b2c3d4e5f6789 token expired for loan L1",
            "day-end ran for 1000000 loans in 2.5 s",
        ];
        for line in lines {
            check(line, line);
        }
    }
}
