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
