//! Token text without allocation: the bytes each token adds to a text, computed once at model load,
//! and a UTF-8 assembler that turns a stream of those bytes into whole characters.
//!
//! A decoder cannot be asked about one token alone: SentencePiece decoders strip the leading space
//! of a text's first token, and byte-fallback tokens (`<0xE2><0x82><0xAC>` is "€") are parts of
//! characters. So a token's piece is what it adds after a plain anchor token,
//! `decode([anchor, id]) - decode([anchor])`, and a byte-fallback token's piece is its byte.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// The bytes of every token id, in one buffer.
pub(crate) struct Pieces {
    bytes: Vec<u8>,
    /// `bytes[offsets[id]..offsets[id + 1]]` is token `id`'s piece.
    offsets: Vec<usize>,
    max_len: usize,
}

impl Pieces {
    /// The pieces of ids `0..vocab` (a model's vocabulary may be larger than its tokenizer's; ids
    /// the tokenizer does not know get an empty piece).
    pub fn new(tok: &Tokenizer, vocab: usize) -> Result<Self> {
        let decode = |ids: &[u32]| tok.decode(ids);
        let anchor = find_anchor(tok, vocab)?;
        // Byte tokens are raw bytes only if the decoder really treats them so (ByteFallback): check
        // it on the printable ASCII ones, whose single byte is a whole character.
        let mut byte_ids = Vec::new();
        for id in 0..vocab as u32 {
            if let Some(b) = tok.id_to_token(id).as_deref().and_then(byte_token) {
                byte_ids.push((id, b));
            }
        }
        let byte_fallback = !byte_ids.is_empty()
            && byte_ids.iter().filter(|(_, b)| b.is_ascii_alphanumeric()).all(|&(id, b)| match &anchor {
                Some((a, text)) => {
                    decode(&[*a, id]).is_ok_and(|t| t.strip_prefix(text.as_str()) == Some(&*(b as char).to_string()))
                }
                None => decode(&[id]).is_ok_and(|t| t == (b as char).to_string()),
            });
        let mut is_byte = vec![None; vocab];
        if byte_fallback {
            for &(id, b) in &byte_ids {
                is_byte[id as usize] = Some(b);
            }
        }

        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(vocab + 1);
        offsets.push(0);
        for id in 0..vocab as u32 {
            match is_byte[id as usize] {
                Some(b) => bytes.push(b),
                None => {
                    let piece = match &anchor {
                        Some((a, text)) => {
                            let both = decode(&[*a, id])?;
                            match both.strip_prefix(text.as_str()) {
                                Some(rest) => rest.to_string(),
                                // A decoder rule that rewrites across tokens: the token alone is the
                                // best answer left.
                                None => decode(&[id])?,
                            }
                        }
                        None => decode(&[id])?,
                    };
                    bytes.extend_from_slice(piece.as_bytes());
                }
            }
            offsets.push(bytes.len());
        }
        let max_len = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        Ok(Self { bytes, offsets, max_len })
    }

    /// Token `id`'s piece (empty for ids out of range).
    pub fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        if id + 1 >= self.offsets.len() {
            return &[];
        }
        &self.bytes[self.offsets[id]..self.offsets[id + 1]]
    }

    /// The longest piece, in bytes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

/// `<0xHH>` (exactly the spelling the ByteFallback decoder recognizes) -> the byte.
fn byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A token whose text is one ASCII letter or digit, alone and when repeated: what it adds is then
/// certain, and a second token after it decodes as it would in the middle of a text.
fn find_anchor(tok: &Tokenizer, vocab: usize) -> Result<Option<(u32, String)>> {
    for id in 0..vocab as u32 {
        if tok.id_to_token(id).as_deref().is_some_and(|s| byte_token(s).is_some()) {
            continue;
        }
        let text = tok.decode(&[id])?;
        let mut chars = text.chars();
        if matches!((chars.next(), chars.next()), (Some(c), None) if c.is_ascii_alphanumeric())
            && tok.decode(&[id, id])? == text.repeat(2)
        {
            return Ok(Some((id, text)));
        }
    }
    Ok(None)
}

/// U+FFFD, what invalid UTF-8 becomes (as with `String::from_utf8_lossy`).
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Assembles UTF-8 text from byte pieces: whole characters go out at once, the start of an
/// incomplete one waits for the next piece, and invalid bytes become U+FFFD. The output over a whole
/// stream equals `String::from_utf8_lossy` of all its bytes.
pub(crate) struct Utf8Stream {
    /// Bytes not yet emitted: at most the 3 first bytes of a character after each push.
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// For pieces of up to `max_piece` bytes: no push then allocates.
    pub fn new(max_piece: usize) -> Self {
        Self { pending: Vec::with_capacity(max_piece + 4) }
    }

