//! The gold preference on free text: what a pretrained model writes in its own words, judged as
//! a careful reader would judge it against the same five answer types as the bundled world.
//!
//! A pretrained model does not answer "the capital of france is paris ."; it writes "The capital
//! of France is Paris, a city known for…", "1 + 1 = 2", or a paragraph about the mysteries of the
//! sea. The judge reads the response sentence by sentence:
//!
//! - The *answer sentence* is the first one that states an answer: the right value (or a word
//!   for it: "barks" for a dog's "woof", "two" for 2) or a rival one (another value of the
//!   category, another colour or animal sound, another number after "=", "is", "equals").
//!   It is correct when it states the right value and no rival; otherwise wrong.
//! - A correct answer is *verbose* when the response pads it: more than one sentence, or more
//!   than [`CONCISE_WORDS`] words.
//! - With no answer sentence: an admission ("I don't know", "I'm not sure") is a refusal; a
//!   sentence about the capital that names another place is wrong; anything else is off-topic
//!   (rambling about the sea's mysteries answers nothing).
//!
//! It agrees with [`crate::gold::classify`] on every response the bundled world generates, and
//! with a person's labels on SmolLM2-135M-Instruct's own answers (`tests/data/`).

use crate::facts::{Category, Fact, values_of};
use crate::gold::AnswerType;
use crate::prompts::World;

/// A correct answer of at most this many words in one sentence is concise.
pub const CONCISE_WORDS: usize = 10;

/// Words for an animal's sound besides the world's value.
const SOUND_SYNONYMS: &[(&str, &[&str])] = &[
    ("woof", &["bark", "arf", "ruff"]),
    ("meow", &["miaow", "mew"]),
    ("baa", &["bleat"]),
    ("oink", &["grunt"]),
    ("neigh", &["whinny"]),
    ("croak", &["ribbit"]),
    ("bray", &["hee-haw"]),
];

/// Sound words that are no animal's answer in the world but are a (wrong) answer when given.
const OTHER_SOUNDS: &[&str] = &[
    "growl", "purr", "screech", "chirp", "chirr", "tweet", "click", "whistle", "squeal", "squawk", "trumpet", "cackle",
    "caw", "honk", "snort", "yelp", "whine", "chatter", "hum", "rumble", "scream",
];

/// Colour words that are no answer in the world but are a (wrong) answer when given.
const OTHER_COLOURS: &[&str] =
    &["grey", "gray", "brown", "pink", "silver", "gold", "golden", "beige", "cyan", "magenta", "turquoise", "indigo"];

const NUMBER_WORDS: &[&str] =
    &["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"];

/// Words after which a number is stated as the answer to a sum ("= 5", "is 5", "equals 5").
const STATES_NUMBER: &[&str] = &["=", "is", "equals", "makes", "gives", "get", "be", "was", "are"];

/// Words that may stand between a stating word and its number ("is simply 4", "is equal to 4").
const BETWEEN: &[&str] =
    &["simply", "just", "exactly", "clearly", "actually", "obviously", "then", "also", "equal", "to"];

const ADMISSIONS: &[&str] = &[
    "i do not know",
    "i don't know",
    "i dont know",
    "i am not sure",
    "i'm not sure",
    "i cannot answer",
    "i can't answer",
    "i'm unable",
    "i am unable",
    "i don't have",
    "i do not have",
    "as an ai",
];

/// What kind of answer `response` (free text) is to a question about `fact`.
pub fn classify_free_text(world: &World, fact: &Fact, response: &str) -> AnswerType {
    let sentences = sentences(response);
    let judge = Judge::new(world, fact);
    for sentence in &sentences {
        let words = words(sentence);
        let (right, rival) = judge.stated(&words);
        if rival {
            return AnswerType::Wrong;
        }
        if right {
            let total: usize = sentences.iter().map(|s| words_only(s).len()).sum();
            let padded = sentences.len() > 1 || total > CONCISE_WORDS;
            return if padded { AnswerType::Verbose } else { AnswerType::Correct };
        }
    }
    let lower = response.to_lowercase().replace('’', "'");
    if ADMISSIONS.iter().any(|a| lower.contains(a)) {
        return AnswerType::Refusal;
    }
    if fact.category == Category::Capital && sentences.iter().any(|s| names_another_place(s, fact)) {
        return AnswerType::Wrong;
    }
    AnswerType::OffTopic
}

/// The answers the judge recognises for one fact.
struct Judge<'a> {
    fact: &'a Fact,
    right: Vec<String>,
    rivals: Vec<String>,
}

