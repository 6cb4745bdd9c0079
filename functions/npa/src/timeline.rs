//! A borrower's classification history, derived day by day from the loan
//! ledgers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use underwrite_domain::classification::{DLG_INVOCATION_DPD, FacilityStatus, classify_borrower};
use underwrite_domain::{AssetClass, BusinessDate, ClassificationPolicy, LoanLedger, Paise};

/// Days after the last evaluated date searched for the next change when
/// planning the next review: enough to reach the next NPA ageing anniversary
/// (at most 24 months away).
const LOOKAHEAD_DAYS: i64 = 800;

/// One facility of a borrower, borrowed from the npa service's loan records.
#[derive(Debug, Clone, Copy)]
pub struct Facility<'a> {
    /// Disbursal date; the facility counts from this date on.
    pub disbursed_on: BusinessDate,
    /// Schedule and payments.
    pub ledger: &'a LoanLedger,
    /// Identified as a loss by the lender, its auditor or RBI.
    pub loss_identified: bool,
}

/// A change to a facility on a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The asset class changed.
    Class {
        /// Class on the previous day.
        from: AssetClass,
        /// Class from this date.
        to: AssetClass,
    },
    /// The facility reached the DLG invocation DPD.
    Dlg,
}

/// A change with the facility's figures on its date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The loan.
    pub loan_id: String,
    /// The date from which the change holds.
    pub date: BusinessDate,
    /// What changed.
    pub change: Change,
    /// DPD on that date.
    pub dpd: u32,
    /// Overdue amount on that date.
    pub overdue: Paise,
    /// Oldest unpaid due date on that date.
    pub oldest_unpaid_due: Option<BusinessDate>,
    /// Start of the borrower's NPA spell, if NPA.
    pub npa_date: Option<BusinessDate>,
}

impl Transition {
    /// Checks whether two transitions describe the same change. The figures
    /// may differ after a rewrite while the change itself stays the same.
    pub fn same_change(&self, other: &Transition) -> bool {
        self.loan_id == other.loan_id && self.date == other.date && self.change == other.change
    }
}

/// A facility's state at the end of one date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayState {
    /// DPD.
    pub dpd: u32,
    /// Asset class.
    pub class: AssetClass,
    /// Overdue amount.
    pub overdue: Paise,
    /// Start of the borrower's NPA spell, if NPA.
    pub npa_date: Option<BusinessDate>,
}

/// The walk's state at the end of a date, from which a later walk resumes
/// without replaying earlier days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The date whose end this state describes.
    pub date: BusinessDate,
    /// Each facility's class on that date.
    pub classes: BTreeMap<String, AssetClass>,
    /// Facilities whose DLG day has passed.
    pub dlg_fired: std::collections::BTreeSet<String>,
    /// Start of the borrower's NPA spell on that date.
    pub npa_date: Option<BusinessDate>,
}

/// The result of walking a borrower's days.
#[derive(Debug, Default)]
pub struct Walk {
    /// Changes on or before the date walked to.
    pub transitions: Vec<Transition>,
    /// Each facility's state on the date walked to.
    pub last: BTreeMap<String, DayState>,
    /// The first date after the date walked to on which a change would
    /// happen if no further payment arrived.
    pub next_change: Option<BusinessDate>,
    /// State at the end of the date walked to.
    pub checkpoint: Option<Checkpoint>,
}

