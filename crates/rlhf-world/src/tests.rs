//! The world behaves as the gold preference says it should.

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::gold::gold_win;
use crate::responses::sft_data;
use crate::*;

fn world() -> World {
    World::new(0.2, 0)
}

#[test]
fn every_style_is_classified_as_the_matching_answer_type() {
    let world = world();
    let mut rng = StdRng::seed_from_u64(1);
    let expected = [
        (Style::Concise, AnswerType::Correct),
        (Style::Verbose, AnswerType::Verbose),
        (Style::Refusal, AnswerType::Refusal),
        (Style::Wrong, AnswerType::Wrong),
        (Style::OffTopic, AnswerType::OffTopic),
    ];
    for prompt in &world.prompts {
        let fact = world.fact_of(prompt);
        for (style, answer) in expected {
            let response = respond(&world, fact, style, &mut rng);
            assert_eq!(classify(&world, fact, &response), answer, "{style:?} for {:?}: {response:?}", prompt.text);
        }
    }
    let paris = world.facts.iter().find(|f| f.value == "paris").unwrap();
    assert_eq!(classify(&world, paris, ""), AnswerType::OffTopic);
    assert_eq!(classify(&world, paris, "the capital of france is paris"), AnswerType::OffTopic, "no full stop");
}

#[test]
fn gold_preference_orders_the_types() {
    let world = world();
    let paris = world.facts.iter().find(|f| f.value == "paris").unwrap();
    let ordered = [
        "the capital of france is paris .",
        "the capital of france is paris . i hope this helps .",
        "i do not know .",
        "the capital of france is rome .",
        "music makes me happy .",
    ];
    for (i, better) in ordered.iter().enumerate() {
        for worse in &ordered[i + 1..] {
            assert_eq!(gold_win(&world, paris, better, worse), 1.0, "{better} vs {worse}");
            assert_eq!(gold_win(&world, paris, worse, better), 0.0);
        }
        assert_eq!(gold_win(&world, paris, better, better), 0.5);
    }
}

#[test]
fn annotators_rank_by_utility_and_the_length_bias_flips_verbosity() {
    let world = world();
    let paris = world.facts.iter().find(|f| f.value == "paris").unwrap();
    let responses: Vec<String> = [
        "music makes me happy .",
        "the capital of france is paris . i hope this helps . have a wonderful day .",
        "the capital of france is paris .",
        "i do not know .",
    ]
    .map(String::from)
    .to_vec();
    let mut rng = StdRng::seed_from_u64(0);
    let exact = Annotator { id: "exact".into(), temperature: 0.0, length_bias: 0.0 };
    assert_eq!(exact.rank(&world, paris, &responses, &mut rng), vec![2, 1, 3, 0]);
    let biased = Annotator { id: "biased".into(), temperature: 0.0, length_bias: 1.0 };
    assert_eq!(biased.rank(&world, paris, &responses, &mut rng), vec![1, 2, 3, 0]);

    // With noise the top choice follows Plackett–Luce: P(concise first | concise vs verbose,
    // temperature 1) = e^3 / (e^3 + e^2) = 0.731.
    let noisy = Annotator { id: "noisy".into(), temperature: 1.0, length_bias: 0.0 };
    let pair = vec![responses[2].clone(), responses[1].clone()];
    let wins = (0..4000).filter(|_| noisy.rank(&world, paris, &pair, &mut rng)[0] == 0).count();
    let share = wins as f64 / 4000.0;
    assert!((share - 0.731).abs() < 0.03, "{share}");
}

#[test]
fn the_split_holds_out_prompts_of_facts_seen_in_training() {
    let world = world();
    let held = world.split(Split::HeldOut);
    let train = world.split(Split::Train);
    assert_eq!(held.len() + train.len(), world.prompts.len());
    assert!((held.len() as f64 / world.prompts.len() as f64 - 0.2).abs() < 0.01);
    for p in &held {
        assert!(train.iter().any(|t| t.fact == p.fact), "{} has no training prompt", p.id);
    }
    // Fixed by the seed.
    assert_eq!(World::new(0.2, 0).prompts, world.prompts);
    assert_ne!(World::new(0.2, 1).prompts, world.prompts);
}

