//! One writer per run directory: a second `rlhf run` or learner on the same run is refused
//! instead of interleaving checkpoints and metrics with the first.

use rlhf_pipeline::{PipelineConfig, RunDir};

#[test]
fn a_run_directory_has_one_writer_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(&dir.path().join("run"), &PipelineConfig::default()).unwrap();
    let held = run.lock().unwrap();
    let err = RunDir::open(run.root()).unwrap().lock().unwrap_err().to_string();
    assert!(err.contains("in use by another process"), "{err}");
    drop(held);
    run.lock().expect("free again once the first writer is done");
}
