//! One training step over both cores.
//!
//! candle runs most CPU operations on one thread, so a batch is cut into
//! parts of a few sequences that this thread and a worker thread take as
//! they come free; the parts' gradients are summed in their order, and the
//! optimiser is split into two halves of the weights stepped side by side.
//! The worker lives through the whole training: a thread spawned for each
//! step (as before) cost 24 ms a step to start and end.
//!
//! On a GPU everything runs on this thread, the batch as one part.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::data::Sequence;
use crate::model::TinyLlama;
use crate::probe::{ArithmeticProbe, ProbedReplies};
use crate::vocab;

/// What a whole batch counts, so each part weighs its loss by its share.
#[derive(Debug, Clone, Copy)]
struct BatchTotals {
    targets: usize,
    plain_probed: usize,
    reasoning_probed: usize,
}

impl BatchTotals {
    fn of(batch: &[Sequence]) -> Self {
        BatchTotals {
            targets: targets_in(batch).max(1),
            plain_probed: ArithmeticProbe::positions_in(batch, ProbedReplies::Plain).max(1),
            reasoning_probed: ArithmeticProbe::positions_in(batch, ProbedReplies::Reasoning).max(1),
        }
    }

    fn probed(&self, replies: ProbedReplies) -> usize {
        match replies {
            ProbedReplies::Plain => self.plain_probed,
            ProbedReplies::Reasoning => self.reasoning_probed,
        }
    }
}

/// The trained positions of `part` (every target but a sequence's first
/// token, which nothing predicts).
fn targets_in(part: &[Sequence]) -> usize {
    part.iter()
        .map(|s| s.targets.iter().skip(1).filter(|&&t| t).count())
        .sum()
}

/// What the model is trained on, for the parts of a batch (the model and
/// probe share their weights with every clone).
#[derive(Clone)]
pub struct Objective {
    pub model: TinyLlama,
    pub probe: Option<ArithmeticProbe>,
    pub device: Device,
}

impl Objective {
    /// The loss of `part` and its gradients, as its share of the batch's:
    /// its mean loss over its targets times its share of the batch's
    /// targets, plus each probe term times its weight and its share of the
    /// batch's probed positions. The returned loss is the model's alone.
    fn part(&self, part: &[Sequence], totals: &BatchTotals) -> Result<(f64, GradStore)> {
        let (tokens, positions, targets) = tensors(part, &self.device)?;
        let hidden = self.model.hidden_states(&tokens)?;
        let (b, t, d) = hidden.dims3()?;
        let hidden = hidden.reshape((b * t, d))?;
        let selected = hidden.index_select(&positions, 0)?;
        let logits = self.model.logits(&selected)?;
        let share = targets_in(part) as f64 / totals.targets as f64;
        let loss = (candle_nn::loss::cross_entropy(&logits, &targets)? * share)?;
        let reported = loss.to_scalar::<f32>()? as f64;
        let mut objective = loss;
        if let Some(probe) = &self.probe {
            for replies in [ProbedReplies::Plain, ProbedReplies::Reasoning] {
                let weight = probe.loss_weight(replies);
                if weight == 0.0 {
                    continue;
                }
                if let Some(probe_loss) = probe.loss(&hidden, part, t, replies)? {
                    let share = ArithmeticProbe::positions_in(part, replies) as f64
                        / totals.probed(replies) as f64;
                    objective = (objective + (probe_loss * (weight * share))?)?;
                }
            }
        }
        Ok((reported, objective.backward()?))
    }
}

/// The padded token matrix, the flat positions whose next token is a
/// target, and those targets.
fn tensors(batch: &[Sequence], device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let time = batch.iter().map(|s| s.tokens.len()).max().unwrap_or(1);
    let mut tokens = Vec::with_capacity(batch.len() * time);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (row, sequence) in batch.iter().enumerate() {
        tokens.extend_from_slice(&sequence.tokens);
        tokens.extend(std::iter::repeat_n(
            vocab::END_OF_TURN,
            time - sequence.tokens.len(),
        ));
        for (index, &is_target) in sequence.targets.iter().enumerate().skip(1) {
            if is_target {
                positions.push((row * time + index - 1) as u32);
                targets.push(sequence.tokens[index]);
            }
        }
    }
    Ok((
        Tensor::from_vec(tokens, (batch.len(), time), device)?,
        Tensor::new(positions, device)?,
        Tensor::new(targets, device)?,
    ))
}

