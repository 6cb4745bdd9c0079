//! The npa service: DPD and RBI asset class of every loan and borrower.
//!
//! On every relevant event (disbursal, repayment, reversal, `day.closed`) the
//! service re-derives the borrower's daily classification from its ledgers,
//! up to the last closed business date, and compares it with the changes it
//! has already announced:
//!
//! - a change not yet announced is emitted (`sma.classified`,
//!   `npa.bucket.changed` or `npa.dlg.triggered`) as `original` when it falls
//!   after the last date evaluated, or as a `correction` when a backdated
//!   repayment or a reversal moved it into the past;
//! - an announced change that is no longer true is withdrawn with a
//!   `retraction` naming the event it withdraws.
//!
//! Because the history is always re-derived from the whole ledger, events
//! may arrive late, twice or out of order without leaving a wrong DPD.
//!
//! `day.closed` for date D reviews only the borrowers whose next change falls
//! on or before D: after each evaluation the service looks ahead for the
//! first date a change would happen without further payments and files the
//! borrower under that date (`npa/agenda/<date>/<borrower>`).

#![warn(missing_docs)]

pub mod timeline;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use underwrite_domain::{BusinessDate, ClassificationPolicy, ProductCatalog};
use underwrite_events::payloads::{ClassChanged, DlgTriggered, LoanDisbursed, Revision};
use underwrite_events::{Envelope, EventId, EventPayload};
use underwrite_mechanism::{LoanRecord, apply_to_record, disburse, loan_not_found};
use underwrite_runtime::service::{ParsedCache, read_state};
use underwrite_runtime::{Context, HandlerError, Outcome, Service, StateWrite, Store, Versioned};

use crate::timeline::{Change, Checkpoint, DayState, Facility, Transition, walk};

/// Key of the service's calendar.
pub const CALENDAR_KEY: &str = "npa/calendar";
/// Key prefix of borrower books.
pub const BORROWER_PREFIX: &str = "npa/borrower/";
/// Key prefix of the loan-to-borrower index.
pub const LOAN_PREFIX: &str = "npa/loan/";
/// Key prefix of review dates.
pub const AGENDA_PREFIX: &str = "npa/agenda/";

fn borrower_key(borrower_id: &str) -> String {
    format!("{BORROWER_PREFIX}{borrower_id}")
}

fn loan_key(loan_id: &str) -> String {
    format!("{LOAN_PREFIX}{loan_id}")
}

/// Formats the key of one review, so that filing a review is one small write.
fn agenda_key(date: BusinessDate, borrower_id: &str) -> String {
    format!("{AGENDA_PREFIX}{date}/{borrower_id}")
}

/// The last business date closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calendar {
    /// Day-end has run for every date up to and including this one.
    pub closed_through: BusinessDate,
}

/// The borrower a loan belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoanIndex {
    /// The borrower.
    pub borrower_id: String,
}

/// A change the service has announced and not withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    /// The change.
    pub transition: Transition,
    /// The event that announced it.
    pub event_id: EventId,
}

/// Everything the service keeps about one borrower.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowerBook {
    /// Loan records by loan id, as the mechanism service builds them.
    pub loans: BTreeMap<String, LoanRecord>,
    /// Announced changes, oldest first.
    pub announced: Vec<Announced>,
    /// The last date classified.
    pub evaluated_through: Option<BusinessDate>,
    /// The date under which the borrower is filed for review.
    pub next_review: Option<BusinessDate>,
    /// Walk state at the end of `evaluated_through`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

