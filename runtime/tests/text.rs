//! The tokenizer embedded in a `.bd2`, and streaming detokenization across byte-fallback tokens.

mod common;

use bd_formats::hf::fixture::{tiny_tokenizer_json, TinySpec};
use bd_runtime::{Model, ReadOptions, Tokenizer};

fn tokenizer() -> Tokenizer {
    Tokenizer::from_bytes(tiny_tokenizer_json().as_bytes(), 1, 2).unwrap()
}

/// Byte-fallback ids of the fixture tokenizer: `<0xNN>` is `3 + NN`.
fn byte(b: u8) -> u32 {
    3 + b as u32
}

#[test]
fn encode_adds_bos_only_when_asked() {
    let t = tokenizer();
    let with = t.encode("the end", true).unwrap();
    let without = t.encode("the end", false).unwrap();
    assert_eq!(with[0], 1);
    assert_eq!(&with[1..], &without[..]);
    assert!(!without.contains(&1));
    assert_eq!(t.decode(&with).unwrap(), "the end");
}

#[test]
fn streaming_waits_for_whole_characters_split_across_byte_tokens() {
    let t = tokenizer();
    let text = "Zürich €";
    let ids = t.encode(text, false).unwrap();
    // ü is two byte tokens and € three: the fixture has no other tokens for them.
    let euro = [byte(0xE2), byte(0x82), byte(0xAC)];
    assert!(ids.windows(3).any(|w| w == euro), "{ids:?}");
    assert!(ids.windows(2).any(|w| w == [byte(0xC3), byte(0xBC)]), "{ids:?}");

    let mut stream = t.stream(&[]);
    let mut out = String::new();
    for (i, &id) in ids.iter().enumerate() {
        let piece = stream.push(id).unwrap();
        if let Some(p) = &piece {
            assert!(!p.contains('\u{FFFD}'), "token {i} emitted a broken character: {p:?}");
            out.push_str(p);
        }
        // Nothing may come out in the middle of a multi-byte character.
        if id == byte(0xE2) || id == byte(0x82) || id == byte(0xC3) {
            assert_eq!(piece, None, "token {i} ({id}) is the start of a character");
        }
    }
    if let Some(rest) = stream.finish().unwrap() {
        out.push_str(&rest);
    }
    assert_eq!(out, text);
    assert_eq!(t.decode(&ids).unwrap(), text);
}

#[test]
fn streaming_after_a_prompt_keeps_the_first_space() {
    let t = tokenizer();
    let prompt = t.encode("the", true).unwrap();
    let cont = t.encode("the the ä", false).unwrap();
    let mut stream = t.stream(&prompt);
    let mut out = String::new();
    for &id in &cont {
        if let Some(p) = stream.push(id).unwrap() {
            out.push_str(&p);
        }
    }
    if let Some(rest) = stream.finish().unwrap() {
        out.push_str(&rest);
    }
    // Prompt + continuation reads as one text: "the" + " the the ä".
    assert_eq!(out, " the the ä");
}

#[test]
fn an_incomplete_character_at_the_end_is_flushed_by_finish() {
    let t = tokenizer();
    let mut stream = t.stream(&[]);
    assert_eq!(stream.push(byte(b'a')).unwrap().as_deref(), Some("a"));
    assert_eq!(stream.push(byte(0xE2)).unwrap(), None);
    assert_eq!(stream.finish().unwrap().as_deref(), Some("\u{FFFD}"));
}

#[test]
fn the_tokenizer_comes_from_the_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_f32_model(dir.path(), &TinySpec::default());
    let model = Model::open(&path, ReadOptions::default()).unwrap();
    let t = Tokenizer::from_model(&model).unwrap();
    assert_eq!((t.bos_id(), t.eos_id()), (1, 2));
    assert_eq!(t.encode("hello", true).unwrap(), tokenizer().encode("hello", true).unwrap());
    assert!(Tokenizer::from_bytes(b"{not json", 1, 2).is_err());
}
