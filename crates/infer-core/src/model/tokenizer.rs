//! Tokenizer: `tokenizer.json` through the `tokenizers` crate.
//!
//! [`HfTokenizer`] behaves like Hugging Face's `PreTrainedTokenizerFast`: special tokens written in the
//! text (`<|eot_id|>`) are matched as single tokens, `add_special_tokens` runs the tokenizer's
//! post-processor (for Llama 3 this prepends `<|begin_of_text|>`), and truncation/padding are off.

use std::path::{Path, PathBuf};

use crate::base::{Error, Result};

/// The seed's tokenizer interface (ids as i32).
pub trait Tokenizer {
    /// Encodes `text`, adding the special tokens of the post-processor (BOS for Llama 3).
    fn encode(&self, text: &str) -> Result<Vec<i32>>;
    /// Decodes `ids`, keeping special tokens in the text.
    fn decode(&self, ids: &[i32]) -> Result<String>;
    /// Number of ids, added tokens included.
    fn vocab_size(&self) -> usize;
}

/// A Hugging Face tokenizer loaded from a `tokenizer.json`.
#[derive(Clone)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it was loaded from (for error messages); `<memory>` when built from bytes.
    path: PathBuf,
    /// `get_vocab_size(true)` builds a hash map of the whole vocabulary, so it is computed once.
    vocab_size: usize,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer").field("path", &self.path).field("vocab_size", &self.vocab_size).finish()
    }
}

impl HfTokenizer {
    /// Loads a `tokenizer.json`. Errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes_named(&bytes, path.to_path_buf())
    }

    /// Builds a tokenizer from the contents of a `tokenizer.json`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_named(bytes, PathBuf::from("<memory>"))
    }

    /// Builds a tokenizer from the contents of a `tokenizer.json`; `path` names its origin in errors.
    pub(crate) fn from_bytes_named(bytes: &[u8], path: PathBuf) -> Result<Self> {
        let fail = |e: tokenizers::Error| Error::Tokenizer(format!("{}: {e}", path.display()));
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(fail)?;
        // Like transformers: never truncate or pad unless asked to.
        inner.with_truncation(None).map_err(fail)?;
        inner.with_padding(None);
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self { inner, path, vocab_size })
    }

    /// The file this tokenizer was loaded from (`<memory>` if built from bytes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes `text`; `fast` skips offsets and token strings (only the ids are needed).
    fn encoding(&self, text: &str, add_special_tokens: bool, fast: bool) -> Result<tokenizers::Encoding> {
        let encoding = if fast {
            self.inner.encode_fast(text, add_special_tokens)
        } else {
            self.inner.encode(text, add_special_tokens)
        };
        encoding.map_err(|e| Error::Tokenizer(format!("{}: cannot encode {text:?}: {e}", self.path.display())))
    }

    /// Token ids of `text`; with `add_special_tokens` the post-processor adds its tokens (BOS for Llama 3).
    pub fn encode_ids(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.encoding(text, add_special_tokens, true)?.get_ids().to_vec())
    }

    /// Text of `ids`. Ids that are not in the vocabulary are ignored, as Hugging Face does.
    pub fn decode_ids(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("{}: cannot decode {} ids: {e}", self.path.display(), ids.len())))
    }

    /// The id of token string `token` (e.g. `"<|eot_id|>"`), if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of `id` (byte-level form, e.g. `"Ġworld"`), if `id` is in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of distinct tokens, added tokens included (128256 for Llama 3).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The token strings of `text`, without special tokens added (`["Hello", "Ġworld"]`).
    pub fn pieces(&self, text: &str) -> Result<Vec<String>> {
        Ok(self.encoding(text, false, false)?.get_tokens().to_vec())
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<i32>> {
        self.encode_ids(text, true)?
            .into_iter()
            .map(|id| i32::try_from(id).map_err(|_| Error::Tokenizer(format!("token id {id} does not fit in an i32"))))
            .collect()
    }

    fn decode(&self, ids: &[i32]) -> Result<String> {
        let ids = ids
            .iter()
            .map(|&id| u32::try_from(id).map_err(|_| Error::InvalidArgument(format!("negative token id {id}"))))
            .collect::<Result<Vec<u32>>>()?;
        self.decode_ids(&ids, false)
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> HfTokenizer {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-llama3/tokenizer.json"));
        HfTokenizer::from_file(path).unwrap()
    }

    #[test]
    fn encode_adds_bos_once() {
        let tok = tiny();
        assert_eq!(tok.encode_ids("Hello world", false).unwrap(), [9906, 1917]);
        assert_eq!(tok.encode_ids("Hello world", true).unwrap(), [128000, 9906, 1917]);
        assert_eq!(Tokenizer::encode(&tok, "Hello world").unwrap(), [128000, 9906, 1917]);
    }

    #[test]
    fn decode_keeps_or_skips_special_tokens() {
        let tok = tiny();
        let ids = [128000, 64, 128009, 65];
        assert_eq!(tok.decode_ids(&ids, false).unwrap(), "<|begin_of_text|>a<|eot_id|>b");
        assert_eq!(tok.decode_ids(&ids, true).unwrap(), "ab");
        assert_eq!(Tokenizer::decode(&tok, &[128000, 64]).unwrap(), "<|begin_of_text|>a");
        assert!(Tokenizer::decode(&tok, &[-1]).is_err());
    }

    #[test]
    fn vocabulary_lookups() {
        let tok = tiny();
        assert_eq!(tok.vocab_size(), 128256);
        assert_eq!(Tokenizer::vocab_size(&tok), 128256);
        assert_eq!(tok.token_to_id("<|eot_id|>"), Some(128009));
        assert_eq!(tok.token_to_id("<|begin_of_text|>"), Some(128000));
        assert_eq!(tok.id_to_token(1917).as_deref(), Some("Ġworld"));
        assert_eq!(tok.id_to_token(u32::MAX), None);
        assert_eq!(tok.token_to_id("definitely not a token"), None);
    }

    #[test]
    fn pieces_have_no_special_tokens_added() {
        let tok = tiny();
        assert_eq!(tok.pieces("Hello world").unwrap(), ["Hello", "Ġworld"]);
        assert!(tok.pieces("").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_file() {
        let missing = Path::new("/nonexistent/dir/tokenizer.json");
        let err = HfTokenizer::from_file(missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/dir/tokenizer.json"), "{err}");

        let dir = std::env::temp_dir().join(format!("infer-core-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("tokenizer.json");
        std::fs::write(&bad, b"{ not json").unwrap();
        let err = HfTokenizer::from_file(&bad).unwrap_err();
        assert!(matches!(err, Error::Tokenizer(_)), "{err:?}");
        assert!(err.to_string().contains(&bad.display().to_string()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
