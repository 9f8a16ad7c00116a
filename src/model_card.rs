//! What every loaded model knows about itself, whichever engine runs it —
//! file, architecture, chat template, token texts, end tokens, default
//! context, the grammar compiler for its vocabulary — and the BOS rule that
//! turns a rendered prompt into tokens. One copy for every backend.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::gguf::GgufHeader;
use crate::prompt::{ChatTemplate, ConstraintCompiler, TokenVocabulary};
use crate::{Error, Result};

/// Context length used when the load sets none and the model's trained
/// context is longer (or unknown).
pub(crate) const DEFAULT_CONTEXT_CAP: usize = 4096;

/// A vocabulary as a backend describes it to the card.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenTexts {
    /// Bytes of each token as it appears in generated text (empty for
    /// special tokens).
    pub(crate) pieces: Vec<Vec<u8>>,
    /// The names of special tokens that have no text (`<|im_end|>`), by id.
    pub(crate) special_names: Vec<(u32, Vec<u8>)>,
    /// Tokens that end generation.
    pub(crate) end_of_generation: Vec<u32>,
    /// The beginning-of-sequence token, if the vocabulary has one.
    pub(crate) bos: Option<u32>,
    /// Whether the model wants a BOS token in front of a prompt.
    pub(crate) adds_bos: bool,
    /// The texts of the BOS and EOS tokens that chat templates print.
    pub(crate) bos_text: String,
    /// See `bos_text`.
    pub(crate) eos_text: String,
}

/// A loaded model's facts, the same for every backend: read them through
/// [`LocalModel::card`](crate::backend::LocalModel::card).
#[derive(Debug)]
pub struct ModelCard {
    backend: &'static str,
    path: PathBuf,
    architecture: String,
    template: ChatTemplate,
    tokens: TokenTexts,
    /// The trained context, when the file names one.
    trained_context: Option<usize>,
    default_context: usize,
    constraint: OnceLock<Result<ConstraintCompiler>>,
}

impl ModelCard {
    /// The card of the model in `header`'s file. `context_length` is the
    /// load's wish for adapters' default context.
    pub(crate) fn new(
        backend: &'static str,
        header: &GgufHeader,
        tokens: TokenTexts,
        context_length: Option<usize>,
    ) -> Result<Self> {
        let architecture = header.architecture().unwrap_or("unknown").to_string();
        let template = ChatTemplate::for_model(
            header.chat_template(),
            &architecture,
            &tokens.bos_text,
            &tokens.eos_text,
        )?;
        let trained_context = header
            .arch_u64("context_length")
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0);
        let default_context = context_length
            .unwrap_or_else(|| {
                trained_context.map_or(DEFAULT_CONTEXT_CAP, |t| t.min(DEFAULT_CONTEXT_CAP))
            })
            .max(1);
        Ok(ModelCard {
            backend,
            path: header.path.clone(),
            architecture,
            template,
            tokens,
            trained_context,
            default_context,
            constraint: OnceLock::new(),
        })
    }

    /// The backend that loaded it (`"llama.cpp"`, `"candle"`).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture` of the file.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The chat template prompts are rendered with.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The context length the model was trained with, if the file says.
    pub fn trained_context(&self) -> Option<usize> {
        self.trained_context
    }

    /// The context length adapters use unless configured otherwise (the
    /// load's, else the trained length, at most 4096).
    pub fn default_context(&self) -> usize {
        self.default_context
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.pieces.len()
    }

    /// Tokens that end generation.
    pub fn end_of_generation(&self) -> &[u32] {
        &self.tokens.end_of_generation
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.tokens.bos
    }

    /// The bytes of a token as it appears in generated text.
    pub(crate) fn token_bytes(&self, token: u32) -> &[u8] {
        self.tokens
            .pieces
            .get(token as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// Tokenizes a rendered prompt with `encode(text, add_bos)`: a BOS is
    /// added only when the model wants one and the template did not print
    /// it. An empty or white-space prompt is refused before the tokenizer
    /// sees it.
    pub(crate) fn tokenize_prompt(
        &self,
        prompt: &str,
        encode: impl FnOnce(&str, bool) -> Result<Vec<u32>>,
    ) -> Result<Vec<u32>> {
        if prompt.trim().is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let tokens = encode(
            prompt,
            self.template.needs_bos(prompt, self.tokens.adds_bos),
        )?;
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        Ok(tokens)
    }

    /// The grammar compiler for this vocabulary (indexed once, on first use).
    pub(crate) fn constraint_compiler(&self) -> Result<&ConstraintCompiler> {
        self.constraint
            .get_or_init(|| ConstraintCompiler::new(&self.constraint_vocabulary()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Token bytes for the grammar engine: special tokens carry the 0xFF
    /// marker before their name, so that no grammar can produce them as text.
    fn constraint_vocabulary(&self) -> TokenVocabulary {
        let mut tokens = self.tokens.pieces.clone();
        for (id, name) in &self.tokens.special_names {
            if let Some(slot) = tokens.get_mut(*id as usize)
                && slot.is_empty()
                && !name.is_empty()
            {
                slot.push(0xFF);
                slot.extend_from_slice(name);
            }
        }
        TokenVocabulary {
            tokens,
            end_of_generation: self.tokens.end_of_generation.clone(),
        }
    }
}
