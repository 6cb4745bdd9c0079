//! The routing table: the event types each service's queue receives. A function runs one
//! service, but publishes its outputs to the queues of every subscriber, so
//! each function carries the whole table.

use underwrite_runtime::ports::Routes;

/// Each service and the event types it subscribes to (`*` for every type),
/// in routing order. A test checks this table against each service's
/// `subscriptions()`.
pub const SUBSCRIPTIONS: &[(&str, &[&str])] = &[
    (
        "consent",
        &["consent.granted", "consent.withdrawn", "day.closed"],
    ),
    ("fraud", &["application.received"]),
    ("risk", &["application.received", "fraud.cleared"]),
    ("pricing", &["application.received", "risk.scored"]),
    ("kfs", &["pricing.quoted", "kfs.accepted"]),
    (
        "mechanism",
        &[
            "loan.disbursed",
            "repayment.received",
            "repayment.reversed",
            "loan.cooling_off_exit.requested",
        ],
    ),
    (
        "fee",
        &[
            "loan.disbursed",
            "repayment.received",
            "repayment.reversed",
            "day.closed",
        ],
    ),
    (
        "npa",
        &[
            "loan.disbursed",
            "repayment.received",
            "repayment.reversed",
            "day.closed",
        ],
    ),
    ("audit", &["*"]),
];

/// Returns the routing table of every service.
pub fn routes() -> Routes {
    Routes::from_pairs(SUBSCRIPTIONS.iter().copied())
}
