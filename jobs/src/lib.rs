//! Polars batch jobs over the lake: day-end classification and the NPA
//! report, plus the conversion of the bundled German credit applicants into
//! input events.
//!
//! The lake is a folder of Parquet files partitioned by business date
//! (`<lake>/<table>/business_date=YYYY-MM-DD/<table>.parquet`): on disk for
//! the embedded runtime, in S3 on AWS.

#![warn(missing_docs)]

pub mod day_end;
pub mod german_credit;
pub mod lake;
pub mod ledgers;
pub mod report;
pub mod scorecard;
