//! What happens between two forward passes, the same for every backend:
//! mask the logits with the output constraint, sample, and decide whether the
//! reply has ended (end-of-generation token, completed marker, stop string,
//! grammar complete, token budget).
//!
//! A backend's decode loop is then: evaluate → [`Decoder::next_token`] →
//! [`Decoder::push`] → evaluate the new token, until `push` returns a
//! [`FinishReason`].

mod closing;
mod sampler;

pub(crate) use sampler::Sampler;

use std::time::{Duration, Instant};

use closing::Closer;

use crate::backend::{FinishReason, Generation, GenerationControl, GenerationRequest, Timings};
use crate::prompt::{COMPLETED_MARKER, ConstraintMatcher};
use crate::{Error, Result};

/// The state of one reply being generated.
#[derive(Debug)]
pub(crate) struct Decoder {
    sampler: Sampler,
    constraint: Option<ConstraintMatcher>,
    end_of_generation: Vec<u32>,
    stop: Vec<String>,
    max_tokens: usize,
    bytes: Vec<u8>,
    generated: usize,
    /// Time spent in `next_token` and the constraint's advance.
    token_choice: Duration,
    control: GenerationControl,
    /// Bytes of the reply already sent to the caller's stream.
    streamed: usize,
    /// Ends a constrained reply in time (with the constraint).
    closer: Option<Closer>,
}

impl Decoder {
    /// Starts a reply for `request`; `constraint` is the request's grammar
    /// compiled for this model, and `end_of_generation` the model's end tokens.
    pub(crate) fn new(
        request: &GenerationRequest,
        constraint: Option<ConstraintMatcher>,
        end_of_generation: Vec<u32>,
    ) -> Self {
        Decoder {
            sampler: Sampler::new(request.sampling.clone()),
            constraint,
            end_of_generation,
            stop: request.stop.clone(),
            max_tokens: request.max_tokens,
            bytes: Vec::new(),
            generated: 0,
            token_choice: Duration::ZERO,
            control: request.control.clone(),
            streamed: 0,
            closer: request
                .constraint
                .as_ref()
                .map(|c| Closer::new(c.closing().clone(), c.tool_closing().cloned())),
        }
    }

    /// Tokens of the shortest reply the constraint accepts, when the reply
    /// is constrained and closing knows its shape.
    pub(crate) fn shortest_reply_tokens(&self) -> Option<usize> {
        let (closer, matcher) = (self.closer.as_ref()?, self.constraint.as_ref()?);
        closer.shortest_reply_tokens(matcher)
    }

