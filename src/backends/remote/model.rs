//! The model a fleet serves, as the client knows it: the GGUF file's header
//! and vocabulary (no weights), so that prompts are rendered with its chat
//! template and counted with its tokenizer before they are sent.

use std::path::Path;

use crate::Result;
use crate::backend::LocalModel;
use crate::gguf::GgufHeader;
use crate::model_card::ModelCard;
use crate::tokenizer::GgufTokenizer;

pub(super) const BACKEND: &str = "remote";

/// The served model's card and tokenizer.
#[derive(Debug)]
pub struct RemoteModel {
    card: ModelCard,
    tokenizer: GgufTokenizer,
}

impl RemoteModel {
    /// Reads the header of the file the engines serve (its weights are not
    /// read). `context_length` is the window prompts are checked against.
    pub(crate) fn open(path: &Path, context_length: Option<usize>) -> Result<Self> {
        let header = GgufHeader::read(path)?;
        let tokenizer = GgufTokenizer::from_header(&header)?;
        let card = ModelCard::new(BACKEND, &header, tokenizer.token_texts(), context_length)?;
        Ok(RemoteModel { card, tokenizer })
    }
}

impl RemoteModel {
    /// A rendered prompt as a serving engine, which tokenizes text and adds
    /// the model's BOS itself, must receive it.
    pub(crate) fn prompt_for_engine<'p>(&self, prompt: &'p str) -> &'p str {
        self.card
            .template()
            .without_printed_bos(prompt, self.tokenizer.adds_bos())
    }
}

impl LocalModel for RemoteModel {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.tokenizer.encode(text, add_bos)
    }
}
