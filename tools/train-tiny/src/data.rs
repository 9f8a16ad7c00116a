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

use crate::vocab::{END_OF_TURN, SPECIAL_TOKENS, VALUE_END, VALUE_START};

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

    /// The tokens of `text` as their pieces, `|`-separated (for `--show`).
    pub fn pieces_of(&self, text: &str) -> String {
        self.tokenizer
            .encode(text, false)
            .iter()
            .map(|&id| String::from_utf8_lossy(&self.tokenizer.pieces()[id as usize]).into_owned())
            .collect::<Vec<_>>()
            .join("|")
    }

    /// The chat template the examples are rendered with.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
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

/// What training draws: how often each family (in [`TaskFamily::ALL`]
/// order) and up to how many demos.
#[derive(Debug, Clone)]
pub struct Mix {
    pub weights: [u32; 6],
    pub max_demos: usize,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            // arithmetic, capital, sentiment, parity, words, arithmetic (cot)
            weights: [4, 4, 3, 3, 6, 3],
            max_demos: 7,
        }
    }
}

impl Mix {
    /// Parses `10,4,3,2,4,5` (weights in [`TaskFamily::ALL`] order).
    pub fn parse_weights(&mut self, text: &str) -> Result<()> {
        let weights: Vec<u32> = text
            .split(',')
            .map(|w| w.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--mix: not six numbers: {text}"))?;
        self.weights = weights
            .try_into()
            .map_err(|_| anyhow::anyhow!("--mix needs six weights: {text}"))?;
        anyhow::ensure!(self.weights.iter().any(|&w| w > 0), "--mix: all zero");
        Ok(())
    }
}

/// Draws a training example: a family by weight, zero to `max_demos` demos
/// (every demo reply is trained too, so demos multiply the answers a
/// sequence teaches; the first demo's reply is the zero-demo case).
pub fn draw_example(stream: &mut TaskStream, rng: &mut impl Rng, mix: &Mix) -> TaskExample {
    let total: u32 = mix.weights.iter().sum();
    let mut ticket = rng.random_range(0..total.max(1));
    let mut family = TaskFamily::Arithmetic;
    for (candidate, weight) in TaskFamily::ALL.into_iter().zip(mix.weights) {
        if ticket < weight {
            family = candidate;
            break;
        }
        ticket -= weight;
    }
    let demos = rng.random_range(0..=mix.max_demos);
    stream.sample(family, demos)
}

/// The example with every string value (inputs, outputs, demos) wrapped in
/// [`VALUE_START`]/[`VALUE_END`], so that the vocabulary can tell the
/// prompt's fixed text from the values in it.
pub fn mark_values(example: &TaskExample) -> Result<TaskExample> {
    fn mark(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::String(text) => {
                serde_json::Value::String(format!("{VALUE_START}{text}{VALUE_END}"))
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(mark).collect())
            }
            other => other.clone(),
        }
    }
    let mark_example = |example: &dspy_rs::Example| {
        let mut marked = example.clone();
        for value in marked.data.values_mut() {
            *value = mark(value);
        }
        marked
    };
    let mut marked = example.clone();
    marked.inputs = mark_example(&example.inputs);
    for value in marked.outputs.values_mut() {
        *value = mark(value);
    }
    let demos = example.signature.demos().iter().map(mark_example).collect();
    marked.signature.set_demos(demos)?;
    Ok(marked)
}
