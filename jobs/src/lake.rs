//! The lake: Parquet partitions by business date.
//!
//! Each table is a folder of partitions,
//! `<lake>/<table>/business_date=YYYY-MM-DD/<table>.parquet`. Money columns
//! are Int64 paise and date columns are Parquet/Arrow dates (days since
//! 1970-01-01). Writers replace a partition atomically: the file is written
//! under a temporary name in the partition folder, synced, and renamed over
//! the final name, so a reader sees either the old file or the complete new
//! one.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use polars::prelude::*;
use underwrite_domain::{BusinessDate, Paise};

/// Table of loan positions exported from the ledger at the end of a date.
pub const POSITIONS: &str = "positions";
/// Table of day-end classification snapshots.
pub const SNAPSHOT: &str = "snapshot";
/// Table of loans whose asset class changed at a day-end.
pub const CHANGES: &str = "changes";

/// Prefix of a partition folder's name, followed by the date.
const PARTITION_PREFIX: &str = "business_date=";

/// One loan's position at the end of a business date, computed from its
/// ledger with `LoanLedger::position`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionRow {
    /// Loan identifier, unique within a partition.
    pub loan_id: String,
    /// Borrower identifier: NPA status is shared by a borrower's loans.
    pub borrower_id: String,
    /// Due date of the oldest instalment not fully paid, if it is due.
    pub oldest_unpaid_due: Option<BusinessDate>,
    /// Amount due and unpaid.
    pub overdue: Paise,
    /// Principal not yet repaid.
    pub outstanding_principal: Paise,
    /// Realisable value of the security held.
    pub secured_value: Paise,
    /// Security worth at most 10% of the amount from the start (a bank
    /// provides 25% instead of 15% on such a sub-standard exposure).
    pub unsecured_exposure: bool,
    /// The lender, its auditor or RBI identified the loan as a loss.
    pub loss_identified: bool,
}

/// Returns the column names and types of the `positions` table, in file order.
pub fn positions_schema() -> Schema {
    Schema::from_iter([
        Field::new("loan_id".into(), DataType::String),
        Field::new("borrower_id".into(), DataType::String),
        Field::new("oldest_unpaid_due".into(), DataType::Date),
        Field::new("overdue".into(), DataType::Int64),
        Field::new("outstanding_principal".into(), DataType::Int64),
        Field::new("secured_value".into(), DataType::Int64),
        Field::new("unsecured_exposure".into(), DataType::Boolean),
        Field::new("loss_identified".into(), DataType::Boolean),
    ])
}

/// Returns the path of a table's partition file for `date`.
pub fn partition_path(lake: &Path, table: &str, date: BusinessDate) -> PathBuf {
    lake.join(table)
        .join(format!("{PARTITION_PREFIX}{date}"))
        .join(format!("{table}.parquet"))
}

/// Builds a `positions` frame from rows, sorted by `loan_id`.
pub fn positions_frame(rows: &[PositionRow]) -> PolarsResult<DataFrame> {
    let mut sorted: Vec<&PositionRow> = rows.iter().collect();
    sorted.sort_by(|a, b| a.loan_id.cmp(&b.loan_id));

    let money = |name: &str, value: fn(&PositionRow) -> Paise| {
        let values: Vec<i64> = sorted.iter().map(|row| value(row).as_paise()).collect();
        Column::new(name.into(), values)
    };
    let due: Int32Chunked = sorted
        .iter()
        .map(|row| row.oldest_unpaid_due.map(BusinessDate::epoch_days))
        .collect();
    let columns = vec![
        Column::new(
            "loan_id".into(),
            sorted
                .iter()
                .map(|row| row.loan_id.as_str())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "borrower_id".into(),
            sorted
                .iter()
                .map(|row| row.borrower_id.as_str())
                .collect::<Vec<_>>(),
        ),
        due.with_name("oldest_unpaid_due".into())
            .into_date()
            .into_column(),
        money("overdue", |row| row.overdue),
        money("outstanding_principal", |row| row.outstanding_principal),
        money("secured_value", |row| row.secured_value),
        Column::new(
            "unsecured_exposure".into(),
            sorted
                .iter()
                .map(|row| row.unsecured_exposure)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "loss_identified".into(),
            sorted
                .iter()
                .map(|row| row.loss_identified)
                .collect::<Vec<_>>(),
        ),
    ];
    DataFrame::new(sorted.len(), columns)
}

