//! `underwrite train risk`: trains the risk scorecard on the German credit
//! applicants and writes the model file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use underwrite_jobs::scorecard::{model_json, train};

/// Arguments of `underwrite train risk`.
#[derive(Args)]
pub struct TrainRiskArgs {
    /// The applicants CSV with the observed outcome in `creditability`.
    #[arg(long, default_value = "examples/german_credit/german_credit.csv")]
    pub csv: PathBuf,
    /// The model file to write; the risk service builds in the one at the default path.
    #[arg(long, default_value = "functions/risk/model/german-credit-woe-1.json")]
    pub out: PathBuf,
}

pub fn train_risk(args: TrainRiskArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.csv)
        .with_context(|| format!("Failed to read the applicants CSV {}", args.csv.display()))?;
    eprintln!("Training the risk scorecard on {} ...", args.csv.display());
    let source = args.csv.file_name().map_or_else(
        || args.csv.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let card = train(&bytes, &source)
        .with_context(|| format!("Failed to train on {}", args.csv.display()))?;
    std::fs::write(&args.out, model_json(&card))
        .with_context(|| format!("Failed to write the model file {}", args.out.display()))?;
    let (train, holdout) = (&card.train_metrics, &card.holdout_metrics);
    println!("model      {}", card.version);
    println!(
        "training   {} rows, {} bad: AUC {:.4}, Gini {:.4}",
        train.rows, train.bad, train.auc, train.gini
    );
    println!(
        "held out   {} rows, {} bad: AUC {:.4}, Gini {:.4}",
        holdout.rows, holdout.bad, holdout.auc, holdout.gini
    );
    println!("written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
