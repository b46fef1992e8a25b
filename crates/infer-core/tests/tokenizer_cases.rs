//! Checks `HfTokenizer` against `tests/fixtures/tokenizer_cases.json` (made with Hugging Face
//! transformers on the tiny-llama3 tokenizer): ids with and without BOS, token strings, and decoding
//! with and without special tokens.

use std::path::Path;

use infer_core::model::Tokenizer;
use infer_core::model::detokenizer::StreamDecoder;
use infer_core::model::tokenizer::HfTokenizer;
use serde::Deserialize;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/");

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    ids_with_bos: Vec<u32>,
    pieces: Vec<String>,
    decoded: String,
    decoded_skip_special: String,
}

fn load() -> (HfTokenizer, Vec<Case>) {
    let tok = HfTokenizer::from_file(&Path::new(FIXTURES).join("tiny-llama3/tokenizer.json")).unwrap();
    let json = std::fs::read_to_string(Path::new(FIXTURES).join("tokenizer_cases.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&json).unwrap();
    assert!(!cases.is_empty());
    (tok, cases)
}

/// Compares one field; returns a description of the mismatch instead of panicking at the first one.
fn check<T: PartialEq + std::fmt::Debug>(failures: &mut Vec<String>, text: &str, field: &str, got: T, want: T) {
    if got != want {
        failures.push(format!("{text:?} {field}:\n   got  {got:?}\n   want {want:?}"));
    }
}

#[test]
fn every_case_every_field() {
    let (tok, cases) = load();
    let mut failures = Vec::new();
    for c in &cases {
        let t = c.text.as_str();
        check(&mut failures, t, "ids", tok.encode_ids(t, false).unwrap(), c.ids.clone());
        check(&mut failures, t, "ids_with_bos", tok.encode_ids(t, true).unwrap(), c.ids_with_bos.clone());
        let seed: Vec<i32> = c.ids_with_bos.iter().map(|&id| id as i32).collect();
        check(&mut failures, t, "Tokenizer::encode", tok.encode(t).unwrap(), seed);
        check(&mut failures, t, "pieces", tok.pieces(t).unwrap(), c.pieces.clone());
        check(&mut failures, t, "decoded", tok.decode_ids(&c.ids, false).unwrap(), c.decoded.clone());
        check(
            &mut failures,
            t,
            "decoded_skip_special",
            tok.decode_ids(&c.ids, true).unwrap(),
            c.decoded_skip_special.clone(),
        );
        let seed_ids: Vec<i32> = c.ids.iter().map(|&id| id as i32).collect();
        check(&mut failures, t, "Tokenizer::decode", tok.decode(&seed_ids).unwrap(), c.decoded.clone());
        for (piece, &id) in c.pieces.iter().zip(&c.ids) {
            check(&mut failures, t, "token_to_id", tok.token_to_id(piece), Some(id));
            check(&mut failures, t, "id_to_token", tok.id_to_token(id), Some(piece.clone()));
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn streaming_every_case_matches_the_full_decode() {
    let (tok, cases) = load();
    for c in &cases {
        for skip in [false, true] {
            let mut dec = StreamDecoder::new(skip);
            let mut text = String::new();
            for &id in &c.ids {
                let delta = dec.push(&tok, id).unwrap();
                assert!(!delta.contains('\u{FFFD}'), "{:?}: delta {delta:?}", c.text);
                text.push_str(&delta);
            }
            text.push_str(&dec.finish(&tok).unwrap());
            let want = if skip { &c.decoded_skip_special } else { &c.decoded };
            assert_eq!(&text, want, "{:?} (skip_special_tokens={skip})", c.text);
        }
    }
}

#[test]
fn vocab_size_includes_added_tokens() {
    let (tok, _) = load();
    assert_eq!(tok.vocab_size(), 128256);
    assert_eq!(Tokenizer::vocab_size(&tok), 128256);
}