/// AdamW over two halves of the weights, largest first, each to the lighter
/// half (each weight's update depends on nothing else, so stepping the halves
/// apart is the same arithmetic as one optimiser).
fn split_optimiser(vars: &[Var], params: ParamsAdamW) -> Result<[AdamW; 2]> {
    let mut sorted: Vec<_> = vars.to_vec();
    sorted.sort_by_key(|var| std::cmp::Reverse(var.elem_count()));
    let mut halves: [(Vec<Var>, usize); 2] = Default::default();
    for var in sorted {
        let lighter = usize::from(halves[1].1 < halves[0].1);
        halves[lighter].1 += var.elem_count();
        halves[lighter].0.push(var);
    }
    let [(first, _), (second, _)] = halves;
    Ok([
        AdamW::new(first, params.clone())?,
        AdamW::new(second, params)?,
    ])
}

/// Sequences per part. Either thread takes the next part as it comes free,
/// longest first: the two cores of this machine run at different speeds
/// (with a fixed split, one half of a batch took up to 17 % longer than the
/// other), so a fixed half each left the faster one waiting. The parts'
/// gradients are summed in their order, whichever thread computed them, so
/// a run is still the same arithmetic every time.
const PART_SEQUENCES: usize = 4;

/// A part's loss and gradients.
type PartResult = Result<(f64, GradStore)>;

/// One step's parts, shared by both threads.
struct SharedStep {
    /// Consecutive sequences of the length-sorted batch.
    parts: Vec<Vec<Sequence>>,
    totals: BatchTotals,
    /// How many parts have been taken.
    taken: AtomicUsize,
    results: Mutex<Vec<Option<PartResult>>>,
}

impl SharedStep {
    fn new(batch: Vec<Sequence>) -> Self {
        let totals = BatchTotals::of(&batch);
        let mut parts = Vec::new();
        let mut rest = batch;
        while !rest.is_empty() {
            let tail = rest.split_off(PART_SEQUENCES.min(rest.len()));
            parts.push(std::mem::replace(&mut rest, tail));
        }
        let results = Mutex::new(parts.iter().map(|_| None).collect());
        SharedStep {
            parts,
            totals,
            taken: AtomicUsize::new(0),
            results,
        }
    }

    /// Computes parts, longest first, until every part is taken.
    fn work(&self, objective: &Objective) {
        loop {
            let taken = self.taken.fetch_add(1, Ordering::Relaxed);
            let Some(index) = self.parts.len().checked_sub(taken + 1) else {
                return;
            };
            let result = objective.part(&self.parts[index], &self.totals);
            if let Ok(mut results) = self.results.lock() {
                results[index] = Some(result);
            }
        }
    }

    /// The loss and the gradients summed over the parts, in part order.
    fn sum(&self, vars: &[Var]) -> Result<(f64, GradStore)> {
        let mut results = self
            .results
            .lock()
            .map_err(|_| anyhow!("a training thread panicked"))?;
        let mut parts = results.iter_mut().map(|result| {
            result
                .take()
                .unwrap_or_else(|| Err(anyhow!("a part of the batch was not computed")))
        });
        let (mut loss, mut grads) = parts.next().context("an empty batch")??;
        for part in parts {
            let (part_loss, part_grads) = part?;
            loss += part_loss;
            for var in vars {
                let sum = match (grads.get(var), part_grads.get(var)) {
                    (Some(a), Some(b)) => (a + b)?,
                    (None, Some(b)) => b.clone(),
                    (_, None) => continue,
                };
                grads.insert(var, sum);
            }
        }
        Ok((loss, grads))
    }
}

