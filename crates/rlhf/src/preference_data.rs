//! `rlhf import-preferences` and `rlhf export-preferences`: preference data in TRL's JSON Lines
//! formats, into and out of a run's store or the preference service.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use preference_store::{PreferenceStore, RemoteStore, SqliteStore};
use rlhf_pipeline::preference_files;
use rlhf_rpc::auth::Role;

/// Which preference store to use: a run's own file or the preference service.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct StoreArgs {
    /// A run directory (made by `rlhf sft`, `rlhf run`, ...): its preferences.sqlite.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The preference service (`rlhf serve preferences`), e.g. http://127.0.0.1:50063. Calls
    /// carry RLHF_ADMIN_TOKEN (else RLHF_LEARNER_TOKEN) as a bearer token when one is set.
    #[arg(long)]
    preferences: Option<String>,
}

impl StoreArgs {
    fn open(&self) -> Result<Box<dyn PreferenceStore>> {
        if let Some(url) = &self.preferences {
            let token = crate::serve::client_token(&[Role::Admin, Role::Learner]);
            return Ok(Box::new(RemoteStore::connect(url, token)?));
        }
        let dir = self.run_dir.as_deref().expect("clap requires one of the group");
        if !dir.join("config.json").exists() {
            bail!(
                "{} is not a run directory (no config.json); create one first, e.g. `rlhf sft --run-dir {} [--model PATH]`",
                dir.display(),
                dir.display()
            );
        }
        Ok(Box::new(SqliteStore::open(&dir.join("preferences.sqlite"))?))
    }
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A JSON Lines file of preferences: TRL pairs `{"prompt", "chosen", "rejected"}` (text or
    /// message lists, explicit or implicit prompt) and/or rankings
    /// `{"prompt", "responses": [...], "ranking": [best, ..., worst]}`; an optional `annotator`
    /// field says who judged. The whole file is checked before anything is stored.
    file: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Where to write the JSON Lines (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write whole rankings (`prompt`, `responses`, `ranking`, `annotator`) instead of TRL pairs.
    #[arg(long)]
    rankings: bool,
}

pub fn import_command(args: &ImportArgs) -> Result<()> {
    let mut store = args.store.open()?;
    let report = preference_files::import(&args.file, store.as_mut())
        .with_context(|| format!("importing {}", args.file.display()))?;
    eprintln!(
        "{} records, {} prompts: {} rankings stored, {} already in the store (skipped)",
        report.records, report.prompts, report.stored, report.duplicates
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub fn export_command(args: &ExportArgs) -> Result<()> {
    let store = args.store.open()?;
    let report = if args.rankings {
        let (lines, report) = preference_files::export_rankings(store.as_ref())?;
        write_out(args.out.as_deref(), &lines)?;
        report
    } else {
        let (lines, report) = preference_files::export_pairs(store.as_ref())?;
        write_out(args.out.as_deref(), &lines)?;
        report
    };
    let what = if args.rankings { "rankings" } else { "pairs" };
    eprintln!("{} {what} written{}", report.written, destination(args.out.as_deref()));
    if report.identical_dropped > 0 {
        eprintln!(
            "{} pairs left out: chosen and rejected are the same text (a ranking of identical responses teaches nothing)",
            report.identical_dropped
        );
    }
    Ok(())
}

/// JSON lines to `out` (atomically) or to standard output.
fn write_out<T: serde::Serialize>(out: Option<&Path>, lines: &[T]) -> Result<()> {
    match out {
        Some(path) => rlhf_data::datasets::write_lines(path, lines)?,
        None => {
            for line in lines {
                println!("{}", serde_json::to_string(line)?);
            }
        }
    }
    Ok(())
}

fn destination(out: Option<&Path>) -> String {
    out.map_or_else(String::new, |p| format!(" to {}", p.display()))
}
