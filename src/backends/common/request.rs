//! A request checked and tokenized for a decode loop, the same way on every
//! backend: tokenize with the BOS rule, refuse an empty or too long prompt,
//! compile the output constraint, start the [`Decoder`].

use crate::backend::{FinishReason, Generation, GenerationRequest, LocalModel, Timings};
use crate::decode::Decoder;
use crate::{Error, Result};

/// A request checked and tokenized, ready for a decode loop.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The prompt's tokens.
    pub(crate) prompt: Vec<u32>,
    /// The reply's sampler, constraint and stops.
    pub(crate) decoder: Decoder,
    /// KV cells it may need: prompt plus reply budget, at most the context.
    pub(crate) cells: usize,
}

/// Checks and tokenizes `request` on `model` for a context of
/// `context_length` tokens and starts its decoder.
pub(crate) fn prepare(
    model: &dyn LocalModel,
    request: &GenerationRequest,
    context_length: usize,
) -> Result<Prepared> {
    let prompt = model.tokenize_prompt(&request.prompt)?;
    if prompt.len() >= context_length {
        return Err(Error::PromptTooLong {
            prompt_tokens: prompt.len(),
            context_length,
        });
    }
    let card = model.card();
    let matcher = match &request.constraint {
        Some(constraint) => Some(card.constraint_compiler()?.matcher(constraint)?),
        None => None,
    };
    let decoder = Decoder::new(request, matcher, card.end_of_generation().to_vec());
    // A budget the shortest valid reply does not fit would end unparsed.
    if let Some(needed) = decoder.shortest_reply_tokens()
        && needed > request.max_tokens
    {
        return Err(Error::BudgetTooSmall {
            max_tokens: request.max_tokens,
            needed,
        });
    }
    let cells = (prompt.len() + request.max_tokens + 1).min(context_length);
    Ok(Prepared {
        prompt,
        decoder,
        cells,
    })
}

/// The result of a request stopped before it read its prompt.
pub(crate) fn cancelled_before_start() -> Generation {
    Generation {
        text: String::new(),
        prompt_tokens: 0,
        cached_prompt_tokens: 0,
        completion_tokens: 0,
        finish_reason: FinishReason::Cancelled,
        timings: Timings::default(),
    }
}