enum Job {
    /// Take parts of this step.
    Parts(Arc<SharedStep>),
    /// Step the second optimiser half at this learning rate.
    Step(Arc<GradStore>, f64),
}

enum Done {
    Parts,
    Stepped(Result<()>),
}

/// Where the second core's work runs.
enum SecondHalf {
    /// On this thread, after the first (GPU).
    Inline(AdamW),
    /// On the worker thread, at the same time as this one's.
    Worker {
        jobs: Sender<Job>,
        done: Receiver<Done>,
    },
}

/// The training step: gradients of a batch over both cores, then the
/// optimiser step.
pub struct Stepper {
    objective: Objective,
    vars: Vec<Var>,
    first: AdamW,
    second: SecondHalf,
}

impl Stepper {
    /// On the CPU, starts the worker thread; it ends when the stepper is
    /// dropped.
    pub fn start(objective: Objective, vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let [first, second_optimiser] = split_optimiser(&vars, params)?;
        let second = if objective.device.is_cpu() {
            let (jobs, inbox) = channel();
            let (outbox, done) = channel();
            let worker = objective.clone();
            std::thread::Builder::new()
                .name("train-worker".into())
                .spawn(move || work(worker, second_optimiser, inbox, outbox))
                .context("starting the training worker thread")?;
            SecondHalf::Worker { jobs, done }
        } else {
            SecondHalf::Inline(second_optimiser)
        };
        Ok(Stepper {
            objective,
            vars,
            first,
            second,
        })
    }

    /// Trains on `batch` at learning rate `rate`; returns the batch's mean
    /// loss over its targets.
    pub fn step(&mut self, batch: Vec<Sequence>, rate: f64) -> Result<f64> {
        let (loss, grads) = match &self.second {
            SecondHalf::Inline(_) => {
                let totals = BatchTotals::of(&batch);
                self.objective.part(&batch, &totals)?
            }
            SecondHalf::Worker { jobs, done } => {
                let shared = Arc::new(SharedStep::new(batch));
                send(jobs, Job::Parts(Arc::clone(&shared)))?;
                shared.work(&self.objective);
                match receive(done)? {
                    Done::Parts => shared.sum(&self.vars)?,
                    Done::Stepped(_) => bail!("the worker answered out of turn"),
                }
            }
        };
        self.first.set_learning_rate(rate);
        match &mut self.second {
            SecondHalf::Inline(second) => {
                self.first.step(&grads)?;
                second.set_learning_rate(rate);
                second.step(&grads)?;
            }
            SecondHalf::Worker { jobs, done } => {
                let grads = Arc::new(grads);
                send(jobs, Job::Step(Arc::clone(&grads), rate))?;
                let mine = self.first.step(&grads);
                let theirs = receive(done)?;
                mine?;
                match theirs {
                    Done::Stepped(result) => result?,
                    Done::Parts => bail!("the worker answered out of turn"),
                }
            }
        }
        Ok(loss)
    }
}

fn send(jobs: &Sender<Job>, job: Job) -> Result<()> {
    jobs.send(job)
        .map_err(|_| anyhow!("the training worker thread has stopped"))
}

fn receive(done: &Receiver<Done>) -> Result<Done> {
    done.recv()
        .context("the training worker thread has stopped")
}