/// Converts a `positions` frame back into rows, in frame order.
pub fn position_rows(frame: &DataFrame) -> anyhow::Result<Vec<PositionRow>> {
    check_schema(frame, &positions_schema(), "positions")?;
    let loan_id = frame.column("loan_id")?.str()?;
    let borrower_id = frame.column("borrower_id")?.str()?;
    let due = frame.column("oldest_unpaid_due")?.date()?.physical();
    let overdue = frame.column("overdue")?.i64()?;
    let outstanding = frame.column("outstanding_principal")?.i64()?;
    let secured = frame.column("secured_value")?.i64()?;
    let unsecured = frame.column("unsecured_exposure")?.bool()?;
    let loss = frame.column("loss_identified")?.bool()?;

    let required =
        |name: &str, index: usize| anyhow::anyhow!("positions row {index}: {name} is null");
    let mut rows = Vec::with_capacity(frame.height());
    for index in 0..frame.height() {
        rows.push(PositionRow {
            loan_id: loan_id
                .get(index)
                .ok_or_else(|| required("loan_id", index))?
                .to_string(),
            borrower_id: borrower_id
                .get(index)
                .ok_or_else(|| required("borrower_id", index))?
                .to_string(),
            oldest_unpaid_due: due.get(index).map(BusinessDate::from_epoch_days),
            overdue: Paise::new(
                overdue
                    .get(index)
                    .ok_or_else(|| required("overdue", index))?,
            ),
            outstanding_principal: Paise::new(
                outstanding
                    .get(index)
                    .ok_or_else(|| required("outstanding_principal", index))?,
            ),
            secured_value: Paise::new(
                secured
                    .get(index)
                    .ok_or_else(|| required("secured_value", index))?,
            ),
            unsecured_exposure: unsecured
                .get(index)
                .ok_or_else(|| required("unsecured_exposure", index))?,
            loss_identified: loss
                .get(index)
                .ok_or_else(|| required("loss_identified", index))?,
        });
    }
    Ok(rows)
}

/// Writes the `positions` partition of `as_of`, rows sorted by `loan_id` so
/// that the same rows give the same bytes. Returns the file's path.
pub fn write_positions(
    lake: &Path,
    as_of: BusinessDate,
    rows: &[PositionRow],
) -> anyhow::Result<PathBuf> {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    if let Some(duplicate) = rows.iter().find(|row| !seen.insert(row.loan_id.as_str())) {
        bail!(
            "cannot write positions for {as_of}: loan {:?} appears more than once",
            duplicate.loan_id
        );
    }
    let mut frame = positions_frame(rows)?;
    write_partition(lake, POSITIONS, as_of, &mut frame)
}

/// Reads the `positions` partition of `as_of` and checks its columns.
pub fn read_positions(lake: &Path, as_of: BusinessDate) -> anyhow::Result<DataFrame> {
    let frame = read_partition(lake, POSITIONS, as_of)?;
    check_schema(&frame, &positions_schema(), "positions")?;
    Ok(frame)
}

/// Writes `frame` as the partition of `table` for `date`, replacing any
/// existing file atomically. Returns the file's path.
pub fn write_partition(
    lake: &Path,
    table: &str,
    date: BusinessDate,
    frame: &mut DataFrame,
) -> anyhow::Result<PathBuf> {
    write_partition_with_metadata(lake, table, date, frame, &[])
}

/// Writes `frame` as the partition of `table` for `date` like
/// [`write_partition`], with `metadata` as the Parquet file's key-value
/// metadata.
pub fn write_partition_with_metadata(
    lake: &Path,
    table: &str,
    date: BusinessDate,
    frame: &mut DataFrame,
    metadata: &[(String, String)],
) -> anyhow::Result<PathBuf> {
    let path = partition_path(lake, table, date);
    write_parquet_atomic_with_metadata(&path, frame, metadata)?;
    Ok(path)
}

/// Writes `frame` to `path` as Parquet (Zstd) through a temporary file in
/// the same folder that is synced and renamed over `path`.
pub fn write_parquet_atomic(path: &Path, frame: &mut DataFrame) -> anyhow::Result<()> {
    write_parquet_atomic_with_metadata(path, frame, &[])
}

/// Writes `frame` to `path` like [`write_parquet_atomic`], with `metadata`
/// as the file's key-value metadata (none when empty).
pub fn write_parquet_atomic_with_metadata(
    path: &Path,
    frame: &mut DataFrame,
    metadata: &[(String, String)],
) -> anyhow::Result<()> {
    frame.rechunk_mut();
    let metadata = (!metadata.is_empty()).then(|| KeyValueMetadata::from_static(metadata.to_vec()));
    write_atomic(path, |file| {
        ParquetWriter::new(file)
            .with_compression(ParquetCompression::Zstd(None))
            .with_key_value_metadata(metadata)
            .finish(frame)?;
        Ok(())
    })
}

/// Reads the key-value metadata of the Parquet file at `path`, in file order.
/// Keys without a value are left out.
pub fn read_parquet_metadata(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let file = File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    let mut reader = ParquetReader::new(file);
    let metadata = reader
        .get_metadata()
        .map_err(anyhow::Error::from)
        .with_context(|| format!("failed to read Parquet metadata of {}", path.display()))?;
    Ok(metadata
        .key_value_metadata
        .iter()
        .flatten()
        .filter_map(|pair| Some((pair.key.clone(), pair.value.clone()?)))
        .collect())
}