impl BorrowerBook {
    fn facilities(&self) -> BTreeMap<String, Facility<'_>> {
        self.loans
            .iter()
            .map(|(id, record)| {
                (
                    id.clone(),
                    Facility {
                        disbursed_on: record.terms.disbursed_on,
                        ledger: &record.ledger,
                        loss_identified: false,
                    },
                )
            })
            .collect()
    }

    /// Derives each loan's DPD per day from its disbursal to `through`.
    pub fn dpd_history(
        &self,
        policy: &ClassificationPolicy,
        through: BusinessDate,
    ) -> BTreeMap<String, Vec<(BusinessDate, u32)>> {
        let mut history = BTreeMap::new();
        walk(
            &self.facilities(),
            policy,
            through,
            Some(&mut history),
            None,
        );
        history
    }

    /// Derives every change from the first disbursal to `through` by
    /// replaying the whole history, without the checkpoint.
    pub fn derived_transitions(
        &self,
        policy: &ClassificationPolicy,
        through: BusinessDate,
    ) -> Vec<Transition> {
        walk(&self.facilities(), policy, through, None, None).transitions
    }

    /// Derives each loan's state at the end of `through`.
    pub fn state_on(
        &self,
        policy: &ClassificationPolicy,
        through: BusinessDate,
    ) -> BTreeMap<String, DayState> {
        walk(&self.facilities(), policy, through, None, None).last
    }
}

/// The npa service.
pub struct Npa {
    policy: ClassificationPolicy,
    products: ProductCatalog,
    /// Borrower books as last read or written, so that a borrower's next
    /// event skips parsing the book's JSON.
    books: ParsedCache<BorrowerBook>,
}

/// Borrower books kept parsed between events; about 1 KB of JSON each.
const BOOK_CACHE_LIMIT: usize = 16_384;

/// Writes and emits collected while handling one event.
struct Effects<'a> {
    cause: &'a Envelope,
    outcome: Outcome,
    /// New review dates: date → borrowers to add.
    agenda_additions: BTreeMap<BusinessDate, BTreeSet<String>>,
}

impl Effects<'_> {
    fn emit(
        &mut self,
        subject: &str,
        business_date: BusinessDate,
        payload: EventPayload,
    ) -> EventId {
        let position = self.outcome.emits.len() as u32;
        let event = Envelope::caused_by(
            self.cause,
            position,
            "npa",
            subject,
            business_date,
            &payload,
        );
        let id = event.id.clone();
        self.outcome.emits.push(event);
        id
    }
}

impl Npa {
    /// Creates an npa service with this classification policy and product settings.
    pub fn new(policy: ClassificationPolicy, products: ProductCatalog) -> Self {
        Npa {
            policy,
            products,
            books: ParsedCache::new(BOOK_CACHE_LIMIT),
        }
    }

    /// Re-derives `book` through `through`, emitting announcements,
    /// corrections and retractions, and files the next review date. A new
    /// change dated after `news_after` is news (`original`); one on or before
    /// it is a `correction`, because the day-end of its date already ran
    /// without it.
    ///
    /// `changed_from` is the first date whose ledger the event changed
    /// (`None` when it changed no ledger): when it falls after the stored
    /// checkpoint, the walk resumes from the checkpoint instead of replaying
    /// the borrower's whole history.
    fn evaluate(
        &self,
        borrower_id: &str,
        book: &mut BorrowerBook,
        through: Option<BusinessDate>,
        news_after: Option<BusinessDate>,
        changed_from: Option<BusinessDate>,
        effects: &mut Effects<'_>,
    ) {
        let Some(through) = through else {
            // No business date has been closed yet: nothing to classify, but
            // the first due date must still be reviewed when it is closed.
            let first_due = book
                .loans
                .values()
                .filter_map(|r| r.ledger.schedule.instalments.first().map(|i| i.due_date))
                .min();
            self.file_review(borrower_id, book, first_due, effects);
            return;
        };
        let resume = book
            .checkpoint
            .as_ref()
            .filter(|c| c.date <= through && changed_from.is_none_or(|from| from > c.date));
        let walked = walk(&book.facilities(), &self.policy, through, None, resume);
        // Changes dated on or before the checkpoint were not walked again and
        // still stand.
        let walked_after = resume.map(|c| c.date);
        let retracted: Vec<Announced> = book
            .announced
            .iter()
            .filter(|a| walked_after.is_none_or(|after| a.transition.date > after))
            .filter(|a| {
                !walked
                    .transitions
                    .iter()
                    .any(|t| t.same_change(&a.transition))
            })
            .cloned()
            .collect();
        for announced in &retracted {
            self.announce(
                &announced.transition,
                Revision::Retraction,
                Some(announced.event_id.clone()),
                borrower_id,
                effects.cause.business_date,
                effects,
            );
        }
        book.announced.retain(|a| !retracted.contains(a));
        for transition in &walked.transitions {
            if book
                .announced
                .iter()
                .any(|a| a.transition.same_change(transition))
            {
                continue;
            }
            let is_news = news_after.is_none_or(|done| transition.date > done);
            let (revision, business_date) = if is_news {
                (Revision::Original, transition.date)
            } else {
                (
                    Revision::Correction,
                    effects.cause.business_date.max(transition.date),
                )
            };
            let event_id = self.announce(
                transition,
                revision,
                None,
                borrower_id,
                business_date,
                effects,
            );
            book.announced.push(Announced {
                transition: transition.clone(),
                event_id,
            });
        }
        book.evaluated_through = Some(
            book.evaluated_through
                .map_or(through, |done| done.max(through)),
        );
        book.checkpoint = walked.checkpoint;
        self.file_review(borrower_id, book, walked.next_change, effects);
    }