    /// Whether the caller has stopped this reply (backends check it between
    /// steps that sample nothing, such as prefill chunks).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.control.is_cancelled()
    }

    /// Chooses the next token from the model's logits for the last position.
    /// The logits may be masked in place.
    ///
    /// Greedy and constrained, the most likely token is checked against the
    /// grammar first; only when the grammar refuses it is the whole mask
    /// computed (the mask's cost grows with the vocabulary; one check does
    /// not). The token is the same either way: the first highest logit of
    /// all, when allowed, is also the first highest of the allowed ones.
    pub(crate) fn next_token(&mut self, logits: &mut [f32]) -> Result<u32> {
        let started = Instant::now();
        if let Some(constraint) = &mut self.constraint {
            if self.sampler.is_greedy()
                && let Some(best) = sampler::argmax(logits)
                && constraint.allows(best)
            {
                self.token_choice += started.elapsed();
                return Ok(best);
            }
            constraint.mask_logits(logits)?;
        }
        let token = self.sampler.sample(logits);
        self.token_choice += started.elapsed();
        token.ok_or_else(|| {
            Error::constraint("no token is allowed next (all logits masked or not finite)")
        })
    }

    /// Records a sampled token and its text. Returns why the reply ended, or
    /// `None` to go on.
    pub(crate) fn push(&mut self, token: u32, piece: &[u8]) -> Result<Option<FinishReason>> {
        if self.control.is_cancelled() {
            return Ok(Some(FinishReason::Cancelled));
        }
        if self.end_of_generation.contains(&token) {
            return Ok(Some(FinishReason::Stop));
        }
        self.generated += 1;
        self.bytes.extend_from_slice(piece);
        if let Some(constraint) = &mut self.constraint {
            let started = Instant::now();
            let accepted = constraint.accept(token);
            self.token_choice += started.elapsed();
            accepted?;
            if constraint.is_complete() {
                return Ok(Some(FinishReason::Constraint));
            }
            if let Some(closer) = &mut self.closer {
                let started = Instant::now();
                closer.record(self.bytes.len());
                let closed = closer.close_if_due(
                    constraint,
                    &mut self.bytes,
                    self.generated,
                    self.max_tokens,
                );
                self.token_choice += started.elapsed();
                if let Some(tokens) = closed {
                    self.generated = tokens;
                    return Ok(Some(FinishReason::Length));
                }
            }
        }
        if self.ends_with_stop(piece.len()) {
            return Ok(Some(FinishReason::Stop));
        }
        if self.generated >= self.max_tokens {
            return Ok(Some(FinishReason::Length));
        }
        self.stream_confirmed();
        Ok(None)
    }

    /// Sends the text no stop string can still take back, up to the last
    /// whole character, to the caller's stream.
    fn stream_confirmed(&mut self) {
        let hold = self.stop.iter().map(String::len).max().unwrap_or(1) - 1;
        let mut end = self.bytes.len().saturating_sub(hold);
        if let Some(closer) = &self.closer {
            end = end.min(closer.stream_limit(&self.bytes));
        }
        self.stream_to(end);
    }

    fn stream_to(&mut self, end: usize) {
        let Some(pending) = self.bytes.get(self.streamed..end) else {
            return;
        };
        let whole = match std::str::from_utf8(pending) {
            Ok(text) => text.len(),
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            // Not UTF-8 at all (a byte-level token of a broken sequence):
            // passed on as the finished reply will show it.
            Err(_) => pending.len(),
        };
        if whole > 0 {
            let text = String::from_utf8_lossy(&pending[..whole]).into_owned();
            self.streamed += whole;
            self.control.emit(text);
        }
    }

    /// Whether the reply now contains the completed marker or a stop string
    /// (which is cut off). Only the tail that the last piece could have
    /// completed is searched, so a long reply costs no more per token.
    fn ends_with_stop(&mut self, piece_len: usize) -> bool {
        let longest = self
            .stop
            .iter()
            .map(String::len)
            .chain([COMPLETED_MARKER.len()])
            .max()
            .unwrap_or(0);
        let start = self.bytes.len().saturating_sub(piece_len + longest);
        let tail = &self.bytes[start..];
        if find(tail, COMPLETED_MARKER.as_bytes()).is_some() {
            return true;
        }
        let cut = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| find(tail, s.as_bytes()))
            .min();
        if let Some(at) = cut {
            self.bytes.truncate(start + at);
            return true;
        }
        false
    }

    /// The finished reply (the rest of its text goes to the stream first).
    pub(crate) fn finish(
        mut self,
        prompt_tokens: usize,
        finish_reason: FinishReason,
        timings: Timings,
    ) -> Generation {
        self.stream_to(self.bytes.len());
        Generation {
            text: String::from_utf8_lossy(&self.bytes).into_owned(),
            prompt_tokens,
            cached_prompt_tokens: 0,
            completion_tokens: self.generated,
            finish_reason,
            timings: Timings {
                token_choice: self.token_choice,
                ..timings
            },
        }
    }
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(max_tokens: usize, stop: &[&str]) -> GenerationRequest {
        GenerationRequest {
            stop: stop.iter().map(|s| s.to_string()).collect(),
            ..GenerationRequest::new("", max_tokens)
        }
    }

    #[test]
    fn stops_at_end_token_marker_stop_string_and_budget() {
        let mut d = Decoder::new(&request(10, &[]), None, vec![2]);
        assert_eq!(d.push(5, b"hi").unwrap(), None);
        assert_eq!(d.push(2, b"").unwrap(), Some(FinishReason::Stop));
        assert_eq!(d.generated, 1);

        let mut d = Decoder::new(&request(10, &[]), None, vec![2]);
        assert_eq!(d.push(5, b"x\n\n[[ ## completed").unwrap(), None);
        assert_eq!(d.push(6, b" ## ]]").unwrap(), Some(FinishReason::Stop));

        let mut d = Decoder::new(&request(10, &["END"]), None, vec![2]);
        d.push(5, b"abcEN").unwrap();
        assert_eq!(d.push(6, b"Dxyz").unwrap(), Some(FinishReason::Stop));
        let g = d.finish(3, FinishReason::Stop, Timings::default());
        assert_eq!(g.text, "abc");

        let mut d = Decoder::new(&request(2, &[]), None, vec![2]);
        d.push(5, b"a").unwrap();
        assert_eq!(d.push(5, b"a").unwrap(), Some(FinishReason::Length));
    }

    #[tokio::test]
    async fn the_stream_gets_whole_characters_and_never_a_stop_string() {
        let (control, mut stream) = GenerationControl::streaming();
        let mut request = request(20, &["END"]);
        request.control = control;
        let mut d = Decoder::new(&request, None, vec![2]);
        let pieces: [&[u8]; 5] = [b"ab", b"c\xc3", b"\xa9 E", b"N", b"Dx"];
        let mut finish = None;
        for piece in pieces {
            finish = d.push(5, piece).unwrap();
        }
        assert_eq!(finish, Some(FinishReason::Stop));
        let generation = d.finish(1, FinishReason::Stop, Timings::default());
        assert_eq!(generation.text, "abcé ");
        // The stream ends when every holder of the control is gone.
        drop(request);
        let mut streamed = String::new();
        while let Some(text) = stream.next().await {
            assert!(
                !text.contains('E'),
                "a stop string's start was streamed: {text:?}"
            );
            streamed.push_str(&text);
        }
        assert_eq!(streamed, generation.text);
    }

    /// A signature with these output fields and no inputs.
    fn outputs(fields: &[(&str, crate::prompt::ValueKind)]) -> crate::prompt::SignatureFields {
        crate::prompt::SignatureFields {
            inputs: vec![],
            outputs: fields
                .iter()
                .map(|(name, kind)| crate::prompt::FieldSpec {
                    name: (*name).into(),
                    type_name: String::new(),
                    kind: kind.clone(),
                })
                .collect(),
        }
    }

    /// The greedy fast path picks exactly what masking then taking the
    /// argmax picks, step after step, on random logits over a DSPy grammar
    /// (typed and free-text fields): the replies are the same.
    #[test]
    fn the_greedy_fast_path_picks_what_the_full_mask_picks() {
        use crate::prompt::{OutputConstraint, ValueKind};
        use rand::{Rng, SeedableRng};
        let fields = outputs(&[
            ("reasoning", ValueKind::Text),
            ("answer", ValueKind::Integer { min: -5, max: 1000 }),
        ]);
        let constraint = OutputConstraint::for_fields(&fields, 40);
        let compiler = crate::prompt::ConstraintCompiler::single_byte().unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut fast_hits = 0;
        for _ in 0..40 {
            let mut full = compiler.matcher(&constraint).unwrap();
            let mut request = request(200, &[]);
            request.constraint = Some(constraint.clone());
            let fast = compiler.matcher(&constraint).unwrap();
            let mut decoder = Decoder::new(&request, Some(fast), vec![256]);
            for _ in 0..120 {
                // Logits that favour marker and digit bytes, so the grammar
                // accepts the best one often and refuses it often.
                let logits: Vec<f32> = (0..=256)
                    .map(|id| {
                        let bonus = match id as u8 {
                            b'[' | b']' | b'#' | b' ' | b'\n' | b'0'..=b'9' => 2.0,
                            _ => 0.0,
                        };
                        rng.random::<f32>() + bonus
                    })
                    .collect();
                let mut masked = logits.clone();
                full.mask_logits(&mut masked).unwrap();
                let expected = sampler::argmax(&masked).unwrap();
                let before = sampler::argmax(&logits);
                let token = decoder.next_token(&mut logits.clone()).unwrap();
                assert_eq!(token, expected);
                fast_hits += usize::from(before == Some(token));
                full.accept(token).unwrap();
                let piece = [token as u8];
                if token == 256 || decoder.push(token, &piece).unwrap().is_some() {
                    break;
                }
            }
        }
        assert!(fast_hits > 100, "the fast path was taken {fast_hits} times");
    }

    #[test]
    fn a_cancelled_reply_ends_at_the_next_token() {
        let request = request(20, &[]);
        let mut d = Decoder::new(&request, None, vec![2]);
        assert_eq!(d.push(5, b"a").unwrap(), None);
        request.control.cancel();
        assert_eq!(d.push(5, b"b").unwrap(), Some(FinishReason::Cancelled));
    }

    /// A stand-in model over single-byte tokens that rambles: it prefers
    /// `x`, then `7`, `a`, `"`, `,` and never chooses to stop, so only the
    /// closing can end its reply in the budget.
    fn rambling_reply(
        constraint: crate::prompt::OutputConstraint,
        max_tokens: usize,
    ) -> Generation {
        let compiler = crate::prompt::ConstraintCompiler::single_byte().unwrap();
        let matcher = compiler.matcher(&constraint).unwrap();
        let mut request = request(max_tokens, &[]);
        request.constraint = Some(constraint);
        let eos = 256;
        let mut decoder = Decoder::new(&request, Some(matcher), vec![eos]);
        let preference = |id: usize| match id as u8 {
            b'x' => 10.0,
            b'7' => 9.0,
            b'a' => 8.0,
            b'"' => 7.0,
            b',' => 6.0,
            _ => -(id as f32) * 1e-3,
        };
        loop {
            let mut logits: Vec<f32> = (0..=256).map(preference).collect();
            logits[eos as usize] = -100.0;
            let token = decoder.next_token(&mut logits).unwrap();
            let piece = [token as u8];
            if let Some(reason) = decoder.push(token, &piece).unwrap() {
                return decoder.finish(1, reason, Timings::default());
            }
        }
    }

    #[test]
    fn a_rambling_reply_is_closed_in_its_budget_and_parses() {
        use crate::prompt::{OutputConstraint, ValueKind, parse_reply};
        let fields = outputs(&[
            ("answer", ValueKind::Text),
            ("total", ValueKind::Integer { min: -5, max: 1000 }),
            ("tags", ValueKind::List(Box::new(ValueKind::Text))),
            ("note", ValueKind::Text),
        ]);
        // A single-byte vocabulary: the shortest whole reply is about 105 tokens.
        for budget in [110, 120, 150, 200, 400] {
            let constraint = OutputConstraint::for_fields(&fields, 1000);
            let reply = rambling_reply(constraint, budget);
            assert_eq!(
                reply.finish_reason,
                FinishReason::Length,
                "{budget}: {:?}",
                reply.text
            );
            assert!(
                reply.completion_tokens <= budget,
                "{budget}: {}",
                reply.completion_tokens
            );
            let parsed = parse_reply(&fields, &reply.text)
                .unwrap_or_else(|e| panic!("{budget}: {e}\n{}", reply.text));
            assert!(
                parsed["total"].is_i64() && parsed["tags"].is_array(),
                "{parsed:?}"
            );
        }
    }

    #[test]
    fn a_rambling_json_reply_is_closed_in_its_budget() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "items": {"type": "array", "items": {"type": "string"}}},
            "required": ["name", "items"],
        });
        // The shortest object the schema allows is 23 single-byte tokens.
        for budget in [24, 40, 100] {
            let reply =
                rambling_reply(crate::prompt::OutputConstraint::json(&schema, 1000), budget);
            let value: serde_json::Value = serde_json::from_str(&reply.text)
                .unwrap_or_else(|e| panic!("{budget}: {e}: {}", reply.text));
            assert!(value["items"].is_array(), "{value}");
            assert!(reply.completion_tokens <= budget);
        }
    }
}