#[test]
fn sft_data_mixes_styles_and_stays_in_the_vocabulary() {
    let world = world();
    let data = sft_data(&world, &StyleMix::default(), 4, &mut StdRng::seed_from_u64(3));
    assert_eq!(data.len(), 4 * world.split(Split::Train).len());
    let share = |s: Style| data.iter().filter(|e| e.style == s).count() as f64 / data.len() as f64;
    assert!((share(Style::Concise) - 0.3).abs() < 0.03);
    assert!((share(Style::OffTopic) - 0.2).abs() < 0.03);
    let words = world.words();
    for e in &data {
        for w in e.prompt.split_whitespace().chain(e.response.split_whitespace()) {
            assert!(words.binary_search(&w.to_string()).is_ok(), "{w} missing from the vocabulary");
        }
    }
}

#[test]
fn the_free_text_judge_agrees_with_the_bundled_judge_on_every_bundled_response() {
    let world = world();
    for seed in 0..3 {
        let mut rng = StdRng::seed_from_u64(seed);
        for prompt in &world.prompts {
            let fact = world.fact_of(prompt);
            for style in [Style::Concise, Style::Verbose, Style::Refusal, Style::Wrong, Style::OffTopic] {
                let response = respond(&world, fact, style, &mut rng);
                let bundled = classify(&world, fact, &response);
                assert_eq!(classify_free_text(&world, fact, &response), bundled, "{style:?}: {response:?}");
                // The same answer in plain English is the same type of answer.
                let natural = world.natural_text_of(&response);
                assert_eq!(classify_free_text(&world, fact, &natural), bundled, "{style:?}: {natural:?}");
            }
        }
    }
}

#[test]
fn the_free_text_judge_reads_answers_in_a_models_own_words() {
    let world = world();
    let fact = |value: &str| world.facts.iter().find(|f| f.value == value).unwrap();
    let cases = [
        ("paris", "The capital of France is Paris.", AnswerType::Correct),
        ("paris", "Paris is the capital of France. It is known for the Eiffel Tower.", AnswerType::Verbose),
        ("paris", "The capital of France is Lyon.", AnswerType::Wrong),
        ("paris", "The capital of France is Rome, or maybe Paris.", AnswerType::Wrong),
        ("paris", "I'm not sure, sorry.", AnswerType::Refusal),
        ("paris", "France is a lovely country with great food.", AnswerType::OffTopic),
        ("woof", "A dog barks.", AnswerType::Correct),
        ("woof", "A dog meows.", AnswerType::Wrong),
        ("woof", "Dogs make a series of clicks and whistles.", AnswerType::Wrong),
        ("6", "2 + 4 = 6", AnswerType::Correct),
        ("6", "Two plus four equals six.", AnswerType::Correct),
        ("6", "The answer is simply 7.", AnswerType::Wrong),
        ("6", "To add 2 and 4, combine them.", AnswerType::OffTopic),
        ("6", "1. 2 + 4 = 6\n2. 6 + 1 = 7", AnswerType::Verbose),
        ("yellow", "A banana is yellowish.", AnswerType::Correct),
        ("yellow", "A banana is a shade of green.", AnswerType::Wrong),
    ];
    for (value, response, expected) in cases {
        assert_eq!(classify_free_text(&world, fact(value), response), expected, "{response:?}");
    }
}

/// The judge's verdicts on recorded SmolLM2-135M-Instruct answers (asked through its chat template
/// with `rlhf generate --chat`), against the label a person gave each: (agreeing, disagreements).
fn agreement_with_a_person(recorded: &str) -> (usize, Vec<String>) {
    let world = world();
    let mut agree = 0;
    let mut disagreements = vec![];
    for line in recorded.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let prompt = world.prompt(record["prompt_id"].as_str().unwrap()).unwrap();
        assert_eq!(world.natural_text(prompt), record["question"].as_str().unwrap());
        let label: AnswerType = serde_json::from_value(record["label"].clone()).unwrap();
        let judged = classify_free_text(&world, world.fact_of(prompt), record["response"].as_str().unwrap());
        if judged == label {
            agree += 1;
        } else {
            disagreements.push(format!("{}: person {label:?}, judge {judged:?}", record["prompt_id"]));
        }
    }
    (agree, disagreements)
}

