//! What happens between two forward passes, the same for every backend:
//! mask the logits with the output constraint, sample, and decide whether the
//! reply has ended (end-of-generation token, completed marker, stop string,
//! grammar complete, token budget).
//!
//! A backend's decode loop is then: evaluate → [`Decoder::next_token`] →
//! [`Decoder::push`] → evaluate the new token, until `push` returns a
//! [`FinishReason`].

mod closing;
// Many sequences per pass: llama.cpp's batching only.
#[cfg(feature = "llamacpp")]
mod parallel;
mod sampler;

#[cfg(feature = "llamacpp")]
pub(crate) use parallel::{Choice, Helpers, choose_all, prepare_while};
pub(crate) use sampler::Sampler;

use std::time::{Duration, Instant};

use closing::Closer;

use crate::backend::{FinishReason, Generation, GenerationControl, GenerationRequest, Timings};
use crate::prompt::token_mask::argmax;
use crate::prompt::{COMPLETED_MARKER, ConstraintMatcher};
use crate::{Error, Result};

/// What a pass over the last chosen token and a draft gave
/// ([`Decoder::choose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chosen {
    /// Draft tokens the model chose too: their cache entries stay, the
    /// rest of the draft's are dropped.
    pub(crate) kept: usize,
    /// The token to read next, or why the reply ended.
    pub(crate) next: Next,
}