    fn file_review(
        &self,
        borrower_id: &str,
        book: &mut BorrowerBook,
        date: Option<BusinessDate>,
        effects: &mut Effects<'_>,
    ) {
        if let Some(date) = date
            && book.next_review != Some(date)
        {
            effects
                .agenda_additions
                .entry(date)
                .or_default()
                .insert(borrower_id.to_string());
        }
        book.next_review = date;
    }

    fn announce(
        &self,
        transition: &Transition,
        revision: Revision,
        corrects: Option<EventId>,
        borrower_id: &str,
        business_date: BusinessDate,
        effects: &mut Effects<'_>,
    ) -> EventId {
        let loan_id = underwrite_events::LoanId::parse(&transition.loan_id)
            .expect("stored loan ids are valid");
        let borrower = underwrite_events::BorrowerId::parse(borrower_id)
            .expect("stored borrower ids are valid");
        let payload = match transition.change {
            Change::Class { from, to } => {
                let body = ClassChanged {
                    loan_id,
                    borrower_id: borrower,
                    as_of: transition.date,
                    dpd: transition.dpd,
                    previous_class: from,
                    asset_class: to,
                    npa_date: if to.is_npa() {
                        transition.npa_date
                    } else {
                        None
                    },
                    overdue_amount: transition.overdue,
                    revision,
                    corrects,
                };
                if from.is_npa() || to.is_npa() {
                    EventPayload::NpaBucketChanged(body)
                } else {
                    EventPayload::SmaClassified(body)
                }
            }
            Change::Dlg => EventPayload::NpaDlgTriggered(DlgTriggered {
                loan_id,
                borrower_id: borrower,
                as_of: transition.date,
                dpd: transition.dpd,
                first_overdue_date: transition.oldest_unpaid_due.unwrap_or(transition.date),
                overdue_amount: transition.overdue,
                revision,
                corrects,
            }),
        };
        effects.emit(&transition.loan_id, business_date, payload)
    }

    async fn closed_through(
        &self,
        store: &dyn Store,
    ) -> Result<(Option<BusinessDate>, Option<Versioned>), HandlerError> {
        let (calendar, read) = read_state::<Calendar>(store, CALENDAR_KEY).await?;
        Ok((calendar.map(|c| c.closed_through), read))
    }

    async fn on_disbursed(
        &self,
        terms: &LoanDisbursed,
        context: &Context<'_>,
        effects: &mut Effects<'_>,
    ) -> Result<(), HandlerError> {
        let borrower_id = terms.borrower_id.as_str();
        let (index, index_read) =
            read_state::<LoanIndex>(context.store, &loan_key(terms.loan_id.as_str())).await?;
        if let Some(index) = &index
            && index.borrower_id != borrower_id
        {
            return Err(HandlerError::permanent(
                "loan_conflict",
                format!(
                    "loan {} already belongs to borrower {}, not {borrower_id}; send a new loan_id for a new loan",
                    terms.loan_id, index.borrower_id
                ),
            ));
        }
        let key = borrower_key(borrower_id);
        let (book, book_read) = self.books.read(context.store, &key).await?;
        let mut book = book.unwrap_or_default();
        let existing = book.loans.get(terms.loan_id.as_str()).cloned();
        let Some(record) = disburse(&self.products, terms, existing)? else {
            return Ok(());
        };
        book.loans.insert(terms.loan_id.to_string(), record);
        let (through, _) = self.closed_through(context.store).await?;
        self.evaluate(
            borrower_id,
            &mut book,
            through,
            through,
            Some(terms.disbursed_on),
            effects,
        );
        effects.outcome.writes.push(StateWrite::put(
            loan_key(terms.loan_id.as_str()),
            &LoanIndex {
                borrower_id: borrower_id.to_string(),
            },
            &index_read,
        ));
        self.put_book(effects, key, book, &book_read);
        Ok(())
    }

