//! A training-only probe that teaches plain arithmetic its intermediate
//! steps.
//!
//! An `i32` field is written most significant digit first, so the first
//! digit of `96 + 83 = 179` needs, in one forward pass, the four operand
//! digits gathered from where they stand in the prompt and the whole carry
//! chain; trained on the answer alone, a small model finds neither in the
//! budget (25 % after 5000 steps of arithmetic only). The probe asks for
//! those steps directly, without changing what the model writes: at every
//! answer digit, a linear head on the final hidden state must name the
//! operands' digits (copying, which a small model learns soon) and the
//! answer's digits units first (each needs only its own column and one
//! carry): the same labels at every digit of a reply, so the state that
//! writes the first digit must already hold them all. The features that
//! answer the probe are the ones the real digits need: with it, arithmetic
//! alone reached 82 % after 2500 steps and a loss of 0.0005 by step 4850
//! (specs/tiny-model.md). The probe is not part of the written model.
//!
//! It can read chain-of-thought replies too, at every digit they write, with
//! the labels of their sum (`--reasoning-probe-weight`; off in the recipe,
//! which it did not improve).

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::{NO_DIGIT, PROBE_PLACES, Sequence};

/// Classes of one place: the ten digits and "no such place".
const PLACE_CLASSES: usize = NO_DIGIT as usize + 1;

/// Which replies a probe term reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbedReplies {
    /// Plain arithmetic: the answer's digits.
    Plain,
    /// Chain-of-thought arithmetic: every digit of the reasoning and answer.
    Reasoning,
}

impl ProbedReplies {
    /// The probed positions of `sequence` and their labels.
    pub fn labels_of(self, sequence: &Sequence) -> &[(usize, [u32; PROBE_PLACES])] {
        match self {
            ProbedReplies::Plain => &sequence.probe_labels,
            ProbedReplies::Reasoning => &sequence.reasoning_probe_labels,
        }
    }
}

/// The probe: a linear head and the weight of its loss in the objective for
/// each kind of reply it reads.
#[derive(Clone)]
pub struct ArithmeticProbe {
    /// `[places × classes, hidden]`.
    head: Var,
    plain_weight: f64,
    reasoning_weight: f64,
}

impl ArithmeticProbe {
    /// A probe with seeded random weights, its loss on plain replies counted
    /// `plain_weight` times and on reasoned ones `reasoning_weight` times.
    pub fn new(
        hidden: usize,
        plain_weight: f64,
        reasoning_weight: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rows = PROBE_PLACES * PLACE_CLASSES;
        let values: Vec<f32> = (0..rows * hidden)
            .map(|_| crate::model::normal(&mut rng, 0.02))
            .collect();
        let head = Var::from_tensor(&Tensor::from_vec(values, (rows, hidden), device)?)?;
        Ok(ArithmeticProbe {
            head,
            plain_weight,
            reasoning_weight,
        })
    }

    /// The head, for the optimiser.
    pub fn var(&self) -> Var {
        self.head.clone()
    }

    /// How many times its loss on `replies` counts against the model's.
    pub fn loss_weight(&self, replies: ProbedReplies) -> f64 {
        match replies {
            ProbedReplies::Plain => self.plain_weight,
            ProbedReplies::Reasoning => self.reasoning_weight,
        }
    }

    /// The number of positions of `batch` probed in `replies`.
    pub fn positions_in(batch: &[Sequence], replies: ProbedReplies) -> usize {
        batch.iter().map(|s| replies.labels_of(s).len()).sum()
    }

    /// The mean cross-entropy of the probe over the positions of `batch`
    /// probed in `replies`, read from `hidden` (`[batch × time, hidden]`,
    /// rows padded to `time`); `None` when the batch has none.
    pub fn loss(
        &self,
        hidden: &Tensor,
        batch: &[Sequence],
        time: usize,
        replies: ProbedReplies,
    ) -> Result<Option<Tensor>> {
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for (row, sequence) in batch.iter().enumerate() {
            for (index, places) in replies.labels_of(sequence) {
                // The state that predicts the digit at `index`.
                rows.push((row * time + index - 1) as u32);
                labels.extend_from_slice(places);
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let device = hidden.device();
        let selected = hidden.index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
        let logits = selected
            .matmul(&self.head.as_tensor().t()?)?
            .reshape((rows.len() * PROBE_PLACES, PLACE_CLASSES))?;
        let labels = Tensor::new(labels.as_slice(), device)?;
        Ok(Some(candle_nn::loss::cross_entropy(&logits, &labels)?))
    }
}