/// Walks a borrower's facilities from the first disbursal to `through`,
/// classifying each day with the borrower-level rule, and looks ahead for
/// the next change. `history` collects each facility's DPD per day when
/// given. With `resume`, the walk starts the day after the checkpoint from
/// its state; the caller must know that no ledger entry before that day
/// changed since the checkpoint was taken.
pub fn walk(
    facilities: &BTreeMap<String, Facility<'_>>,
    policy: &ClassificationPolicy,
    through: BusinessDate,
    mut history: Option<&mut BTreeMap<String, Vec<(BusinessDate, u32)>>>,
    resume: Option<&Checkpoint>,
) -> Walk {
    let mut result = Walk::default();
    let Some(first_disbursal) = facilities.values().map(|f| f.disbursed_on).min() else {
        return result;
    };
    let start = resume.map_or(first_disbursal, |c| c.date.succ());
    let ids: Vec<&String> = facilities.keys().collect();
    let indexes: Vec<_> = facilities.values().map(|f| f.ledger.index()).collect();
    let last_due = facilities
        .values()
        .filter_map(|f| f.ledger.schedule.instalments.last().map(|i| i.due_date))
        .max()
        .unwrap_or(start);
    let mut previous: Vec<AssetClass> = ids
        .iter()
        .map(|id| {
            resume
                .and_then(|c| c.classes.get(*id).copied())
                .unwrap_or(AssetClass::Standard)
        })
        .collect();
    let mut dlg_fired: Vec<bool> = ids
        .iter()
        .map(|id| resume.is_some_and(|c| c.dlg_fired.contains(*id)))
        .collect();
    let mut prior_npa: Option<BusinessDate> = resume.and_then(|c| c.npa_date);
    let checkpoint_of =
        |date: BusinessDate, previous: &[AssetClass], dlg_fired: &[bool], npa_date| Checkpoint {
            date,
            classes: ids
                .iter()
                .zip(previous)
                .map(|(id, class)| ((*id).clone(), *class))
                .collect(),
            dlg_fired: ids
                .iter()
                .zip(dlg_fired)
                .filter(|(_, fired)| **fired)
                .map(|(id, _)| (*id).clone())
                .collect(),
            npa_date,
        };
    if start > through {
        result.checkpoint = Some(checkpoint_of(through, &previous, &dlg_fired, prior_npa));
    }
    let horizon = through.add_days(LOOKAHEAD_DAYS);
    let mut day = start;
    while day <= horizon {
        let looking_ahead = day > through;
        let mut statuses = Vec::with_capacity(ids.len());
        let mut positions = Vec::with_capacity(ids.len());
        let mut active = Vec::with_capacity(ids.len());
        for (index, facility) in facilities.values().enumerate() {
            if facility.disbursed_on > day {
                continue;
            }
            let position = indexes[index].position(day);
            statuses.push(FacilityStatus {
                dpd: position.dpd(day),
                loss_identified: facility.loss_identified,
            });
            positions.push(position);
            active.push(index);
        }
        let classified = classify_borrower(policy, day, &statuses, prior_npa);
        let mut changed = false;
        for (slot, &index) in active.iter().enumerate() {
            let class = classified.classes[slot];
            let status = statuses[slot];
            let position = positions[slot];
            let make = |change| Transition {
                loan_id: ids[index].clone(),
                date: day,
                change,
                dpd: status.dpd,
                overdue: position.overdue,
                oldest_unpaid_due: position.oldest_unpaid_due,
                npa_date: classified.npa_date,
            };
            if class != previous[index] {
                changed = true;
                if !looking_ahead {
                    result.transitions.push(make(Change::Class {
                        from: previous[index],
                        to: class,
                    }));
                }
                previous[index] = class;
            }
            if status.dpd >= DLG_INVOCATION_DPD && !dlg_fired[index] {
                changed = true;
                dlg_fired[index] = true;
                if !looking_ahead {
                    result.transitions.push(make(Change::Dlg));
                }
            }
            if !looking_ahead {
                if let Some(history) = history.as_deref_mut() {
                    history
                        .entry(ids[index].clone())
                        .or_default()
                        .push((day, status.dpd));
                }
                if day == through {
                    result.last.insert(
                        ids[index].clone(),
                        DayState {
                            dpd: status.dpd,
                            class,
                            overdue: position.overdue,
                            npa_date: classified.npa_date,
                        },
                    );
                }
            }
        }
        prior_npa = classified.npa_date;
        if day == through {
            result.checkpoint = Some(checkpoint_of(through, &previous, &dlg_fired, prior_npa));
        }
        if looking_ahead {
            if changed {
                result.next_change = Some(day);
                break;
            }
            // Past the last due date with nothing in arrears, nothing can
            // change without a new event.
            if day > last_due && prior_npa.is_none() && statuses.iter().all(|s| s.dpd == 0) {
                break;
            }
        }
        day = day.succ();
    }
    result
}