    /// Writes a borrower's book and keeps it parsed for the next event.
    fn put_book(
        &self,
        effects: &mut Effects<'_>,
        key: String,
        book: BorrowerBook,
        read: &Option<Versioned>,
    ) {
        let write = StateWrite::put(key, &book, read);
        self.books.keep(&write, book);
        effects.outcome.writes.push(write);
    }

    async fn on_payment(
        &self,
        loan_id: &str,
        payload: &EventPayload,
        context: &Context<'_>,
        effects: &mut Effects<'_>,
    ) -> Result<(), HandlerError> {
        let (index, _) = read_state::<LoanIndex>(context.store, &loan_key(loan_id)).await?;
        let index = index.ok_or_else(|| loan_not_found(loan_id, payload.event_type().as_str()))?;
        let key = borrower_key(&index.borrower_id);
        let (book, book_read) = self.books.read(context.store, &key).await?;
        let mut book =
            book.ok_or_else(|| loan_not_found(loan_id, payload.event_type().as_str()))?;
        let record = book
            .loans
            .get_mut(loan_id)
            .ok_or_else(|| loan_not_found(loan_id, payload.event_type().as_str()))?;
        // The first date whose position the event changes: the value date of
        // the payment received or reversed.
        let changed_from = match payload {
            EventPayload::RepaymentReceived(p) => Some(p.value_date),
            EventPayload::RepaymentReversed(p) => record
                .ledger
                .payments
                .iter()
                .find(|payment| payment.payment_id == p.payment_id.as_str())
                .map(|payment| payment.value_date),
            _ => None,
        };
        if !apply_to_record(record, payload)? {
            return Ok(());
        }
        // An unknown value date means the whole history is replayed.
        let changed_from = changed_from.or(Some(BusinessDate::from_epoch_days(0)));
        let (through, _) = self.closed_through(context.store).await?;
        self.evaluate(
            &index.borrower_id,
            &mut book,
            through,
            through,
            changed_from,
            effects,
        );
        self.put_book(effects, key, book, &book_read);
        Ok(())
    }

    async fn on_day_closed(
        &self,
        date: BusinessDate,
        context: &Context<'_>,
        effects: &mut Effects<'_>,
    ) -> Result<(), HandlerError> {
        let (through, calendar_read) = self.closed_through(context.store).await?;
        if through.is_some_and(|done| date <= done) {
            return Ok(());
        }
        let due = due_agenda(context.store, date).await?;
        let mut borrowers: BTreeSet<String> = BTreeSet::new();
        for (key, borrower_id, read) in due {
            borrowers.insert(borrower_id);
            effects
                .outcome
                .writes
                .push(StateWrite::delete(key, &Some(read)));
        }
        for borrower_id in &borrowers {
            let key = borrower_key(borrower_id);
            let (book, read) = self.books.read(context.store, &key).await?;
            let Some(mut book) = book else { continue };
            self.evaluate(borrower_id, &mut book, Some(date), through, None, effects);
            self.put_book(effects, key, book, &read);
        }
        effects.outcome.writes.push(StateWrite::put(
            CALENDAR_KEY,
            &Calendar {
                closed_through: date,
            },
            &calendar_read,
        ));
        Ok(())
    }

    /// Files the collected reviews. A review filed for a key that this same
    /// outcome deletes (a date already due) turns that deletion into a put.
    fn write_agenda(&self, effects: &mut Effects<'_>) {
        let additions = std::mem::take(&mut effects.agenda_additions);
        for (date, borrowers) in additions {
            for borrower_id in borrowers {
                let key = agenda_key(date, &borrower_id);
                let value = "{}".to_string();
                match effects.outcome.writes.iter_mut().find(|w| w.key == key) {
                    Some(existing) => existing.value = Some(value),
                    None => effects.outcome.writes.push(StateWrite {
                        key,
                        value: Some(value),
                        expected: underwrite_runtime::Expected::Any,
                    }),
                }
            }
        }
    }
}