/// After a pass: go on with a token, or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Token(u32),
    Finished(FinishReason),
}

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
    /// Whether the last token chosen needed the grammar's whole mask.
    masked_last: bool,
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
            masked_last: false,
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
    ///
    /// Greedy and constrained, the most likely token is checked against the
    /// grammar first; only when the grammar refuses it is the whole mask
    /// computed (the mask's cost grows with the vocabulary; one check does
    /// not). The token is the same either way: the first highest logit of
    /// all, when allowed, is also the first highest of the allowed ones.
    /// The logits are only read (a row is the vocabulary's size, and a
    /// batched pass hands over one per sequence and draft position): a
    /// greedy reply's mask is read beside them, a sampling one's applied
    /// to a copy.
    pub(crate) fn next_token(&mut self, logits: &[f32]) -> Result<u32> {
        let started = Instant::now();
        let token = match &mut self.constraint {
            Some(constraint) if self.sampler.is_greedy() => {
                let best = argmax(logits);
                self.masked_last = best.is_none_or(|best| !constraint.allows(best));
                if self.masked_last {
                    constraint.most_likely_allowed(logits)?
                } else {
                    best
                }
            }
            Some(constraint) => {
                self.masked_last = true;
                let mut masked = logits.to_vec();
                constraint.mask_logits(&mut masked)?;
                self.sampler.sample(&masked)
            }
            None => self.sampler.sample(logits),
        };
        self.token_choice += started.elapsed();
        token.ok_or_else(|| {
            Error::constraint("no token is allowed next (all logits masked or not finite)")
        })
    }

    /// Computes the grammar's mask for the next token ahead of its logits.
    /// Backends call it while the device runs the pass, so on a GPU the mask
    /// costs no time of its own; on the CPU a sampling reply's mask only
    /// comes earlier, and a greedy one's computed in vain is extra work. The
    /// chosen token is the same either way.
    pub(crate) fn prepare(&mut self) {
        let started = Instant::now();
        if let Some(constraint) = &mut self.constraint {
            constraint.prepare_mask();
        }
        self.token_choice += started.elapsed();
    }

    /// Whether [`prepare`](Self::prepare) is worth calling before this
    /// step's logits: always when sampling (the mask is always applied),
    /// and greedy when the last token needed the mask (the model's
    /// favourite was refused). Measured, greedy: after such a step the next
    /// needed it too 89 % of the time on the bench's random-weight model,
    /// 51 % on SmolLM2-135M, never on Gemma 3 270M (whose refusals come
    /// alone); a mask computed for nothing costs CPU time that a GPU pass
    /// hides, and on the CPU token choice is ~1 % of decoding.
    pub(crate) fn needs_mask_ahead(&self) -> bool {
        self.constraint.is_some() && (!self.sampler.is_greedy() || self.masked_last)
    }

    /// The tokens the output constraint forces next, at most `limit` and
    /// no more than the budget has left: a draft for the backend to read in
    /// the same pass as the token before it, so that a marker costs one
    /// pass instead of one per token. Empty without a constraint.
    pub(crate) fn draft(&mut self, limit: usize) -> Vec<u32> {
        let room = self.max_tokens.saturating_sub(self.generated + 1);
        let Some(constraint) = &mut self.constraint else {
            return Vec::new();
        };
        if limit.min(room) == 0 {
            return Vec::new();
        }
        let started = Instant::now();
        let mut draft = constraint.forced_tokens();
        draft.truncate(limit.min(room));
        self.token_choice += started.elapsed();
        draft
    }

    /// Chooses tokens from a pass that read the last chosen token (or the
    /// prompt's end) followed by `draft`: `logits(i)` are the logits after
    /// `draft[..i]`. Each position's token is chosen exactly as one pass per
    /// token would choose it ([`next_token`](Self::next_token), then
    /// [`push`](Self::push)); while it is the draft's, the next position's
    /// logits are valid and it goes on. So the reply is the one decoding
    /// token by token gives — a sampler draws once per position either way
    /// — and a draft the model splits differently only costs its pass.
    pub(crate) fn choose<'p, L: AsRef<[f32]>>(
        &mut self,
        draft: &[u32],
        mut logits: impl FnMut(usize) -> L,
        piece: impl Fn(u32) -> &'p [u8],
    ) -> Result<Chosen> {
        let mut kept = 0;
        loop {
            let token = self.next_token(logits(kept).as_ref())?;
            if let Some(reason) = self.push(token, piece(token))? {
                return Ok(Chosen {
                    kept,
                    next: Next::Finished(reason),
                });
            }
            if draft.get(kept) != Some(&token) {
                return Ok(Chosen {
                    kept,
                    next: Next::Token(token),
                });
            }
            kept += 1;
        }
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
                let expected = argmax(&masked).unwrap();
                let before = argmax(&logits);
                let token = decoder.next_token(&logits).unwrap();
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

    /// A stand-in model whose logits are a function of the tokens so far
    /// (as a real model's are): seeded by their hash, favouring the marker
    /// tokens of `vocabulary` a little, so it often writes a marker split
    /// otherwise than the greedy split the draft guesses.
    fn logits_after(prefix: &[u32], vocabulary: usize, salt: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (prefix, salt).hash(&mut hasher);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(hasher.finish());
        (0..vocabulary)
            .map(|id| rng.random::<f32>() * 4.0 + if id >= 256 { 1.5 } else { 0.0 })
            .collect()
    }

    /// A vocabulary of single bytes, multi-byte marker pieces (so one text
    /// has several splits) and an end token.
    fn marker_vocabulary() -> crate::prompt::TokenVocabulary {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for piece in [
            "[[", " ##", "]]", "[[ ##", " ]]", "\n\n", "\n\n[[", "answer", " answer",
        ] {
            tokens.push(piece.as_bytes().to_vec());
        }
        let end = tokens.len() as u32;
        tokens.push(b"\xFF<end>".to_vec());
        crate::prompt::TokenVocabulary {
            tokens,
            end_of_generation: vec![end],
        }
    }

    /// Decodes one reply with the stand-in model, token by token or reading
    /// forced tokens ahead, and computing each step's mask before its
    /// logits or not: its text and token count, and how many draft tokens
    /// were kept and dropped.
    fn stand_in_reply(
        sampling: crate::backend::Sampling,
        salt: u64,
        ahead: bool,
        masks_ahead: bool,
    ) -> ((String, usize), usize, usize) {
        use crate::prompt::{OutputConstraint, ValueKind};
        let fields = outputs(&[
            ("answer", ValueKind::Text),
            ("total", ValueKind::Integer { min: 0, max: 99 }),
        ]);
        let vocabulary = marker_vocabulary();
        let size = vocabulary.tokens.len();
        let end = vocabulary.end_of_generation.clone();
        let compiler = crate::prompt::ConstraintCompiler::new(&vocabulary).unwrap();
        let constraint = OutputConstraint::for_fields(&fields, 12);
        let mut request = request(80, &[]);
        request.sampling = sampling;
        request.constraint = Some(constraint.clone());
        let matcher = compiler.matcher(&constraint).unwrap();
        let mut decoder = Decoder::new(&request, Some(matcher), end);
        let piece = |token: u32| vocabulary.tokens[token as usize].as_slice();
        let mut tokens: Vec<u32> = Vec::new();
        let (mut kept, mut dropped) = (0, 0);
        let reason = loop {
            let draft = if ahead { decoder.draft(64) } else { Vec::new() };
            if masks_ahead {
                decoder.prepare();
            }
            let chosen = decoder
                .choose(
                    &draft,
                    |row| {
                        let seen: Vec<u32> = tokens.iter().chain(&draft[..row]).copied().collect();
                        logits_after(&seen, size, salt)
                    },
                    piece,
                )
                .unwrap();
            tokens.extend_from_slice(&draft[..chosen.kept]);
            kept += chosen.kept;
            dropped += draft.len() - chosen.kept;
            match chosen.next {
                Next::Token(token) => tokens.push(token),
                Next::Finished(reason) => break reason,
            }
        };
        let generation = decoder.finish(1, reason, Timings::default());
        (
            (generation.text, generation.completion_tokens),
            kept,
            dropped,
        )
    }

    /// Reading forced tokens ahead gives the reply decoding token by token
    /// gives, greedy and sampled, when the model splits a marker otherwise
    /// than the draft (it is checked position by position, and the rest
    /// dropped).
    #[test]
    fn a_draft_read_ahead_changes_no_reply() {
        let mut sampled = crate::backend::Sampling::greedy();
        sampled.temperature = 0.9;
        let (mut kept, mut dropped) = (0, 0);
        for salt in 0..60 {
            for sampling in [crate::backend::Sampling::greedy(), sampled.clone()] {
                let mut sampling = sampling;
                sampling.seed = salt;
                let (stepwise, _, _) = stand_in_reply(sampling.clone(), salt, false, false);
                let (ahead, k, d) = stand_in_reply(sampling, salt, true, false);
                assert_eq!(ahead, stepwise, "salt {salt}");
                kept += k;
                dropped += d;
            }
        }
        // Both paths were taken many times: drafts the model followed, and
        // drafts it split otherwise.
        assert!(
            kept > 500 && dropped > 100,
            "kept {kept}, dropped {dropped}"
        );
    }

    /// A mask computed before the logits (as a GPU pass runs) changes no
    /// reply, greedy or sampled, with drafts read ahead: it is the mask of
    /// the state it was computed in, and a token chosen after it (a draft's,
    /// while a greedy choice needed no mask) drops it.
    #[test]
    fn masks_computed_ahead_change_no_reply() {
        let mut sampled = crate::backend::Sampling::greedy();
        sampled.temperature = 0.9;
        for salt in 0..40 {
            for sampling in [crate::backend::Sampling::greedy(), sampled.clone()] {
                let mut sampling = sampling;
                sampling.seed = salt;
                for ahead in [false, true] {
                    let (when_chosen, _, _) = stand_in_reply(sampling.clone(), salt, ahead, false);
                    let (before, _, _) = stand_in_reply(sampling.clone(), salt, ahead, true);
                    assert_eq!(before, when_chosen, "salt {salt}, drafts {ahead}");
                }
            }
        }
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
            let token = decoder.next_token(&logits).unwrap();
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
