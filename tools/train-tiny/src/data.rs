//! Training sequences: task examples rendered exactly as the adapters render
//! them (dspy-rs's `ChatAdapter` messages through the model's ChatML
//! template), tokenized by the crate's own tokenizer, with the tokens the
//! model must learn to write marked.

use anyhow::{Context, Result};
use dspy_rs::{Message, MetaSignature};
use dsrs_local::backends::candle::tokenizer::GgufTokenizer;
use dsrs_local::gguf::GgufHeader;
use dsrs_local::prompt::{ChatTemplate, format_chat};
use dsrs_local::testing::tasks::{TaskExample, TaskFamily, TaskStream};
use rand::Rng;

use crate::vocab::{END_OF_TURN, SPECIAL_TOKENS};

const ASSISTANT_TURN: &str = "<|im_start|>assistant\n";
const END_OF_TURN_TEXT: &str = "<|im_end|>";

/// One training sequence.
pub struct Sequence {
    /// Prompt tokens, then the reply's tokens and `<|im_end|>`.
    pub tokens: Vec<u32>,
    /// `targets[i]`: whether `tokens[i]` is written by the model (a reply
    /// token, in a demo or the final turn), so predicting it is trained.
    pub targets: Vec<bool>,
}

/// The prompt an adapter would send, and the reply the model should write.
pub fn prompt_and_reply(
    template: &ChatTemplate,
    example: &TaskExample,
) -> Result<(String, String)> {
    let chat = format_chat(&example.signature, &example.inputs)?;
    let prompt = template.render(&chat)?;
    // The reply in dspy-rs's own words: format the example as a demo and
    // take its assistant message.
    let mut as_demo = example.signature.clone();
    as_demo
        .set_demos(vec![example.as_demo()])
        .context("setting a demo")?;
    let demo_chat = format_chat(&as_demo, &example.inputs)?;
    let reply = demo_chat
        .messages
        .iter()
        .find_map(|message| match message {
            Message::Assistant { content } => Some(content.clone()),
            _ => None,
        })
        .context("the demo chat has no assistant message")?;
    Ok((prompt, reply))
}

/// Renders and tokenizes task examples.
pub struct Encoder {
    template: ChatTemplate,
    tokenizer: GgufTokenizer,
    /// Bytes each token stands for in the rendered text.
    token_lengths: Vec<usize>,
}

impl Encoder {
    /// An encoder for the vocabulary in the GGUF file at `vocab_path`.
    pub fn new(vocab_path: &std::path::Path) -> Result<Self> {
        let header = GgufHeader::read(vocab_path)?;
        let tokenizer = GgufTokenizer::from_header(&header)?;
        // As the backends build it from the file.
        let template = ChatTemplate::from_model(
            header.chat_template().map(str::to_string),
            tokenizer.bos_text().to_string(),
            END_OF_TURN_TEXT,
        )?;
        let mut token_lengths: Vec<usize> = tokenizer.pieces().iter().map(Vec::len).collect();
        for (id, special) in SPECIAL_TOKENS.iter().enumerate() {
            token_lengths[id] = special.len();
        }
        Ok(Encoder {
            template,
            tokenizer,
            token_lengths,
        })
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    /// The training sequence of one example.
    pub fn encode(&self, example: &TaskExample) -> Result<Sequence> {
        let (prompt, reply) = prompt_and_reply(&self.template, example)?;
        let mut tokens = self.tokenizer.encode(&prompt, false);
        let mut targets = self.demo_reply_tokens(&prompt, &tokens);
        // The final reply is tokenized on its own, as generation produces it.
        let reply_tokens = self.tokenizer.encode(&reply, false);
        targets.extend(std::iter::repeat_n(true, reply_tokens.len() + 1));
        tokens.extend(reply_tokens);
        tokens.push(END_OF_TURN);
        Ok(Sequence { tokens, targets })
    }

    /// Marks the prompt tokens that start inside a demo's assistant turn.
    fn demo_reply_tokens(&self, prompt: &str, tokens: &[u32]) -> Vec<bool> {
        let mut spans = Vec::new();
        let mut from = 0;
        while let Some(at) = prompt[from..].find(ASSISTANT_TURN) {
            let start = from + at + ASSISTANT_TURN.len();
            let end = prompt[start..]
                .find(END_OF_TURN_TEXT)
                .map_or(prompt.len(), |at| start + at + END_OF_TURN_TEXT.len());
            spans.push(start..end);
            from = end;
        }
        let mut offset = 0;
        tokens
            .iter()
            .map(|&token| {
                let start = offset;
                offset += self.token_lengths[token as usize];
                spans.iter().any(|span| span.contains(&start))
            })
            .collect()
    }
}

/// How often each family is drawn: arithmetic needs the most examples.
pub const FAMILY_WEIGHTS: [(TaskFamily, u32); 6] = [
    (TaskFamily::Arithmetic, 10),
    (TaskFamily::ReasonedArithmetic, 5),
    (TaskFamily::Capital, 4),
    (TaskFamily::Sentiment, 3),
    (TaskFamily::Parity, 2),
    (TaskFamily::Words, 4),
];

/// Draws a training example: a family by weight, zero to three demos.
pub fn draw_example(stream: &mut TaskStream, rng: &mut impl Rng) -> TaskExample {
    let total: u32 = FAMILY_WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut ticket = rng.random_range(0..total);
    let mut family = TaskFamily::Arithmetic;
    for (candidate, weight) in FAMILY_WEIGHTS {
        if ticket < weight {
            family = candidate;
            break;
        }
        ticket -= weight;
    }
    let demos = if rng.random_bool(0.5) {
        0
    } else {
        rng.random_range(1..=3)
    };
    stream.sample(family, demos)
}
