//! `rlhf annotators add|pause|resume`: the people who rank responses in the labeling app. A new
//! annotator's login token is printed once; the preference database keeps only its SHA-256.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use preference_store::tasks::TaskBoard;

#[derive(Debug, Subcommand)]
pub enum AnnotatorCommand {
    /// Add an annotator and print their login token (shown this once; keep it).
    Add(AddArgs),
    /// Stop handing tasks to an annotator (their rankings so far stay).
    Pause(NameArgs),
    /// Hand tasks to a paused annotator again.
    Resume(NameArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Letters, digits, '-', '_' or '.'; it appears in the rankings and on the dashboard.
    name: String,
    /// May also see the quality dashboard and pause annotators.
    #[arg(long)]
    admin: bool,
    #[command(flatten)]
    db: Db,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    name: String,
    #[command(flatten)]
    db: Db,
}

#[derive(Debug, Args)]
struct Db {
    /// The preference database (`rlhf serve preferences --db`).
    #[arg(long, default_value = "preferences.sqlite")]
    db: PathBuf,
}

impl Db {
    fn board(&self) -> Result<TaskBoard> {
        // People may be added before the run that will collect from them has started.
        if let Some(dir) = self.db.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(TaskBoard::open(&self.db, preference_store::tasks::DEFAULT_LEASE_MS)?)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub fn run(command: AnnotatorCommand) -> Result<()> {
    match command {
        AnnotatorCommand::Add(args) => {
            let token = args.db.board()?.add_annotator(&args.name, args.admin, now_ms())?;
            let role = if args.admin { "admin" } else { "annotator" };
            eprintln!("added {role} {}; their login token (shown only now):", args.name);
            println!("{token}");
        }
        AnnotatorCommand::Pause(args) => args.db.board()?.set_paused(&args.name, true)?,
        AnnotatorCommand::Resume(args) => args.db.board()?.set_paused(&args.name, false)?,
    }
    Ok(())
}
