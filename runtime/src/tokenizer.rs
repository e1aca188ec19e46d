//! Text to tokens and back, from the `tokenizer.json` embedded in the `.bd2` file.
//!
//! BOS is added here from the model's `bos_id`, not by the tokenizer's post-processor, so that
//! perplexity can encode without it and every tokenizer.json behaves the same.

use crate::error::{Result, RuntimeError};
use crate::model::Model;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: u32,
    eos_id: u32,
}

impl Tokenizer {
    /// Parse a `tokenizer.json`; `bos_id` and `eos_id` come from the model's config.
    pub fn from_bytes(json: &[u8], bos_id: u32, eos_id: u32) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| RuntimeError::Tokenizer(format!("cannot load tokenizer.json: {e}")))?;
        Ok(Self { inner, bos_id, eos_id })
    }

    pub fn from_model(model: &Model) -> Result<Self> {
        let c = model.config();
        Self::from_bytes(model.tokenizer_json(), c.bos_id, c.eos_id)
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Token ids of `text`, preceded by BOS when `bos` is set.
    pub fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| RuntimeError::Tokenizer(format!("cannot encode: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if bos {
            ids.push(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The vocabulary entry of `id` (`"<0xE2>"`, `"▁the"`), if the tokenizer has one.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Text of `ids`, special tokens (BOS, EOS) left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| RuntimeError::Tokenizer(format!("cannot decode: {e}")))
    }

    /// A streaming decoder that continues after `context` (usually the prompt), so the first new
    /// token's leading space is kept.
    pub fn stream(&self, context: &[u32]) -> StreamDecoder<'_> {
        StreamDecoder { tok: self, ids: context.to_vec(), prefix: 0, read: context.len() }
    }
}

/// Turns tokens into text as they arrive. Decoding one token alone is wrong twice over: decoders
/// strip or add spaces at the start of a text, and a character may be split across byte-fallback
/// tokens (`<0xE2><0x82><0xAC>` is "€"). So each step decodes a window that starts a little before
/// the new tokens, and emits only what the new tokens added, once it ends in a whole character.
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    ids: Vec<u32>,
    /// `ids[prefix..read]` is already emitted text that anchors the window.
    prefix: usize,
    /// `ids[read..]` is not emitted yet.
    read: usize,
}

impl StreamDecoder<'_> {
    /// Add one token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        self.emit(false)
    }

    /// Whatever is still held back (an incomplete character at the end of the stream).
    pub fn finish(&mut self) -> Result<Option<String>> {
        self.emit(true)
    }

    fn emit(&mut self, force: bool) -> Result<Option<String>> {
        let before = self.tok.decode(&self.ids[self.prefix..self.read])?;
        let after = self.tok.decode(&self.ids[self.prefix..])?;
        // An incomplete UTF-8 sequence decodes to U+FFFD: wait for the bytes that complete it.
        if after.len() <= before.len() || (!force && after.ends_with('\u{FFFD}')) {
            return Ok(None);
        }
        let new = match after.get(before.len()..) {
            Some(new) if after.starts_with(&before) => new.to_string(),
            // The window's text changed shape (a decoder rule that looks across tokens): emit the
            // new text as decoded on its own rather than something inconsistent.
            _ => self.tok.decode(&self.ids[self.read..])?,
        };
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(Some(new))
    }
}
