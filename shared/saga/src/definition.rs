//! Sagas as data: the steps, the command each step sends to its service's
//! queue, the answers that mean success or failure, and the compensation
//! that undoes a step. The embedded runner and the generated Amazon States
//! Language document both read the same definition.

use serde::Serialize;

/// Where a step's command comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Source {
    /// The event that started the saga.
    Input,
    /// The event of `event_type` that step `step` answered with.
    Answer {
        /// The earlier step.
        step: &'static str,
        /// The answer's event type.
        event_type: &'static str,
    },
    /// The command that step `step` sent, passed on to another service.
    CommandOf {
        /// The earlier step.
        step: &'static str,
    },
    /// An event from outside the saga that the step waits for, such as the
    /// borrower's acceptance of the KFS.
    Signal {
        /// The event type awaited.
        event_type: &'static str,
    },
}

/// The command that undoes a step, sent to `service` when a later step
/// fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Compensation {
    /// The queue the compensation goes to.
    pub service: &'static str,
    /// The compensation's event type, such as `kfs.voided`.
    pub command: &'static str,
    /// What it undoes, for people.
    pub description: &'static str,
}

/// One step of a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The step's name, unique in its saga, such as `pricing`.
    pub name: &'static str,
    /// The service whose queue receives the command.
    pub service: &'static str,
    /// The command's event type.
    pub command: &'static str,
    /// Where the command comes from.
    pub source: Source,
    /// Event types of which the service's answer must contain one for the
    /// step to succeed; empty when the service succeeds without emitting.
    pub success: &'static [&'static str],
    /// Event types that, when the service answers with one, fail the step:
    /// a decline, such as `fraud.alert`. A permanent handler error fails the
    /// step too, with the error's code.
    pub declines: &'static [&'static str],
    /// The step's compensation, if it changed anything to undo.
    pub compensation: Option<Compensation>,
    /// What the step does, for people.
    pub description: &'static str,
}

/// A saga: a name and its steps in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaDefinition {
    /// The saga's name, also the identity that signs its compensations.
    pub name: &'static str,
    /// The event type that starts it.
    pub input_type: &'static str,
    /// After this step succeeds, the input goes to the services that
    /// subscribe to it and are not steps of the saga (the audit ledger, the
    /// pricing service's record of the application). Before that, no
    /// service but the step's sees it.
    pub publish_input_after: &'static str,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl SagaDefinition {
    /// Finds a step by name.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|step| step.name == name)
    }

    /// Returns the position of a step.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|step| step.name == name)
    }

    /// Lists the (service, event type) pairs the saga sends as commands and
    /// compensations.
    pub fn command_routes(&self) -> Vec<(&'static str, &'static str)> {
        let mut routes = Vec::new();
        for step in &self.steps {
            routes.push((step.service, step.command));
            if let Some(compensation) = step.compensation {
                routes.push((compensation.service, compensation.command));
            }
        }
        routes
    }

    /// Lists the event types from outside the saga that its steps wait
    /// for, such as `kfs.accepted`.
    pub fn signal_types(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .filter_map(|step| match step.source {
                Source::Signal { event_type } => Some(event_type),
                _ => None,
            })
            .collect()
    }

    /// Lists the queues the saga sends to.
    pub fn services(&self) -> Vec<&'static str> {
        let mut services: Vec<&'static str> = self
            .command_routes()
            .into_iter()
            .map(|(service, _)| service)
            .collect();
        services.sort_unstable();
        services.dedup();
        services
    }
}

/// The origination saga's name, also the identity that signs its
/// compensations.
pub const ORIGINATION: &str = "origination";

/// The loan origination saga: consent, fraud, risk, pricing, KFS,
/// acceptance, sanction and disbursal, each undone in reverse order when a
/// later one fails.
pub fn origination() -> SagaDefinition {
    SagaDefinition {
        name: ORIGINATION,
        input_type: "application.received",
        publish_input_after: "consent",
        steps: vec![
            Step {
                name: "consent",
                service: "consent",
                command: "application.received",
                source: Source::Input,
                success: &[],
                declines: &[],
                compensation: None,
                description: "The applicant has active consent for credit_assessment (DPDP Act 2023, s. 6).",
            },
            Step {
                name: "fraud",
                service: "fraud",
                command: "application.received",
                source: Source::Input,
                success: &["fraud.cleared"],
                declines: &["fraud.alert"],
                compensation: None,
                description: "No fraud rule fires on the application.",
            },
            Step {
                name: "risk",
                service: "risk",
                // The risk service records the application from the saga's
                // input, released after consent, and scores it on the fraud
                // step's clearance.
                command: "fraud.cleared",
                source: Source::Answer {
                    step: "fraud",
                    event_type: "fraud.cleared",
                },
                success: &["risk.scored"],
                declines: &[],
                compensation: None,
                description: "The scorecard grades the application.",
            },
            Step {
                name: "pricing",
                service: "pricing",
                command: "risk.scored",
                source: Source::Answer {
                    step: "risk",
                    event_type: "risk.scored",
                },
                success: &["pricing.quoted"],
                declines: &[],
                compensation: Some(Compensation {
                    service: "pricing",
                    command: "quote.withdrawn",
                    description: "Withdraw the quote.",
                }),
                description: "The grade's rate, the fees and the APR.",
            },
            Step {
                name: "kfs",
                service: "kfs",
                command: "pricing.quoted",
                source: Source::Answer {
                    step: "pricing",
                    event_type: "pricing.quoted",
                },
                success: &["kfs.issued"],
                declines: &[],
                compensation: Some(Compensation {
                    service: "kfs",
                    command: "kfs.voided",
                    description: "Void the KFS so that it can no longer be accepted.",
                }),
                description: "The Key Fact Statement in English and Hindi.",
            },
            Step {
                name: "acceptance",
                service: "kfs",
                command: "kfs.accepted",
                source: Source::Signal {
                    event_type: "kfs.accepted",
                },
                success: &[],
                declines: &[],
                compensation: None,
                description: "The borrower accepts the KFS within its validity (RBI KFS circular, 15 Apr 2024).",
            },
            Step {
                name: "sanction",
                service: "mechanism",
                command: "kfs.accepted",
                source: Source::CommandOf { step: "acceptance" },
                success: &["loan.sanctioned"],
                declines: &[],
                compensation: Some(Compensation {
                    service: "mechanism",
                    command: "sanction.cancelled",
                    description: "Cancel the sanction.",
                }),
                description: "The loan is sanctioned on the accepted KFS.",
            },
            Step {
                name: "disbursal",
                service: "mechanism",
                command: "loan.sanctioned",
                source: Source::Answer {
                    step: "sanction",
                    event_type: "loan.sanctioned",
                },
                success: &["loan.disbursed"],
                declines: &[],
                // No step follows disbursal, so no failure could run its
                // compensation. A borrower who exits in the cooling-off
                // period repays principal and proportionate APR through the
                // mechanism service instead (Digital Lending Directions 2025).
                compensation: None,
                description: "The principal is paid out and servicing starts.",
            },
        ],
    }
}