    /// Bytes `push` may append to its output for one piece of `max_piece` bytes, at most.
    pub fn max_output(max_piece: usize) -> usize {
        // Every byte (a pending one included) becomes at most one 3-byte U+FFFD.
        3 * (max_piece + 4)
    }

    /// Add `piece`; append the text it completes to `out` (and with `finish`, the rest as well).
    pub fn push(&mut self, piece: &[u8], finish: bool, out: &mut Vec<u8>) {
        self.pending.extend_from_slice(piece);
        let mut at = 0;
        loop {
            match std::str::from_utf8(&self.pending[at..]) {
                Ok(s) => {
                    out.extend_from_slice(s.as_bytes());
                    at = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.extend_from_slice(&self.pending[at..at + valid]);
                    match e.error_len() {
                        Some(bad) => {
                            out.extend_from_slice(REPLACEMENT);
                            at += valid + bad;
                        }
                        // The start of a character: keep it for the next piece.
                        None => {
                            at += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..at);
        if finish {
            self.finish(out);
        }
    }

    /// End of the stream: an incomplete character becomes one U+FFFD.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            out.extend_from_slice(REPLACEMENT);
            self.pending.clear();
        }
    }

    /// Forget pending bytes.
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bd_formats::hf::fixture::{tiny_tokenizer_json, TINY_VOCAB};

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_bytes(tiny_tokenizer_json().as_bytes(), 1, 2).unwrap()
    }

    fn stream(pieces: &Pieces, ids: &[u32]) -> String {
        let mut s = Utf8Stream::new(pieces.max_len());
        let mut out = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            s.push(pieces.get(id), i + 1 == ids.len(), &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn streamed_pieces_equal_the_decoded_text_after_a_prompt() {
        let tok = tokenizer();
        let pieces = Pieces::new(&tok, TINY_VOCAB).unwrap();
        assert_eq!(pieces.get(3 + b'A' as u32), b"A", "byte tokens are their byte");
        for prompt in ["the", "Once upon", "ü"] {
            for text in ["Zürich €", " the end", "hello world", "a  b\n\tc", "€€ üü", "x", " ", "日本"] {
                let p = tok.encode(prompt, true).unwrap();
                let ids = tok.encode(text, false).unwrap();
                let all: Vec<u32> = p.iter().chain(&ids).copied().collect();
                let whole = tok.decode(&all).unwrap();
                let before = tok.decode(&p).unwrap();
                let expected = whole.strip_prefix(before.as_str()).unwrap();
                assert_eq!(stream(&pieces, &ids), expected, "{prompt:?} + {text:?} ({ids:?})");
            }
        }
    }

    #[test]
    fn special_tokens_have_empty_pieces_and_out_of_range_ids_too() {
        let tok = tokenizer();
        let pieces = Pieces::new(&tok, TINY_VOCAB + 5).unwrap();
        assert_eq!(pieces.get(1), b"");
        assert_eq!(pieces.get(2), b"");
        assert_eq!(pieces.get(TINY_VOCAB as u32 + 2), b"");
        assert_eq!(pieces.get(u32::MAX), b"");
    }

    #[test]
    fn utf8_stream_equals_lossy_decoding_of_the_whole() {
        // Deterministic pseudo-random byte soup, cut into pieces of 0..4 bytes.
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let alphabet = [b'a', b' ', 0xC3, 0xBC, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0xFF, 0x80, 0xED, 0xA0];
        for _ in 0..2000 {
            let len = (next() % 24) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let mut st = Utf8Stream::new(4);
            let mut out = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let n = ((next() % 4) as usize).min(bytes.len() - at);
                st.push(&bytes[at..at + n], false, &mut out);
                // Everything emitted so far is whole characters.
                assert!(std::str::from_utf8(&out).is_ok());
                at += n;
            }
            st.finish(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8_lossy(&bytes), "{bytes:02x?}");
        }
    }

    #[test]
    fn a_character_split_over_byte_tokens_comes_out_whole() {
        let mut st = Utf8Stream::new(1);
        let mut out = Vec::new();
        st.push(&[0xE2], false, &mut out);
        st.push(&[0x82], false, &mut out);
        assert!(out.is_empty());
        st.push(&[0xAC], false, &mut out);
        assert_eq!(out, "€".as_bytes());
        out.clear();
        st.push(&[0xE2, 0x82], true, &mut out);
        assert_eq!(out, "\u{FFFD}".as_bytes());
    }
}