/// 116 answers (greedy, and sampled at temperature 0.7) that the judge's rules were written
/// from, labelled before the rules were.
#[test]
fn the_free_text_judge_agrees_with_a_person_on_the_smollm2_answers_it_was_written_from() {
    let (agree, disagreements) = agreement_with_a_person(include_str!("../tests/data/smollm2_answers.jsonl"));
    assert_eq!(agree + disagreements.len(), 116);
    // The one disagreement: "a hen doesn't emit any sound" is a false claim to a person, but it
    // names no sound, so the judge calls it off-topic.
    assert!(agree >= 115, "{agree}/116 agree: {disagreements:#?}");
}

/// 38 answers sampled at temperature 1.0 for questions and seeds the rules were not written
/// from, labelled before the judge was run on them: how well the rules generalise.
#[test]
fn the_free_text_judge_agrees_with_a_person_on_unseen_smollm2_answers() {
    let (agree, disagreements) = agreement_with_a_person(include_str!("../tests/data/smollm2_answers_unseen.jsonl"));
    assert_eq!(agree + disagreements.len(), 38);
    // Measured: 33/38. Four of the five disagreements are wrong against off-topic (a sound or a
    // sum no list knows: "Lion - BAM!", "the answer is an even number"; brown named for cattle
    // in an answer about grass); one is "Three is a lovely result … (5 + 2) = 7", which the judge
    // reads as padded (its first stated number is the 7) and a person as contradicting itself.
    assert!(agree >= 33, "{agree}/38 agree: {disagreements:#?}");
}

#[test]
fn a_natural_world_asks_and_answers_in_plain_english_with_the_same_split() {
    let bundled = world();
    let natural = World::with_phrasing(0.2, 0, Phrasing::Natural);
    assert_eq!(natural.prompts.len(), bundled.prompts.len());
    for (n, b) in natural.prompts.iter().zip(&bundled.prompts) {
        assert_eq!((&n.id, n.fact, n.split), (&b.id, b.fact, b.split));
        assert_eq!(n.text, bundled.natural_text(b));
    }
    let france = natural.prompts.iter().find(|p| p.id == "capital-0-0").unwrap();
    assert_eq!(france.text, "What is the capital of France?");
    assert_eq!(
        natural.phrase("the capital of france is paris . i am not sure , sorry ."),
        "The capital of France is Paris. I am not sure, sorry."
    );
    assert_eq!(natural.phrase("What is 2 plus 3?"), "What is 2 plus 3?", "natural text stays as it is");

    // SFT data in plain English, each response judged (on free text) as the style it was written in.
    let mut rng = StdRng::seed_from_u64(5);
    let data = sft_data(&natural, &StyleMix::default(), 2, &mut rng);
    for example in &data {
        assert!(!example.response.chars().next().unwrap().is_lowercase(), "{:?}", example.response);
        let fact = natural.fact_of(natural.prompt(&example.prompt_id).unwrap());
        let expected = match example.style {
            Style::Concise => AnswerType::Correct,
            Style::Verbose => AnswerType::Verbose,
            Style::Refusal => AnswerType::Refusal,
            Style::Wrong => AnswerType::Wrong,
            Style::OffTopic => AnswerType::OffTopic,
        };
        assert_eq!(classify(&natural, fact, &example.response), expected, "{:?}", example.response);
    }
    // Annotators count sentences in the world's phrasing: padding is seen either way.
    let biased = Annotator { id: "a".into(), temperature: 0.0, length_bias: 1.0 };
    let paris = natural.facts.iter().find(|f| f.value == "paris").unwrap();
    let padded = biased.perceived(&natural, paris, "The capital of France is Paris. I hope this helps.");
    assert_eq!(padded, utility(AnswerType::Verbose) + 1.0);
}
