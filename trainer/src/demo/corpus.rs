//! The demo's world and the text written about it: a fixed cast of people, each with a home town,
//! a pet with a name, a favourite colour, a food and a job, and short documents that state those
//! facts, tell small stories with them and add small numbers. The facts are the same in every
//! document (the training and the evaluation text describe one world), so a model that remembers
//! them predicts the text better: exactly what a 2-bit copy loses first.
//!
//! Words are lower case and separated by single spaces, punctuation included (" . "), so a
//! word-level tokenizer covers every document with no unknown token.

use crate::rng::Rng;
use serde_json::{json, Value};

const NAMES: [&str; 16] =
    ["mia", "tom", "lily", "ben", "anna", "max", "sara", "leo", "emma", "jack", "zoe", "sam", "ella", "noah", "ruby", "finn"];
const TOWNS: [&str; 8] = ["oslo", "paris", "rome", "lima", "cairo", "tokyo", "dublin", "quito"];
const PETS: [&str; 6] = ["cat", "dog", "bird", "fish", "rabbit", "horse"];
const PET_NAMES: [&str; 16] = [
    "rex", "bella", "coco", "milo", "luna", "pip", "oscar", "daisy", "bingo", "nala", "otto", "kiwi", "rocky", "polly", "fudge",
    "zigzag",
];
const COLORS: [&str; 7] = ["red", "blue", "green", "yellow", "purple", "orange", "pink"];
const FOODS: [&str; 8] = ["apples", "bread", "rice", "soup", "cake", "cheese", "pasta", "berries"];
const JOBS: [&str; 8] = ["baker", "doctor", "teacher", "farmer", "pilot", "painter", "singer", "builder"];
const THINGS: [&str; 8] = ["ball", "kite", "boat", "tree", "house", "flower", "hat", "box"];
const NUMBERS: [&str; 11] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];
const GLUE: [&str; 44] = [
    ".", "lives", "in", "has", "a", "named", "the", "favorite", "color", "of", "is", "likes", "to", "eat", "works", "as", "one",
    "day", "went", "with", "they", "saw", "was", "happy", "had", "got", "more", "now", "and", "every", "morning", "walks",
    "gives", "some", "friend", "visits", "who", "pet", "at", "home", "loves", "town", "big", "little",
];

/// One person of the world.
struct Person {
    name: &'static str,
    town: &'static str,
    pet: &'static str,
    pet_name: &'static str,
    color: &'static str,
    food: &'static str,
    job: &'static str,
}

/// The world is fixed by its own seed, independent of the corpus seeds.
fn world() -> Vec<Person> {
    let mut r = Rng::new(0xd3e0);
    NAMES
        .iter()
        .enumerate()
        .map(|(i, &name)| Person {
            name,
            town: TOWNS[r.below(TOWNS.len())],
            pet: PETS[r.below(PETS.len())],
            pet_name: PET_NAMES[i],
            color: COLORS[r.below(COLORS.len())],
            food: FOODS[r.below(FOODS.len())],
            job: JOBS[r.below(JOBS.len())],
        })
        .collect()
}

fn fact(p: &Person, k: usize) -> String {
    match k {
        0 => format!("{} lives in {} .", p.name, p.town),
        1 => format!("{} has a {} named {} .", p.name, p.pet, p.pet_name),
        2 => format!("the favorite color of {} is {} .", p.name, p.color),
        3 => format!("{} likes to eat {} .", p.name, p.food),
        4 => format!("{} works as a {} .", p.name, p.job),
        5 => format!("{} is the {} of {} .", p.pet_name, p.pet, p.name),
        _ => format!("every morning {} walks with {} in {} .", p.name, p.pet_name, p.town),
    }
}

/// One document: facts about one or two people, then a story or a sum.
fn document(w: &[Person], r: &mut Rng) -> String {
    let p = &w[r.below(w.len())];
    let q = &w[r.below(w.len())];
    let mut s: Vec<String> = Vec::new();
    let mut order: Vec<usize> = (0..7).collect();
    r.shuffle(&mut order);
    for &k in &order[..2 + r.below(3)] {
        s.push(fact(p, k));
    }
    match r.below(3) {
        0 => {
            let thing = THINGS[r.below(THINGS.len())];
            s.push(format!(
                "one day {} went to {} with {} . they saw a {} {} . {} was happy .",
                p.name, q.town, p.pet_name, p.color, thing, p.name
            ));
        }
        1 => {
            let a = r.below(6);
            let b = r.below(5);
            s.push(format!(
                "{} had {} {} . {} got {} more . now {} has {} {} .",
                p.name,
                NUMBERS[a],
                p.food,
                p.name,
                NUMBERS[b],
                p.name,
                NUMBERS[a + b],
                p.food
            ));
        }
        _ => {
            s.push(format!("{} visits {} in {} .", p.name, q.name, q.town));
            s.push(fact(q, r.below(7)));
            s.push(format!("{} gives {} some {} .", q.name, p.name, q.food));
        }
    }
    s.join(" ")
}

/// `n` documents from `seed` (the same seed gives the same text).
pub fn documents(n: usize, seed: u64) -> Vec<String> {
    let w = world();
    let mut r = Rng::new(seed);
    (0..n).map(|_| document(&w, &mut r)).collect()
}

/// Every word the documents can use.
pub fn words() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for list in [&NAMES[..], &TOWNS, &PETS, &PET_NAMES, &COLORS, &FOODS, &JOBS, &THINGS, &NUMBERS, &GLUE] {
        for &x in list {
            if !v.contains(&x) {
                v.push(x);
            }
        }
    }
    v
}

/// A word-level `tokenizer.json`: `<unk>` 0, `<s>` 1 (BOS, added by `encode(.., true)`), `</s>` 2,
/// then the words. Text splits at whitespace; decoding joins words with single spaces.
pub fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<unk>", "<s>", "</s>"].into_iter().chain(words()).enumerate() {
        vocab.insert(w.to_string(), json!(i));
    }
    let special = |id: u32, content: &str| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let v: Value = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    serde_json::to_string(&v).unwrap_or_default()
}

/// Vocabulary size of [`tokenizer_json`].
pub fn vocab_size() -> usize {
    3 + words().len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{encode, load_tokenizer};

    #[test]
    fn documents_are_seeded_and_fully_covered_by_the_tokenizer() {
        let docs = documents(200, 5);
        assert_eq!(docs, documents(200, 5));
        assert_ne!(docs, documents(200, 6));
        let tok = load_tokenizer(tokenizer_json().as_bytes()).unwrap();
        assert_eq!(tok.get_vocab_size(true), vocab_size());
        for d in &docs {
            let ids = encode(&tok, d).unwrap();
            assert!(!ids.contains(&0), "unknown word in {d:?}");
            assert_eq!(ids.len(), d.split_whitespace().count());
            assert_eq!(tok.decode(&ids, true).unwrap(), *d);
        }
        let with_bos = tok.encode("mia lives in oslo .", true).unwrap();
        assert_eq!(with_bos.get_ids()[0], 1);
    }

    #[test]
    fn facts_are_the_same_in_every_document() {
        // Whatever the seed, a person's town is one town.
        let w = world();
        for d in documents(300, 9) {
            for p in &w {
                let needle = format!("{} lives in ", p.name);
                if let Some(at) = d.find(&needle) {
                    assert!(d[at + needle.len()..].starts_with(p.town), "{d}");
                }
            }
        }
    }
}