impl<'a> Judge<'a> {
    fn new(world: &World, fact: &'a Fact) -> Self {
        let values = values_of(&world.facts, fact.category);
        let forms = |value: &str| -> Vec<String> {
            let mut forms = vec![value.to_string()];
            if fact.category == Category::Sound
                && let Some((_, more)) = SOUND_SYNONYMS.iter().find(|(v, _)| *v == value)
            {
                forms.extend(more.iter().map(|s| s.to_string()));
            }
            forms
        };
        let right = forms(&fact.value);
        let mut rivals: Vec<String> = values.iter().filter(|v| **v != fact.value).flat_map(|v| forms(v)).collect();
        match fact.category {
            Category::Sound => rivals.extend(OTHER_SOUNDS.iter().map(|s| s.to_string())),
            Category::Colour => rivals.extend(OTHER_COLOURS.iter().map(|s| s.to_string())),
            Category::Capital | Category::Sum => {}
        }
        rivals.retain(|r| !right.contains(r));
        Judge { fact, right, rivals }
    }

    /// Whether `words` (one sentence) state the right answer, and whether they state a rival one.
    fn stated(&self, words: &[String]) -> (bool, bool) {
        if self.fact.category == Category::Sum {
            return self.stated_number(words);
        }
        let says = |forms: &[String]| words.iter().any(|w| forms.iter().any(|f| inflects(w, f)));
        (says(&self.right), says(&self.rivals))
    }

    /// Numbers stated as a result: after "=", "is", "equals"… (perhaps with "simply" or
    /// "equal to" between), or a sentence that is one number. Numbers elsewhere ("combine 2 and
    /// 3", "2 + 3") restate the question.
    fn stated_number(&self, words: &[String]) -> (bool, bool) {
        let stated = |i: usize| {
            let mut j = i;
            while j > 0 && BETWEEN.contains(&words[j - 1].as_str()) {
                j -= 1;
            }
            j > 0 && STATES_NUMBER.contains(&words[j - 1].as_str())
        };
        let alone = words.len() == 1;
        let answers: Vec<f64> =
            words.iter().enumerate().filter(|(i, _)| alone || stated(*i)).filter_map(|(_, w)| number(w)).collect();
        let value: f64 = self.fact.value.parse().expect("sums have numeric values");
        (answers.contains(&value), answers.iter().any(|n| *n != value))
    }
}

/// `word` is `form` or an inflection of it ("barks", "barking", "mooed", "cat's").
fn inflects(word: &str, form: &str) -> bool {
    let Some(rest) = word.strip_prefix(form) else { return false };
    matches!(rest, "" | "s" | "es" | "ed" | "ing" | "'s" | "ish" | "-ish") || (rest.len() == 4 && rest.ends_with("ing"))
}

fn number(word: &str) -> Option<f64> {
    word.parse::<f64>().ok().or_else(|| NUMBER_WORDS.iter().position(|w| *w == word).map(|n| n as f64))
}

/// A sentence about the capital that names a place other than the country and its capital:
/// "The capital city of Italy is Venice".
fn names_another_place(sentence: &str, fact: &Fact) -> bool {
    let lower = sentence.to_lowercase();
    if !lower.contains("capital") {
        return false;
    }
    sentence.split_whitespace().skip(1).any(|raw| {
        let word: String = raw.chars().filter(|c| c.is_alphabetic()).collect();
        let lower = word.to_lowercase();
        word.chars().next().is_some_and(char::is_uppercase)
            && lower != fact.subject
            && lower != fact.value
            && !matches!(lower.as_str(), "i" | "city" | "capital")
    })
}

/// Sentences: text up to ".", "!" or "?" followed by a space or the end, and lines. A list
/// marker ("1. ", "2) ") at the start of a line is not a sentence.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = vec![];
    for line in text.lines() {
        let mut line = line.trim();
        if let Some(pos) = line.find(['.', ')'])
            && pos > 0
            && line[..pos].chars().all(|c| c.is_ascii_digit())
            && line[pos + 1..].starts_with(' ')
        {
            line = line[pos + 1..].trim_start();
        }
        let mut current = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            current.push(c);
            if matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|n| n.is_whitespace()) {
                push_sentence(&mut out, &mut current);
            }
        }
        push_sentence(&mut out, &mut current);
    }
    out
}

fn push_sentence(out: &mut Vec<String>, current: &mut String) {
    if current.chars().any(char::is_alphanumeric) {
        out.push(current.trim().to_string());
    }
    current.clear();
}

/// Lower-case words and numbers of a sentence, with "=" and "+" kept as words (they state sums).
fn words(sentence: &str) -> Vec<String> {
    let spaced = sentence.replace('=', " = ").replace('+', " + ").replace('’', "'");
    spaced
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !(c.is_alphanumeric() || matches!(c, '=' | '+' | '\'' | '-')))
                .trim_end_matches(['.', '\''])
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Words with letters or digits (what a reader counts as words).
fn words_only(sentence: &str) -> Vec<String> {
    words(sentence).into_iter().filter(|w| w.chars().any(char::is_alphanumeric)).collect()
}
