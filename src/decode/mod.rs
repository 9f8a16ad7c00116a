//! What happens between two forward passes, the same for every backend:
//! mask the logits with the output constraint, sample, and decide whether the
//! reply has ended (end-of-generation token, completed marker, stop string,
//! grammar complete, token budget).
//!
//! A backend's decode loop is then: evaluate → [`Decoder::next_token`] →
//! [`Decoder::push`] → evaluate the new token, until `push` returns a
//! [`FinishReason`].

mod sampler;

pub use sampler::{Sampler, argmax};

use std::time::{Duration, Instant};

use crate::backend::{FinishReason, Generation, GenerationRequest, Timings};
use crate::prompt::{COMPLETED_MARKER, ConstraintMatcher};
use crate::{Error, Result};

/// The state of one reply being generated.
#[derive(Debug)]
pub struct Decoder {
    sampler: Sampler,
    constraint: Option<ConstraintMatcher>,
    end_of_generation: Vec<u32>,
    stop: Vec<String>,
    max_tokens: usize,
    bytes: Vec<u8>,
    generated: usize,
    /// Time spent in `next_token` and the constraint's advance.
    token_choice: Duration,
}

impl Decoder {
    /// Starts a reply for `request`; `constraint` is the request's grammar
    /// compiled for this model, and `end_of_generation` the model's end tokens.
    pub fn new(
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
        }
    }

    /// Chooses the next token from the model's logits for the last position.
    /// The logits are masked in place.
    pub fn next_token(&mut self, logits: &mut [f32]) -> Result<u32> {
        let started = Instant::now();
        if let Some(constraint) = &mut self.constraint {
            constraint.mask_logits(logits)?;
        }
        let token = self.sampler.sample(logits);
        self.token_choice += started.elapsed();
        token.ok_or_else(|| {
            Error::Constraint("no token is allowed next (all logits masked or not finite)".into())
        })
    }

    /// Records a sampled token and its text. Returns why the reply ended, or
    /// `None` to go on.
    pub fn push(&mut self, token: u32, piece: &[u8]) -> Result<Option<FinishReason>> {
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
        }
        if self.ends_with_stop(piece.len()) {
            return Ok(Some(FinishReason::Stop));
        }
        if self.generated >= self.max_tokens {
            return Ok(Some(FinishReason::Length));
        }
        Ok(None)
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

    /// Tokens generated so far (end tokens excluded).
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// The finished reply.
    pub fn finish(
        self,
        prompt_tokens: usize,
        finish_reason: FinishReason,
        timings: Timings,
    ) -> Generation {
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
    use crate::backend::Sampling;

    fn request(max_tokens: usize, stop: &[&str]) -> GenerationRequest {
        GenerationRequest {
            prompt: String::new(),
            sampling: Sampling::greedy(),
            max_tokens,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            constraint: None,
        }
    }

    #[test]
    fn stops_at_end_token_marker_stop_string_and_budget() {
        let mut d = Decoder::new(&request(10, &[]), None, vec![2]);
        assert_eq!(d.push(5, b"hi").unwrap(), None);
        assert_eq!(d.push(2, b"").unwrap(), Some(FinishReason::Stop));
        assert_eq!(d.generated(), 1);

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
}
