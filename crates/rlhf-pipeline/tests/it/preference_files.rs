//! Preference files in and out of a store: imports are validated whole and idempotent, exports
//! read back as the same judgements, and a reward model trains on imported rankings alone.

use std::path::Path;

use preference_store::{PreferenceStore, SqliteStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rlhf_pipeline::preference_files::{self, ImportReport};
use rlhf_pipeline::{RunDir, Stage, run_stage};
use rlhf_world::World;
use rlhf_world::responses::{Style, respond};
use serde::Serialize;

use crate::small::small_config;

fn write(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn write_json<T: Serialize>(path: &Path, lines: &[T]) {
    rlhf_data::datasets::write_lines(path, lines).unwrap();
}

fn store(dir: &Path, name: &str) -> SqliteStore {
    SqliteStore::open(&dir.join(name)).unwrap()
}

/// Exported lines as sorted JSON text, so two stores compare regardless of storage order.
fn sorted<T: Serialize>(lines: &[T]) -> Vec<String> {
    let mut text: Vec<String> = lines.iter().map(|l| serde_json::to_string(l).unwrap()).collect();
    text.sort();
    text
}

const MIXED: &[&str] = &[
    r#"{"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon."}"#,
    r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}], "annotator": "ana"}"#,
    r#"{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}"#,
    r#"{"prompt": "Name a colour.", "responses": ["Blue.", "I like trains.", "Blue, a lovely colour, I hope this helps."], "ranking": [0, 2, 1], "annotator": "ben"}"#,
];

