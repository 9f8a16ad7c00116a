//! Training sequences: task examples rendered exactly as the adapters render
//! them (dspy-rs's `ChatAdapter` messages through the model's ChatML
//! template), tokenized by the crate's own tokenizer, with the tokens the
//! model must learn to write marked.

use anyhow::{Context, Result};
use dspy_rs::{Message, MetaSignature};
use dsrs_local::gguf::GgufHeader;
use dsrs_local::prompt::{ChatTemplate, Turn, format_chat};
use dsrs_local::testing::GgufTokenizer;
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
    /// Plain arithmetic only: each answer digit's index in `tokens`, with the
    /// probe's labels there (see `probe.rs`).
    pub probe_labels: Vec<(usize, [u32; PROBE_PLACES])>,
    /// Chain-of-thought arithmetic only: every digit its replies write
    /// (reasoning and answer), with the same labels as a plain reply of that
    /// sum would have.
    pub reasoning_probe_labels: Vec<(usize, [u32; PROBE_PLACES])>,
}

/// The probe's labels, each a digit units first or [`NO_DIGIT`]: the
/// answer's three places, then the first operand's two, then the second's.
pub const PROBE_PLACES: usize = 7;
/// The label of a place the answer does not have.
pub const NO_DIGIT: u32 = 10;

/// The prompt an adapter would send, and the reply the model should write.
/// A tool-family example is at one of its rounds: the prompt with the tools,
/// and the call; or that prompt, call and result, and the answer.
pub fn prompt_and_reply(
    template: &ChatTemplate,
    example: &TaskExample,
) -> Result<(String, String)> {
    let chat = format_chat(&example.signature, &example.inputs)?;
    let prompt = match &example.tool_round {
        None => template.render(&chat)?,
        Some(round) => {
            let mut turns = Turn::from_chat(&chat);
            if !round.answer_round {
                let prompt = template.render_conversation(&turns, &round.tools, true)?;
                let call = template.tool_support().format.call_text(&round.call);
                return Ok((prompt, call));
            }
            turns.push(Turn::calls("", vec![round.call.clone()]));
            turns.push(Turn::tool_result(&round.call, round.result.as_str()));
            template.render_conversation(&turns, &round.tools, true)?
        }
    };
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
    /// The digit each token is, if it is one (digits are never merged).
    digits: Vec<Option<u32>>,
    /// Whether each token's text ends in a letter (a digit after it is part
    /// of a name such as `i32`).
    letter_ended: Vec<bool>,
}

impl Encoder {
    /// An encoder for the vocabulary in the GGUF file at `vocab_path`.
    pub fn new(vocab_path: &std::path::Path) -> Result<Self> {
        let header = GgufHeader::read(vocab_path)?;
        let tokenizer = GgufTokenizer::from_header(&header)?;
        // As the backends build it from the file.
        let bos_text = tokenizer
            .bos()
            .and_then(|id| tokenizer.token_text(id))
            .unwrap_or("");
        let template = ChatTemplate::for_model(
            header.chat_template(),
            header.architecture().unwrap_or("llama"),
            bos_text,
            END_OF_TURN_TEXT,
        )?;
        let mut token_lengths: Vec<usize> = tokenizer.pieces().iter().map(Vec::len).collect();
        for (id, special) in SPECIAL_TOKENS.iter().enumerate() {
            token_lengths[id] = special.len();
        }
        let digits = tokenizer
            .pieces()
            .iter()
            .map(|piece| match piece.as_slice() {
                [byte @ b'0'..=b'9'] => Some(u32::from(byte - b'0')),
                _ => None,
            })
            .collect();
        let letter_ended = tokenizer
            .pieces()
            .iter()
            .map(|piece| piece.last().is_some_and(u8::is_ascii_alphabetic))
            .collect();
        Ok(Encoder {
            template,
            tokenizer,
            token_lengths,
            digits,
            letter_ended,
        })
    }

    /// The tokens of `text` as their pieces, `|`-separated (for `--show`).
    pub fn pieces_of(&self, text: &str) -> String {
        self.tokenizer
            .encode(text, false)
            .iter()
            .map(|&id| self.token_text(id))
            .collect::<Vec<_>>()
            .join("|")
    }

    /// The text of one token.
    pub fn token_text(&self, token: u32) -> String {
        String::from_utf8_lossy(&self.tokenizer.pieces()[token as usize]).into_owned()
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
        let (probe_labels, reasoning_probe_labels) = match example.family {
            TaskFamily::Arithmetic => (self.probe_labels(&tokens, &targets, false), Vec::new()),
            TaskFamily::ReasonedArithmetic => {
                (Vec::new(), self.probe_labels(&tokens, &targets, true))
            }
            _ => (Vec::new(), Vec::new()),
        };
        Ok(Sequence {
            tokens,
            targets,
            probe_labels,
            reasoning_probe_labels,
        })
    }

