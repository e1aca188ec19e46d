//! Calibration data: both file formats, the recipe, the seed, and clear errors.

use bd_formats::hf::fixture::tiny_tokenizer_json;
use bd_trainer::data::{calibration_blocks, encode, load_tokenizer, read_documents, split_paragraphs, CalibOptions};

#[test]
fn text_documents_are_paragraphs_and_jsonl_documents_are_lines() {
    assert_eq!(split_paragraphs("a b\nc\n\n \n\nd\n"), vec!["a b\nc".to_string(), "d".to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("c.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"one\\n\\ntwo\", \"id\": 1}\n\n{\"text\": \"three\"}\n").unwrap();
    assert_eq!(read_documents(&jsonl).unwrap(), vec!["one\n\ntwo".to_string(), "three".to_string()]);
    std::fs::write(&jsonl, "{\"text\": \"one\"}\n{\"body\": \"two\"}\n").unwrap();
    let err = format!("{:#}", read_documents(&jsonl).unwrap_err());
    assert!(err.contains("line 2") && err.contains("\"text\""), "{err}");
    let err = format!("{:#}", read_documents(&dir.path().join("missing.txt")).unwrap_err());
    assert!(err.contains("cannot read calibration file") && err.contains("missing.txt"), "{err}");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    assert!(format!("{:#}", read_documents(&empty).unwrap_err()).contains("no documents"));
}

#[test]
fn blocks_follow_the_recipe_and_the_seed() {
    let tok = load_tokenizer(tiny_tokenizer_json().as_bytes()).unwrap();
    let docs: Vec<String> = (0..40).map(|i| format!("the hello world number {i} on the wall")).collect();
    let long = "the ".repeat(200);
    let mut with_long = docs.clone();
    with_long.push(long.clone());
    let opts = CalibOptions { docs: 30, max_doc_tokens: 64, block_len: 50, blocks: None, seed: 5 };
    let (blocks, stats) = calibration_blocks(&tok, 1, &with_long, &opts).unwrap();
    assert_eq!(stats.docs_used, 30);
    assert!(stats.docs_skipped <= 1);
    assert!(encode(&tok, &long).unwrap().len() + 1 > 64, "the long document must be over the limit");
    assert_eq!(blocks.len(), stats.tokens / 50);
    assert!(blocks.iter().all(|b| b.len() == 50));
    // Every document starts with BOS, so the first block does.
    assert_eq!(blocks[0][0], 1);
    let bos = blocks.iter().flatten().filter(|&&t| t == 1).count();
    assert!((25..=30).contains(&bos));
    // Same seed, same blocks; another seed, another order.
    assert_eq!(calibration_blocks(&tok, 1, &with_long, &opts).unwrap().0, blocks);
    assert_ne!(calibration_blocks(&tok, 1, &with_long, &CalibOptions { seed: 6, ..opts.clone() }).unwrap().0, blocks);
    let (two, _) = calibration_blocks(&tok, 1, &docs, &CalibOptions { blocks: Some(2), ..opts.clone() }).unwrap();
    assert_eq!(two.len(), 2);
    let err =
        format!("{:#}", calibration_blocks(&tok, 1, &docs, &CalibOptions { blocks: Some(1000), ..opts.clone() }).unwrap_err());
    assert!(err.contains("--calib-docs"), "{err}");
}