#[test]
fn an_import_stores_every_judgement_once_and_a_bad_file_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prefs.jsonl");
    write(&file, MIXED);
    let mut db = store(dir.path(), "a.sqlite");

    let first = preference_files::import(&file, &mut db).unwrap();
    assert_eq!(first, ImportReport { records: 4, stored: 4, duplicates: 0, prompts: 4 });
    let rankings = db.rankings(None).unwrap();
    assert_eq!(rankings.iter().map(|r| r.responses.len()).collect::<Vec<_>>(), vec![2, 2, 2, 3]);
    assert_eq!(rankings[3].order, vec![0, 2, 1]);
    assert_eq!(rankings[1].annotator_id, "ana");
    assert_eq!(rankings[0].annotator_id, "import:prefs.jsonl");
    // The system turn survives the store; a lone user turn is stored as its text.
    let prompts = db.prompts().unwrap();
    assert!(prompts.iter().any(|(_, text)| text == "What is the capital of France?"));
    assert!(prompts.iter().any(|(_, text)| text.contains("\"system\"") && text.contains("Be brief.")));

    // The same file again: every record is already there.
    let again = preference_files::import(&file, &mut db).unwrap();
    assert_eq!(again, ImportReport { records: 4, stored: 0, duplicates: 4, prompts: 4 });
    assert_eq!(db.rankings(None).unwrap(), rankings);

    // A file whose third line lacks "rejected": refused by line, and nothing of it is stored.
    let bad = dir.path().join("bad.jsonl");
    write(
        &bad,
        &[
            r#"{"prompt": "New question?", "chosen": "a", "rejected": "b"}"#,
            r#"{"prompt": "Another?", "chosen": "c", "rejected": "d"}"#,
            r#"{"prompt": "Third?", "chosen": "e"}"#,
        ],
    );
    let err = preference_files::import(&bad, &mut db).unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("rejected"), "{err}");
    assert_eq!(db.rankings(None).unwrap().len(), 4);
    assert_eq!(db.prompts().unwrap().len(), 4);

    // A ranking that is not a permutation is refused the same way.
    write(&bad, &[r#"{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}"#]);
    let err = preference_files::import(&bad, &mut db).unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
    assert_eq!(db.rankings(None).unwrap().len(), 4);
}

#[test]
fn exported_pairs_and_rankings_read_back_as_the_same_judgements() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prefs.jsonl");
    write(&file, MIXED);
    let mut original = store(dir.path(), "a.sqlite");
    preference_files::import(&file, &mut original).unwrap();

    // Pairs: 1 + 1 + 1 + 3 (a ranking of three is three pairs), in TRL's layout.
    let (pairs, report) = preference_files::export_pairs(&original).unwrap();
    assert_eq!((report.written, report.identical_dropped), (6, 0));
    let text = sorted(&pairs);
    assert!(text.contains(
        &r#"{"prompt":"What is the capital of France?","chosen":"Paris.","rejected":"Lyon.","annotator":"import:prefs.jsonl"}"#
            .to_string()
    ));
    assert!(text.contains(&r#"{"prompt":[{"role":"system","content":"Be brief."},{"role":"user","content":"2+2?"}],"chosen":[{"role":"assistant","content":"4"}],"rejected":[{"role":"assistant","content":"5"}],"annotator":"ana"}"#.to_string()));

    let exported = dir.path().join("pairs.jsonl");
    write_json(&exported, &pairs);
    let mut copy = store(dir.path(), "b.sqlite");
    let report = preference_files::import(&exported, &mut copy).unwrap();
    assert_eq!((report.stored, report.duplicates), (6, 0));
    assert_eq!(sorted(&preference_files::export_pairs(&copy).unwrap().0), text);

    // Whole rankings keep K = 3 as one record and read back identically.
    let (rankings, report) = preference_files::export_rankings(&original).unwrap();
    assert_eq!(report.written, 4);
    let exported = dir.path().join("rankings.jsonl");
    write_json(&exported, &rankings);
    let mut copy = store(dir.path(), "c.sqlite");
    assert_eq!(preference_files::import(&exported, &mut copy).unwrap().stored, 4);
    assert_eq!(sorted(&preference_files::export_rankings(&copy).unwrap().0), sorted(&rankings));
    assert_eq!(copy.rankings(None).unwrap()[3].order, vec![0, 2, 1]);
}

#[test]
fn pairs_of_identical_text_are_left_out_of_an_export_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prefs.jsonl");
    write(&file, &[r#"{"prompt": "q", "responses": ["same", "other", "same"], "ranking": [0, 1, 2]}"#]);
    let mut db = store(dir.path(), "a.sqlite");
    preference_files::import(&file, &mut db).unwrap();
    let (pairs, report) = preference_files::export_pairs(&db).unwrap();
    assert_eq!((report.written, report.identical_dropped), (2, 1));
    assert!(pairs.iter().all(|p| p.chosen != p.rejected));
}

#[derive(Serialize)]
struct RankingRecord {
    prompt: String,
    responses: Vec<String>,
    ranking: Vec<usize>,
}

#[test]
fn a_reward_model_learns_from_imported_rankings_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(5);
    config.sft.epochs = 2;
    config.reward_model.epochs = 3;
    let run = RunDir::create(&dir.path().join("run"), &config).unwrap();
    run_stage(&run, Stage::Sft).unwrap();

    // Someone else's data about the same questions: concise answers beat padded ones, which
    // beat off-topic ones. Their prompts are not the world's, so no gold ceiling is known.
    let world = World::new(config.world.held_out, config.seed);
    let mut rng = StdRng::seed_from_u64(11);
    let records: Vec<RankingRecord> = world
        .prompts
        .iter()
        .map(|p| {
            let fact = world.fact_of(p);
            let responses: Vec<String> = [Style::OffTopic, Style::Concise, Style::Verbose]
                .iter()
                .map(|&s| respond(&world, fact, s, &mut rng))
                .collect();
            RankingRecord { prompt: p.text.clone(), responses, ranking: vec![1, 2, 0] }
        })
        .collect();
    let file = dir.path().join("theirs.jsonl");
    write_json(&file, &records);
    let mut db = SqliteStore::open(&run.path("preferences.sqlite")).unwrap();
    let report = preference_files::import(&file, &mut db).unwrap();
    assert_eq!(report.stored, world.prompts.len());
    drop(db);

    run_stage(&run, Stage::RewardModel).unwrap();
    let rm = run.state().unwrap().reward_model.expect("the stage records its result");
    assert_eq!(rm.imported_rankings, world.prompts.len());
    assert_eq!(rm.dropped_too_long, 0);
    assert_eq!(rm.noise_ceiling, None);
    assert!(rm.heldout_accuracy >= 0.85, "held-out agreement {}", rm.heldout_accuracy);
}
