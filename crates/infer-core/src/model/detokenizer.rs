//! Streaming detokenization: text deltas that never split a UTF-8 character.
//!
//! Byte-level BPE tokens (Llama 3) can hold part of a character: 🦀 is three tokens. Decoding each
//! token alone would give U+FFFD replacement characters, so [`StreamDecoder`] uses the technique of
//! Hugging Face text-generation-inference: it keeps a window `ids[prefix..]`, decodes
//! `ids[prefix..read]` (text already emitted) and `ids[prefix..]`, and emits the difference only when
//! the new text does not end with U+FFFD. The prefix tokens give the decoder the context it needs
//! (e.g. leading-space handling of SentencePiece decoders).

use crate::base::Result;
use crate::model::tokenizer::HfTokenizer;

const REPLACEMENT: char = '\u{FFFD}';

/// Turns a stream of token ids into a stream of complete UTF-8 text pieces.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    skip_special_tokens: bool,
    /// The tokens from the current prefix on (older ones are dropped).
    ids: Vec<u32>,
    /// `ids[..read]` has been emitted as text; `ids[read..]` has not.
    read: usize,
}

impl StreamDecoder {
    /// A decoder for one sequence; `skip_special_tokens` leaves tokens like `<|eot_id|>` out of the text.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self { skip_special_tokens, ids: Vec::new(), read: 0 }
    }

    /// Adds token `id` and returns the text it completes: possibly empty (when `id` ends inside a
    /// character), possibly more than one token's worth (when it completes one).
    pub fn push(&mut self, tok: &HfTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let (prefix_text, new_text) = self.decode_window(tok)?;
        if new_text.len() > prefix_text.len() && !new_text.ends_with(REPLACEMENT) {
            let delta = delta(&prefix_text, &new_text).to_string();
            // The emitted tokens become the next prefix.
            self.ids.drain(..self.read);
            self.read = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Returns whatever has not been emitted yet, even an incomplete character (as U+FFFD), and resets
    /// the decoder for a new sequence.
    pub fn finish(&mut self, tok: &HfTokenizer) -> Result<String> {
        let (prefix_text, new_text) = self.decode_window(tok)?;
        let rest =
            if new_text.len() > prefix_text.len() { delta(&prefix_text, &new_text).to_string() } else { String::new() };
        self.ids.clear();
        self.read = 0;
        Ok(rest)
    }

    /// Whether tokens are waiting for the rest of their character.
    pub fn has_pending(&self) -> bool {
        self.read < self.ids.len()
    }

    fn decode_window(&self, tok: &HfTokenizer) -> Result<(String, String)> {
        let prefix_text = tok.decode_ids(&self.ids[..self.read], self.skip_special_tokens)?;
        let new_text = tok.decode_ids(&self.ids, self.skip_special_tokens)?;
        Ok((prefix_text, new_text))
    }
}

/// The part of `new_text` after `prefix_text`. Normally `prefix_text` is a prefix of `new_text`; if the
/// decoder changed earlier text, the cut is at `prefix_text.len()` moved forward to a char boundary.
fn delta<'a>(prefix_text: &str, new_text: &'a str) -> &'a str {
    if let Some(rest) = new_text.strip_prefix(prefix_text) {
        return rest;
    }
    let mut cut = prefix_text.len().min(new_text.len());
    while !new_text.is_char_boundary(cut) {
        cut += 1;
    }
    &new_text[cut..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny() -> HfTokenizer {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-llama3/tokenizer.json"));
        HfTokenizer::from_file(path).unwrap()
    }

    /// Pushes the tokens of `text` one at a time; returns the deltas and the final flush.
    fn stream(tok: &HfTokenizer, ids: &[u32], skip: bool) -> (Vec<String>, String) {
        let mut dec = StreamDecoder::new(skip);
        let deltas = ids.iter().map(|&id| dec.push(tok, id).unwrap()).collect();
        let rest = dec.finish(tok).unwrap();
        assert!(!dec.has_pending());
        (deltas, rest)
    }

    #[test]
    fn deltas_concatenate_to_the_full_decode() {
        let tok = tiny();
        let texts = [
            "🦀 数字 naïve",
            "你好，世界！这是一个测试。",
            "🦀🔥👍🏽 emoji sequence",
            "Ελληνικά русский العربية हिन्दी",
            "mixed 日本語テキスト and 한국어 🎉🎉",
            "\u{200b}zero width and trailing space ",
            "plain ascii text, nothing special.",
        ];
        for text in texts {
            let ids = tok.encode_ids(text, false).unwrap();
            let (deltas, rest) = stream(&tok, &ids, false);
            assert_eq!(rest, "", "{text:?}: complete text leaves nothing to flush");
            for d in &deltas {
                assert!(!d.contains(REPLACEMENT), "{text:?}: delta {d:?} has U+FFFD");
            }
            assert_eq!(deltas.concat(), tok.decode_ids(&ids, false).unwrap(), "{text:?}");
            assert_eq!(deltas.concat(), text);
            // Multi-byte characters split over tokens give empty deltas, then the whole character.
            if text.starts_with('🦀') {
                assert_eq!(&deltas[..3], ["", "", "🦀"], "{ids:?}");
            }
        }
    }

    #[test]
    fn special_tokens_kept_or_skipped() {
        let tok = tiny();
        let ids = tok.encode_ids("<|start_header_id|>user<|end_header_id|>\n\nHi 🦀<|eot_id|>", false).unwrap();
        let (deltas, _) = stream(&tok, &ids, false);
        assert_eq!(deltas.concat(), "<|start_header_id|>user<|end_header_id|>\n\nHi 🦀<|eot_id|>");
        let (deltas, _) = stream(&tok, &ids, true);
        assert_eq!(deltas.concat(), "user\n\nHi 🦀");
    }

    #[test]
    fn finish_flushes_an_incomplete_character() {
        let tok = tiny();
        let ids = tok.encode_ids("ok 🦀", false).unwrap();
        let mut dec = StreamDecoder::new(false);
        let mut out = String::new();
        for &id in &ids[..ids.len() - 1] {
            out.push_str(&dec.push(&tok, id).unwrap());
        }
        assert_eq!(out, "ok");
        assert!(dec.has_pending());
        let rest = dec.finish(&tok).unwrap();
        assert!(rest.starts_with(' ') && rest.ends_with(REPLACEMENT), "{rest:?}");
        // The decoder is reset and usable again.
        assert_eq!(dec.push(&tok, ids[0]).unwrap(), "ok");
    }

    #[test]
    fn delta_falls_back_to_a_char_boundary() {
        assert_eq!(delta("ab", "abc"), "c");
        assert_eq!(delta("ab", "aé!"), "!");
        assert_eq!(delta("xyz", "ab"), "");
    }
}