/// The worker thread: runs jobs until the stepper is dropped.
fn work(objective: Objective, mut optimiser: AdamW, jobs: Receiver<Job>, done: Sender<Done>) {
    for job in jobs {
        let result = match job {
            Job::Parts(shared) => {
                shared.work(&objective);
                Done::Parts
            }
            Job::Step(grads, rate) => {
                optimiser.set_learning_rate(rate);
                Done::Stepped(optimiser.step(&grads).map_err(Into::into))
            }
        };
        if done.send(result).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dimensions;

    fn objective() -> Result<Objective> {
        let device = Device::Cpu;
        let dims = Dimensions {
            vocab: 48,
            hidden: 32,
            layers: 2,
            heads: 2,
            ffn: 64,
            max_positions: 64,
        };
        Ok(Objective {
            model: TinyLlama::new(dims, 1, &device)?,
            probe: Some(ArithmeticProbe::new(dims.hidden, 1.0, 0.0, 2, &device)?),
            device,
        })
    }

    /// Ten sequences of growing length (so the last part is short), the
    /// last third of each a reply, every other one probed at its last token.
    fn batch() -> Vec<Sequence> {
        (0..10)
            .map(|i| {
                let len = 8 + 3 * i;
                let tokens = (0..len)
                    .map(|t| ((t * 7 + i * 5) % 40 + 4) as u32)
                    .collect();
                let targets = (0..len).map(|t| t >= len - len / 3).collect();
                let probe_labels = if i % 2 == 0 {
                    vec![(len - 1, [1, 2, 3, 4, 5, 6, 10])]
                } else {
                    Vec::new()
                };
                Sequence {
                    tokens,
                    targets,
                    probe_labels,
                    reasoning_probe_labels: Vec::new(),
                }
            })
            .collect()
    }

    fn gradient_values(grads: &GradStore, vars: &[Var]) -> Result<Vec<Vec<f32>>> {
        vars.iter()
            .map(|var| {
                let grad = grads.get(var).context("a weight without a gradient")?;
                Ok(grad.flatten_all()?.to_vec1::<f32>()?)
            })
            .collect()
    }

    #[test]
    fn parts_sum_to_the_gradients_of_the_whole_batch() -> Result<()> {
        let objective = objective()?;
        let vars: Vec<Var> = objective.model.vars();
        let whole_batch = batch();
        let (whole_loss, whole_grads) =
            objective.part(&whole_batch, &BatchTotals::of(&whole_batch))?;

        let shared = SharedStep::new(batch());
        assert_eq!(shared.parts.len(), 3);
        std::thread::scope(|scope| {
            scope.spawn(|| shared.work(&objective));
            shared.work(&objective);
        });
        let (loss, grads) = shared.sum(&vars)?;

        assert!(
            (loss - whole_loss).abs() < 1e-5 * whole_loss,
            "{loss} vs {whole_loss}"
        );
        for (parts, whole) in gradient_values(&grads, &vars)?
            .iter()
            .zip(gradient_values(&whole_grads, &vars)?)
        {
            let scale = whole.iter().fold(0f32, |m, v| m.max(v.abs()));
            let error = parts
                .iter()
                .zip(&whole)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(error <= 1e-4 * scale, "error {error} of scale {scale}");
        }
        Ok(())
    }

    /// Whichever thread computed which part, the sum is the parts' in
    /// part order, bit for bit (the threads take them longest first, so a
    /// sum in the order they finish would round differently).
    #[test]
    fn the_sum_is_in_part_order_whichever_thread_took_a_part() -> Result<()> {
        let objective = objective()?;
        let vars: Vec<Var> = objective.model.vars();
        let shared = SharedStep::new(batch());
        std::thread::scope(|scope| {
            scope.spawn(|| shared.work(&objective));
            shared.work(&objective);
        });
        let (loss, grads) = shared.sum(&vars)?;

        let by_hand = SharedStep::new(batch());
        let mut parts = Vec::new();
        for part in &by_hand.parts {
            parts.push(objective.part(part, &by_hand.totals)?);
        }
        let expected_loss = parts.iter().fold(0.0, |sum, (loss, _)| sum + loss);
        let mut expected = Vec::new();
        for var in &vars {
            let mut sum = parts[0].1.get(var).context("no gradient")?.clone();
            for (_, part_grads) in &parts[1..] {
                sum = (sum + part_grads.get(var).context("no gradient")?)?;
            }
            expected.push(sum.flatten_all()?.to_vec1::<f32>()?);
        }
        assert_eq!(loss.to_bits(), expected_loss.to_bits());
        assert_eq!(gradient_values(&grads, &vars)?, expected);
        Ok(())
    }
}
