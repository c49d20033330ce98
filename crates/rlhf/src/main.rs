//! `rlhf`: the one binary of the project. Every pipeline stage and, later, every service is a
//! subcommand; a subcommand exists only once it works.

mod bench;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed tensor buffers for reuse; glibc malloc returns large ones to the kernel
/// and faults them back in zeroed on every step (15–20% of training time, measured).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Measure training, sampling and scoring throughput of the model core on this machine.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(&args),
    }
}