    /// The probe's labels at each digit of every arithmetic reply: a reply
    /// whose last number is the sum or difference of the last two numbers of
    /// the turn before it. A plain reply writes that one number; with
    /// `reasoning`, the reply may write others before it, and every digit it
    /// writes is probed.
    fn probe_labels(
        &self,
        tokens: &[u32],
        targets: &[bool],
        reasoning: bool,
    ) -> Vec<(usize, [u32; PROBE_PLACES])> {
        let mut found = Vec::new();
        let mut context_start = 0;
        let mut index = 0;
        while index < tokens.len() {
            if !targets[index] {
                index += 1;
                continue;
            }
            let reply_end = (index..tokens.len())
                .find(|&i| !targets[i])
                .unwrap_or(tokens.len());
            // The operands: the last two numbers before the reply that are
            // not part of a name (`i32`).
            let operands: Vec<_> = digit_runs(&self.digits, tokens, context_start..index)
                .into_iter()
                .filter(|run| run.start == 0 || !self.letter_ended[tokens[run.start - 1] as usize])
                .map(|run| self.digits_of(tokens, run))
                .collect();
            let replies = digit_runs(&self.digits, tokens, index..reply_end);
            let answer_run = match replies.as_slice() {
                [only] => Some(only),
                [.., last] if reasoning => Some(last),
                _ => None,
            };
            if let ([.., a, b], Some(answer_run)) = (operands.as_slice(), answer_run) {
                let answer = self.digits_of(tokens, answer_run.clone());
                let value =
                    |digits: &[u32]| digits.iter().fold(0i64, |v, &d| v * 10 + i64::from(d));
                let (a_value, b_value, answer_value) = (value(a), value(b), value(&answer));
                let consistent =
                    a_value + b_value == answer_value || a_value - b_value == answer_value;
                if consistent && a.len() <= 2 && b.len() <= 2 && answer.len() <= 3 {
                    let mut labels = [NO_DIGIT; PROBE_PLACES];
                    let places = [(&answer, 0, 3), (a, 3, 2), (b, 5, 2)];
                    for (digits, first, count) in places {
                        // Units first within each number.
                        for (slot, &digit) in labels[first..first + count]
                            .iter_mut()
                            .zip(digits.iter().rev())
                        {
                            *slot = digit;
                        }
                    }
                    found.extend(
                        replies
                            .iter()
                            .flat_map(|run| run.clone().map(|i| (i, labels))),
                    );
                }
            }
            context_start = reply_end;
            index = reply_end;
        }
        found
    }

    fn digits_of(&self, tokens: &[u32], run: std::ops::Range<usize>) -> Vec<u32> {
        run.filter_map(|i| self.digits[tokens[i] as usize])
            .collect()
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

/// The maximal runs of digit tokens within `span`.
fn digit_runs(
    digits: &[Option<u32>],
    tokens: &[u32],
    span: std::ops::Range<usize>,
) -> Vec<std::ops::Range<usize>> {
    let is_digit = |i: usize| digits[tokens[i] as usize].is_some();
    let mut runs = Vec::new();
    let mut at = span.start;
    while at < span.end {
        if is_digit(at) {
            let end = (at..span.end).find(|&i| !is_digit(i)).unwrap_or(span.end);
            runs.push(at..end);
            at = end;
        } else {
            at += 1;
        }
    }
    runs
}

/// What training draws: how often each family (in [`TaskFamily::ALL`]
/// order) and up to how many demos.
#[derive(Debug, Clone)]
pub struct Mix {
    pub weights: [u32; 7],
    pub max_demos: usize,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            // arithmetic, capital, sentiment, parity, words, arithmetic (cot),
            // tool lookup (taught in a second stage, `--init`: models/README.md)
            weights: [10, 1, 1, 1, 5, 4, 0],
            max_demos: 7,
        }
    }
}

impl Mix {
    /// Parses `10,4,3,2,4,5,6` (weights in [`TaskFamily::ALL`] order; six
    /// leave the tool family out).
    pub fn parse_weights(&mut self, text: &str) -> Result<()> {
        let mut weights: Vec<u32> = text
            .split(',')
            .map(|w| w.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--mix: not a list of numbers: {text}"))?;
        if weights.len() == 6 {
            weights.push(0);
        }
        self.weights = weights
            .try_into()
            .map_err(|_| anyhow::anyhow!("--mix needs six or seven weights: {text}"))?;
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