/// Writes `frame` to `path` as CSV with a header, through a temporary file
/// renamed over `path`.
pub fn write_csv_atomic(path: &Path, frame: &mut DataFrame) -> anyhow::Result<()> {
    write_atomic(path, |file| {
        CsvWriter::new(file).include_header(true).finish(frame)?;
        Ok(())
    })
}

/// Writes a file atomically: `write` fills a temporary file in `path`'s
/// folder, which is then synced and renamed to `path`. The folder is created
/// if needed, and the temporary file is removed if anything fails.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let folder = path
        .parent()
        .with_context(|| format!("invalid output path {}: it has no folder", path.display()))?;
    fs::create_dir_all(folder)
        .with_context(|| format!("failed to create folder {}", folder.display()))?;
    let file_name = path
        .file_name()
        .with_context(|| {
            format!(
                "invalid output path {}: it has no file name",
                path.display()
            )
        })?
        .to_string_lossy();
    // The process id and a counter keep concurrent writers of the same path
    // from sharing a temporary file.
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let temporary = folder.join(format!(
        ".{file_name}.{}-{sequence}.tmp",
        std::process::id()
    ));

    let result = (|| {
        let file = File::create(&temporary)
            .with_context(|| format!("failed to create {}", temporary.display()))?;
        let mut writer = BufWriter::new(file);
        write(&mut writer).with_context(|| format!("failed to write {}", temporary.display()))?;
        writer
            .flush()
            .with_context(|| format!("failed to write {}", temporary.display()))?;
        let file = writer
            .into_inner()
            .map_err(|error| error.into_error())
            .with_context(|| format!("failed to write {}", temporary.display()))?;
        file.sync_all()
            .with_context(|| format!("failed to sync {}", temporary.display()))?;
        fs::rename(&temporary, path).with_context(|| {
            format!(
                "failed to rename {} to {}",
                temporary.display(),
                path.display()
            )
        })
    })();
    if result.is_err() {
        // The temporary file is only debris at this point; the original
        // error is the one worth reporting.
        let _ = fs::remove_file(&temporary);
        return result;
    }
    // Syncing the folder makes the rename itself durable on Linux file systems.
    if let Ok(handle) = File::open(folder) {
        let _ = handle.sync_all();
    }
    Ok(())
}

/// Reads the partition of `table` for `date`. A missing file is an error
/// that names the path.
pub fn read_partition(lake: &Path, table: &str, date: BusinessDate) -> anyhow::Result<DataFrame> {
    let path = partition_path(lake, table, date);
    read_partition_if_exists(lake, table, date)?
        .with_context(|| format!("{table} partition not found: {}", path.display()))
}

/// Reads the partition of `table` for `date`, or `None` if it does not exist.
pub fn read_partition_if_exists(
    lake: &Path,
    table: &str,
    date: BusinessDate,
) -> anyhow::Result<Option<DataFrame>> {
    let path = partition_path(lake, table, date);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error).with_context(|| format!("failed to open {}", path.display()));
        }
    };
    let frame = ParquetReader::new(file)
        .finish()
        .map_err(anyhow::Error::from)
        .with_context(|| format!("failed to read Parquet file {}", path.display()))?;
    Ok(Some(frame))
}

/// Lists the dates that have a partition file of `table`, in ascending order.
/// Folders whose name is not `business_date=YYYY-MM-DD` are ignored.
pub fn partition_dates(lake: &Path, table: &str) -> anyhow::Result<Vec<BusinessDate>> {
    let folder = lake.join(table);
    let entries = match fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("failed to list {}", folder.display()));
        }
    };
    let mut dates = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to list {}", folder.display()))?;
        let name = entry.file_name();
        let Some(date) = name
            .to_str()
            .and_then(|name| name.strip_prefix(PARTITION_PREFIX))
            .and_then(|text| text.parse::<BusinessDate>().ok())
        else {
            continue;
        };
        if partition_path(lake, table, date).is_file() {
            dates.push(date);
        }
    }
    dates.sort();
    Ok(dates)
}

/// Finds the latest date before `date` that has a `snapshot` partition, if any.
pub fn latest_snapshot_before(
    lake: &Path,
    date: BusinessDate,
) -> anyhow::Result<Option<BusinessDate>> {
    let dates = partition_dates(lake, SNAPSHOT)?;
    Ok(dates.into_iter().rev().find(|found| *found < date))
}

/// Checks that `frame` has every column of `schema` with its type. Extra
/// columns are allowed.
pub fn check_schema(frame: &DataFrame, schema: &Schema, table: &str) -> PolarsResult<()> {
    for (name, expected) in schema.iter() {
        let Ok(column) = frame.column(name) else {
            polars_bail!(ColumnNotFound: "invalid {table} frame: column {name:?} is missing");
        };
        if column.dtype() != expected {
            polars_bail!(
                SchemaMismatch: "invalid {table} frame: column {name:?} has type {}, expected {expected}",
                column.dtype()
            );
        }
    }
    Ok(())
}