/// Agenda keys read per page. Reviews already due are deleted when handled,
/// so the first page mostly contains dates after the one being closed. A
/// small page avoids reading and parsing many of those.
const AGENDA_PAGE: usize = 64;

/// Reviews dated on or before `date`, as (key, borrower id, stored value).
async fn due_agenda(
    store: &dyn Store,
    date: BusinessDate,
) -> Result<Vec<(String, String, Versioned)>, HandlerError> {
    let mut due = Vec::new();
    let mut after: Option<String> = None;
    'pages: loop {
        let page = store
            .scan(AGENDA_PREFIX, after.as_deref(), AGENDA_PAGE)
            .await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, value) in page {
            let rest = &key[AGENDA_PREFIX.len()..];
            let parsed = rest.split_once('/').and_then(|(day, borrower)| {
                day.parse::<BusinessDate>()
                    .ok()
                    .map(|day| (day, borrower.to_string()))
            });
            let Some((day, borrower_id)) = parsed else {
                return Err(HandlerError::permanent(
                    "store_corrupt",
                    format!("agenda key {key:?} is not npa/agenda/<date>/<borrower>"),
                ));
            };
            if day > date {
                break 'pages;
            }
            due.push((key, borrower_id, value));
        }
    }
    Ok(due)
}

/// Reads a borrower's book.
pub async fn borrower_book(
    store: &dyn Store,
    borrower_id: &str,
) -> Result<Option<BorrowerBook>, HandlerError> {
    Ok(
        read_state::<BorrowerBook>(store, &borrower_key(borrower_id))
            .await?
            .0,
    )
}

/// Reads the last closed business date.
pub async fn closed_through(store: &dyn Store) -> Result<Option<BusinessDate>, HandlerError> {
    Ok(read_state::<Calendar>(store, CALENDAR_KEY)
        .await?
        .0
        .map(|c| c.closed_through))
}

/// Loads every borrower book, in borrower order.
pub async fn all_books(store: &dyn Store) -> Result<Vec<(String, BorrowerBook)>, HandlerError> {
    let mut books = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(BORROWER_PREFIX, after.as_deref(), 500).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, read) in page {
            let book: BorrowerBook = read.parse(&key).map_err(|error| {
                HandlerError::permanent(
                    "store_corrupt",
                    format!("stored value at key {key:?} is not a borrower book: {error}"),
                )
            })?;
            books.push((key[BORROWER_PREFIX.len()..].to_string(), book));
        }
    }
    Ok(books)
}

#[async_trait]
impl Service for Npa {
    fn name(&self) -> &'static str {
        "npa"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &[
            "loan.disbursed",
            "repayment.received",
            "repayment.reversed",
            "day.closed",
        ]
    }

    async fn handle(
        &self,
        event: &Envelope,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let payload = event.typed().map_err(|error| {
            HandlerError::permanent("invalid_event", format!("event {}: {error}", event.id))
        })?;
        let mut effects = Effects {
            cause: event,
            outcome: Outcome::default(),
            agenda_additions: BTreeMap::new(),
        };
        match &payload {
            EventPayload::LoanDisbursed(terms) => {
                self.on_disbursed(terms, context, &mut effects).await?
            }
            EventPayload::RepaymentReceived(p) => {
                self.on_payment(p.loan_id.as_str(), &payload, context, &mut effects)
                    .await?
            }
            EventPayload::RepaymentReversed(p) => {
                self.on_payment(p.loan_id.as_str(), &payload, context, &mut effects)
                    .await?
            }
            EventPayload::DayClosed(p) => {
                self.on_day_closed(p.business_date, context, &mut effects)
                    .await?
            }
            _ => {
                return Err(HandlerError::permanent(
                    "unsubscribed_type",
                    format!(
                        "npa does not handle {}; check the routing",
                        event.event_type
                    ),
                ));
            }
        }
        self.write_agenda(&mut effects);
        Ok(effects.outcome)
    }
}
