//! The knowledge base every question is about.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Capital,
    Colour,
    Sound,
    Sum,
}

/// One fact: `subject`'s answer in `category` is `value` (one word).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    pub category: Category,
    pub subject: String,
    pub value: String,
}

const CAPITALS: &[(&str, &str)] = &[
    ("france", "paris"),
    ("spain", "madrid"),
    ("italy", "rome"),
    ("germany", "berlin"),
    ("japan", "tokyo"),
    ("egypt", "cairo"),
    ("kenya", "nairobi"),
    ("peru", "lima"),
    ("chile", "santiago"),
    ("cuba", "havana"),
    ("greece", "athens"),
    ("norway", "oslo"),
    ("sweden", "stockholm"),
    ("poland", "warsaw"),
    ("austria", "vienna"),
    ("ireland", "dublin"),
    ("portugal", "lisbon"),
    ("russia", "moscow"),
    ("china", "beijing"),
    ("canada", "ottawa"),
];

const COLOURS: &[(&str, &str)] = &[
    ("the sky", "blue"),
    ("grass", "green"),
    ("a banana", "yellow"),
    ("snow", "white"),
    ("coal", "black"),
    ("blood", "red"),
    ("a lemon", "yellow"),
    ("a tomato", "red"),
    ("a leaf", "green"),
    ("a cloud", "white"),
    ("a carrot", "orange"),
    ("a plum", "purple"),
    ("the sea", "blue"),
    ("a crow", "black"),
    ("a pumpkin", "orange"),
    ("a violet", "purple"),
];

const SOUNDS: &[(&str, &str)] = &[
    ("cow", "moo"),
    ("dog", "woof"),
    ("cat", "meow"),
    ("duck", "quack"),
    ("sheep", "baa"),
    ("pig", "oink"),
    ("horse", "neigh"),
    ("lion", "roar"),
    ("owl", "hoot"),
    ("snake", "hiss"),
    ("bee", "buzz"),
    ("frog", "croak"),
    ("mouse", "squeak"),
    ("wolf", "howl"),
    ("hen", "cluck"),
    ("donkey", "bray"),
];

/// Every fact, in a fixed order: capitals, colours, sounds, then `a plus b` for a, b in 1..=5.
pub fn knowledge_base() -> Vec<Fact> {
    let pairs = |category, list: &[(&str, &str)]| {
        list.iter().map(|(s, v)| Fact { category, subject: s.to_string(), value: v.to_string() }).collect::<Vec<_>>()
    };
    let mut facts = pairs(Category::Capital, CAPITALS);
    facts.extend(pairs(Category::Colour, COLOURS));
    facts.extend(pairs(Category::Sound, SOUNDS));
    for a in 1..=5 {
        for b in 1..=5 {
            facts.push(Fact { category: Category::Sum, subject: format!("{a} plus {b}"), value: (a + b).to_string() });
        }
    }
    facts
}

/// All distinct answer values of a category: the pool confidently wrong answers come from.
pub fn values_of(facts: &[Fact], category: Category) -> Vec<String> {
    let mut values: Vec<String> = facts.iter().filter(|f| f.category == category).map(|f| f.value.clone()).collect();
    values.sort();
    values.dedup();
    values
}
