//! The crate's GGUF tokenizer, for tests and the trainer: built from a
//! GGUF header alone, it gives llama.cpp's token ids.

use crate::Result;
use crate::gguf::GgufHeader;
use crate::tokenizer::GgufTokenizer as Inner;

/// A GGUF vocabulary with llama.cpp's tokenization rules.
#[derive(Debug)]
pub struct GgufTokenizer(Inner);

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF header.
    pub fn from_header(header: &GgufHeader) -> Result<Self> {
        Inner::from_header(header).map(GgufTokenizer)
    }

    /// Tokenizes `text` with special-token parsing, adding BOS when `add_bos`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.0.encode(text, add_bos)
    }

    /// Bytes of every token as generated text (empty for special tokens).
    pub fn pieces(&self) -> &[Vec<u8>] {
        self.0.pieces()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.0.pieces().len()
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.0.bos()
    }

    /// The text of a token (as stored in the vocabulary).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.0.token_text(id)
    }
}
