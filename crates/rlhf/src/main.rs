//! `rlhf`: the one binary of the project. Every pipeline stage and every service is a subcommand.

mod allocator;
mod annotators;
mod bench;
mod bench_flops;
mod bench_ppo;
mod preference_data;
mod serve;
mod stages;
mod threads;
mod try_model;

use clap::{Parser, Subcommand};

/// RLHF for language models: supervised fine-tuning, preference collection, reward modelling
/// and PPO, on candle.
#[derive(Debug, Parser)]
#[command(name = "rlhf", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline: SFT, preference collection, reward model, PPO, report.
    ///
    /// With no model or data given it runs the bundled assistant task. Everything goes to a run
    /// directory; `--resume` continues a run that was stopped.
    Run(stages::RunArgs),
    /// Stage 1: supervised fine-tuning of the policy on the SFT data.
    Sft(stages::RunArgs),
    /// Stage 2: sample K responses per prompt from the SFT model and have annotators rank them;
    /// rankings go to the preference store (preferences.sqlite in the run directory).
    Collect(stages::RunArgs),
    /// Stage 3: train the reward model (SFT network + scalar head) on the stored rankings.
    Rm(stages::RunArgs),
    /// Stage 4: PPO against the reward model with a KL penalty to the SFT model, with held-out
    /// gold evaluation and the reward-hacking alarm.
    Ppo(stages::RunArgs),
    /// Run one service as its own process: generator, scorer, preferences or learner.
    #[command(subcommand)]
    Serve(serve::Service),
    /// Print the default pipeline configuration (JSON); edit it and pass it with --config.
    Config,
    /// Measure training, sampling and scoring throughput of the model core on this machine.
    Bench(bench::BenchArgs),
    /// Continue a prompt with a model (Hugging Face folder, GGUF file or run checkpoint): check a
    /// checkpoint before spending hours on it.
    Generate(try_model::GenerateArgs),
    /// Print a reward model's score of one response to one prompt.
    Score(try_model::ScoreArgs),
    /// Load preference data (TRL pairs or K-way rankings, JSON Lines) into a run's preference
    /// store or the preference service, so the reward model trains on it. Importing the same
    /// file again stores nothing twice.
    ImportPreferences(preference_data::ImportArgs),
    /// Write the stored rankings out as TRL preference pairs (or whole rankings), JSON Lines.
    ExportPreferences(preference_data::ExportArgs),
    /// Manage the people who rank responses: add (prints a login token once), pause, resume.
    #[command(subcommand)]
    Annotators(annotators::AnnotatorCommand),
}

fn main() -> anyhow::Result<()> {
    allocator::keep_freed_memory();
    threads::fix_thread_count();
    match Cli::parse().command {
        Command::Run(args) => stages::run_all(&args),
        Command::Sft(args) => stages::run_one(&args, rlhf_pipeline::Stage::Sft),
        Command::Collect(args) => stages::run_one(&args, rlhf_pipeline::Stage::Collect),
        Command::Rm(args) => stages::run_one(&args, rlhf_pipeline::Stage::RewardModel),
        Command::Ppo(args) => stages::run_one(&args, rlhf_pipeline::Stage::Ppo),
        Command::Config => {
            println!("{}", serde_json::to_string_pretty(&rlhf_pipeline::PipelineConfig::default())?);
            Ok(())
        }
        Command::Bench(args) => bench::run(&args),
        Command::Generate(args) => try_model::generate_command(&args),
        Command::Score(args) => try_model::score_command(&args),
        Command::ImportPreferences(args) => preference_data::import_command(&args),
        Command::Annotators(command) => annotators::run(command),
        Command::ExportPreferences(args) => preference_data::export_command(&args),
        Command::Serve(service) => serve::run(service),
    }
}
