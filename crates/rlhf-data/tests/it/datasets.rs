//! TRL's dataset formats in, every bad line refused with its number.

use std::path::{Path, PathBuf};

use rlhf_data::Message;
use rlhf_data::datasets::{PreferenceRecord, SftExample, read_preferences, read_prompts, read_sft};

fn file(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

#[test]
fn every_trl_format_reads() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = file(
        dir.path(),
        "prompts.jsonl",
        &[
            r#"{"prompt": "What is 2 + 2?"}"#,
            "",
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "id": 7}"#,
        ],
    );
    let read = read_prompts(&prompts).unwrap();
    assert_eq!(
        read,
        vec![vec![Message::user("What is 2 + 2?")], vec![Message::new("system", "Be brief."), Message::user("Hi")]]
    );

    let sft = file(
        dir.path(),
        "sft.jsonl",
        &[
            r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#,
            r#"{"prompt": "2 + 2?", "completion": "4"}"#,
            r#"{"prompt": [{"role": "user", "content": "3 + 3?"}], "completion": [{"role": "assistant", "content": "6"}]}"#,
        ],
    );
    let read = read_sft(&sft).unwrap();
    assert_eq!(read[0], SftExample { prompt: vec![Message::user("Hi")], completion: "Hello!".into() });
    assert_eq!(read[1], SftExample { prompt: vec![Message::user("2 + 2?")], completion: "4".into() });
    assert_eq!(read[2].completion, "6");

    let prefs = file(
        dir.path(),
        "prefs.jsonl",
        &[
            r#"{"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}"#,
            r#"{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}], "rejected": [{"role": "assistant", "content": "Go away"}]}"#,
            r#"{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bye"}]}"#,
            r#"{"prompt": "Capital of France?", "responses": ["Lyon", "Paris", "I don't know"], "ranking": [1, 2, 0], "annotator": "ann-3"}"#,
        ],
    );
    let read = read_preferences(&prefs).unwrap();
    assert_eq!(
        read[0],
        PreferenceRecord {
            prompt: vec![Message::user("2 + 2?")],
            responses: vec!["4".into(), "5".into()],
            ranking: vec![0, 1],
            annotator: None
        }
    );
    assert_eq!(read[1].responses, vec!["Hello".to_string(), "Go away".to_string()]);
    assert_eq!(
        (read[2].prompt.clone(), read[2].responses.clone()),
        (vec![Message::user("Hi")], vec!["Hello".into(), "Bye".into()])
    );
    assert_eq!((read[3].ranking.clone(), read[3].annotator.as_deref()), (vec![1, 2, 0], Some("ann-3")));
}

#[test]
fn bad_lines_are_refused_with_their_number() {
    let dir = tempfile::tempdir().unwrap();
    let ok = r#"{"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}"#;
    for (line, expected) in [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        (r#"{"prompt": "2 + 2?", "chosen": "4"}"#, "missing field \"rejected\""),
        (r#"{"chosen": "4", "rejected": "5"}"#, "missing field \"prompt\""),
        (r#"{"prompt": 3, "chosen": "4", "rejected": "5"}"#, "\"prompt\" must be text or a list of messages"),
        (r#"{"prompt": "", "chosen": "4", "rejected": "5"}"#, "\"prompt\" is empty"),
        (
            r#"{"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], "chosen": "a", "rejected": "b"}"#,
            "must end with a user turn, not \"assistant\"",
        ),
        (r#"{"prompt": [{"role": "robot", "content": "Hi"}], "chosen": "a", "rejected": "b"}"#, "role \"robot\""),
        (
            r#"{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "a"}], "rejected": [{"role": "user", "content": "Ho"}, {"role": "assistant", "content": "b"}]}"#,
            "must share every turn but the last",
        ),
        (r#"{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1]}"#, "orders 2 of the 3 responses"),
        (r#"{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}"#, "not an order of the 2 responses"),
        (r#"{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 2]}"#, "not an order of the 2 responses"),
        (r#"{"prompt": "p", "responses": ["a"], "ranking": [0]}"#, "at least 2 responses"),
    ] {
        let path = file(dir.path(), "bad.jsonl", &[ok, ok, line]);
        let err = read_preferences(&path).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl") && err.contains("line 3") && err.contains(expected), "{line}: {err}");
    }
    let sft = file(dir.path(), "sft.jsonl", &[r#"{"messages": [{"role": "user", "content": "Hi"}]}"#]);
    let err = read_sft(&sft).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("must end with the assistant's turn"), "{err}");
    let prompts = file(dir.path(), "p.jsonl", &[r#"{"text": "Hi"}"#]);
    let err = read_prompts(&prompts).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("missing field \"prompt\" (or \"messages\")"), "{err}");
    let empty = file(dir.path(), "empty.jsonl", &[""]);
    assert!(read_prompts(&empty).unwrap_err().to_string().contains("holds no records"));
}

#[test]
fn stored_prompt_text_round_trips_single_turns_and_conversations() {
    use rlhf_data::datasets::{prompt_from_text, prompt_to_text};
    let single = vec![Message::user("What is the capital of France?")];
    assert_eq!(prompt_to_text(&single), "What is the capital of France?");
    assert_eq!(prompt_from_text(&prompt_to_text(&single)), single);
    let conversation = vec![
        Message::new("system", "Be brief."),
        Message::user("Hi"),
        Message::assistant("Hello"),
        Message::user("2+2?"),
    ];
    let text = prompt_to_text(&conversation);
    assert!(text.starts_with("[{\"role\":\"system\""), "{text}");
    assert_eq!(prompt_from_text(&text), conversation);
    // Text that merely looks like a list stays text.
    assert_eq!(prompt_from_text("[1, 2] or [3]?"), vec![Message::user("[1, 2] or [3]?")]);
}
