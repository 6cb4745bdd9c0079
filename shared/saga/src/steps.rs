//! Step logic shared by every executor of a saga: the command a step sends,
//! whether a service's reply succeeds the step, and a step's compensation
//! event. The embedded runner and a Step Functions worker both
//! call these, so that both executors send the same commands.

use underwrite_events::LoanId;
use underwrite_events::origination::{KfsVoided, QuoteWithdrawn, SanctionCancelled};
use underwrite_events::{ApplicationId, Envelope, EventPayload, derive_event_id};

use crate::definition::{SagaDefinition, Source, Step};

/// Position offset of compensation ids among a saga input's derived ids, so
/// that they never collide with ids the services derive from the input.
const COMPENSATION_ID_OFFSET: u32 = 1_000_000;

/// The events of one saga so far, as its executor keeps them. Events are
/// JSON texts; replies are JSON arrays of the events a service emitted.
pub trait SagaHistory {
    /// Returns the event that started the saga.
    fn input(&self) -> &str;
    /// Returns the reply of an earlier forward step, if it succeeded.
    fn reply(&self, step: &str) -> Option<&str>;
    /// Returns the command an earlier forward step sent.
    fn command(&self, step: &str) -> Option<&str>;
    /// Returns the signal of this type received from outside, if any.
    fn signal(&self, event_type: &str) -> Option<&str>;
}

/// Returns the command of `step` as JSON, or `None` while the step waits for
/// its signal. Fails with the reason when an earlier step's record lacks
/// what the command comes from.
pub fn command_for(step: &Step, history: &dyn SagaHistory) -> Result<Option<String>, String> {
    match step.source {
        Source::Input => Ok(Some(history.input().to_string())),
        Source::Answer {
            step: from,
            event_type,
        } => {
            let reply = history
                .reply(from)
                .ok_or_else(|| format!("step {from} has no reply"))?;
            find_event(reply, event_type)
                .map(Some)
                .ok_or_else(|| format!("step {from} replied without {event_type}"))
        }
        Source::CommandOf { step: from } => history
            .command(from)
            .map(|command| Some(command.to_string()))
            .ok_or_else(|| format!("step {from} sent no command")),
        Source::Signal { event_type } => Ok(history.signal(event_type).map(str::to_string)),
    }
}

/// Decides whether a service's reply succeeds the step: a permanent
/// failure, an event of a decline type, or a success without any of the
/// step's reply types fails it, with an error code and a message.
pub fn classify(
    step: &Step,
    failure: Option<(&str, &str)>,
    outputs: &str,
) -> Result<(), (String, String)> {
    if let Some((code, message)) = failure {
        return Err((code.to_string(), message.to_string()));
    }
    let events: Vec<serde_json::Value> = serde_json::from_str(outputs).unwrap_or_default();
    let type_of =
        |event: &serde_json::Value| event["type"].as_str().unwrap_or_default().to_string();
    if let Some(decline) = events
        .iter()
        .find(|e| step.declines.contains(&type_of(e).as_str()))
    {
        return Err((
            type_of(decline),
            format!(
                "{} replied {} {}",
                step.service,
                type_of(decline),
                decline["payload"]
            ),
        ));
    }
    let replied = step.success.is_empty()
        || events
            .iter()
            .any(|e| step.success.contains(&type_of(e).as_str()));
    if !replied {
        return Err((
            "missing_reply".into(),
            format!(
                "{} handled {} without emitting {}",
                step.service,
                step.command,
                step.success.join(" or ")
            ),
        ));
    }
    Ok(())
}

/// Finds the event of `event_type` in a JSON array of events and returns it
/// as JSON text.
pub fn find_event(outputs: &str, event_type: &str) -> Option<String> {
    let events: Vec<serde_json::Value> = serde_json::from_str(outputs).ok()?;
    events
        .into_iter()
        .find(|e| e["type"] == event_type)
        .and_then(|e| serde_json::from_value::<Envelope>(e).ok())
        .map(|e| e.to_json())
}

/// Builds the compensation of `step` after `failed_step` failed with
/// `failure_code`, from the saga's input and the step's reply.
///
/// Its id derives from the input's id and the step's position, so a rebuilt
/// compensation has the same id. Its time and business date are those of
/// the failed step's command, or of the input when that command is unknown.
pub fn compensation_for(
    definition: &SagaDefinition,
    step: &Step,
    history: &dyn SagaHistory,
    failed_step: &str,
    failure_code: &str,
) -> Result<Envelope, String> {
    let parse = |body: &str| {
        Envelope::from_slice(body.as_bytes())
            .map_err(|error| format!("stored event is invalid: {error}"))
    };
    let compensation = step
        .compensation
        .ok_or_else(|| format!("step {} has no compensation", step.name))?;
    let input = parse(history.input())?;
    let failed_command = history.command(failed_step).map(parse).transpose()?;
    let cause = failed_command.as_ref().unwrap_or(&input);
    let reason = format!("{failed_step} failed: {failure_code}");
    let application_id = ApplicationId::parse(&input.subject).map_err(|e| e.to_string())?;
    let (subject, payload) = match compensation.command {
        "quote.withdrawn" => (
            application_id.to_string(),
            EventPayload::QuoteWithdrawn(QuoteWithdrawn {
                application_id,
                reason,
            }),
        ),
        "kfs.voided" => {
            let issued = history
                .reply(step.name)
                .and_then(|reply| find_event(reply, "kfs.issued"))
                .ok_or_else(|| format!("step {} has no kfs.issued", step.name))?;
            let proposal_number = parse(&issued)?.payload["proposal_number"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (
                proposal_number.clone(),
                EventPayload::KfsVoided(KfsVoided {
                    application_id,
                    proposal_number,
                    reason,
                }),
            )
        }
        "sanction.cancelled" => {
            let sanctioned = history
                .reply(step.name)
                .and_then(|reply| find_event(reply, "loan.sanctioned"))
                .ok_or_else(|| format!("step {} has no loan.sanctioned", step.name))?;
            let loan_id = parse(&sanctioned)?.payload["loan_id"]
                .as_str()
                .map(LoanId::parse)
                .transpose()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("step {}'s loan.sanctioned has no loan_id", step.name))?;
            (
                loan_id.to_string(),
                EventPayload::SanctionCancelled(SanctionCancelled {
                    application_id,
                    loan_id,
                    reason,
                }),
            )
        }
        other => return Err(format!("no payload is defined for compensation {other}")),
    };
    let position = COMPENSATION_ID_OFFSET + definition.position(step.name).unwrap_or(0) as u32;
    let millis = cause.occurred_at.timestamp_millis().max(0) as u64;
    Ok(Envelope {
        id: derive_event_id(&input.id, position, millis),
        event_type: compensation.command.to_string(),
        version: 1,
        source: definition.name.to_string(),
        subject,
        occurred_at: cause.occurred_at,
        business_date: cause.business_date,
        correlation_id: input.correlation_id.clone(),
        causation_id: Some(cause.id.clone()),
        payload: payload.to_value(),
        signature: None,
        key_id: None,
    })
}
