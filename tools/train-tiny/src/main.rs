//! Trains dsrs-local's own small model and writes it as a GGUF both backends load.
//!
//! ```text
//! cargo run -p train-tiny -- --out model.gguf     # one stage, on the CPU
//! ```
//!
//! The committed model's two stages (`--stop-after`, then `--init`) are in
//! `models/README.md`.
//!
//! 1. renders DSPy prompts for the task families of
//!    `dsrs_local::testing::tasks` through the crate's prompt layer (half
//!    the arithmetic pairs from the hard ones, `--hard-arithmetic`);
//! 2. learns a BPE vocabulary on them (`vocab.rs`);
//! 3. trains a small llama on the replies (`model.rs`, candle autograd, CPU
//!    with fused kernels, `fused.rs`, each step over both cores, `step.rs`;
//!    `--device cuda` in a `--features cuda` build, for trying settings),
//!    with a training-only probe that teaches plain arithmetic its
//!    intermediate steps (`probe.rs`);
//! 4. writes the GGUF and measures accuracy per family on held-out examples
//!    through the real `CandleAdapter`.
//!
//! Everything is seeded: the same command writes the same file.

mod data;
mod fused;
#[cfg_attr(all(target_os = "linux", target_env = "gnu"), path = "memory_glibc.rs")]
#[cfg_attr(
    not(all(target_os = "linux", target_env = "gnu")),
    path = "memory_other.rs"
)]
mod memory;
mod model;
mod probe;
mod step;
mod vocab;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};
use candle_nn::ParamsAdamW;
use dsrs_local::LocalModel as _;
use dsrs_local::testing::tasks::{TaskFamily, TaskStream, score};
use dsrs_local::testing::{TestModelSpec, TestTokenizer};
use dsrs_local::{CandleAdapter, CandleConfig, CandleLoadOptions, CandleModel, GenerationConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::data::{Encoder, Mix, Sequence, draw_example, mark_values, prompt_and_reply};
use crate::model::{Dimensions, TinyLlama};
use crate::probe::ArithmeticProbe;
use crate::step::{Objective, Stepper};

/// Settings, all overridable from the command line (`--name value`).
#[derive(Debug, Clone)]
struct Settings {
    out: PathBuf,
    seed: u64,
    vocab: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    ffn: usize,
    steps: usize,
    /// Stop after this many steps of the `steps`-step schedule and write
    /// the model (a first stage that a second, `--init`, goes on from).
    stop_after: Option<usize>,
    batch: usize,
    learning_rate: f64,
    /// Weight of the arithmetic probe's loss on plain replies (`probe.rs`).
    probe_weight: f64,
    /// Weight of its loss on chain-of-thought replies (both 0: no probe).
    reasoning_probe_weight: f64,
    /// Share of arithmetic questions drawn from the hard pairs
    /// (`TaskStream::with_hard_arithmetic`).
    hard_arithmetic: f64,
    /// Share of the vocabulary's merges spent inside words (the rest glue the
    /// prompt's fixed text).
    word_share: f64,
    /// What training draws.
    mix: Mix,
    /// Where to train: `cpu`, or `cuda` in a build with `--features cuda`.
    device: TrainingDevice,
    /// Evaluate a snapshot every this many steps (0: only at the end).
    eval_every: usize,
    /// Examples per family in the closing evaluation.
    eval: usize,
    /// Only compare this written model's logits with the candle backend's.
    check: Option<PathBuf>,
    /// Only evaluate this written model.
    evaluate_only: Option<PathBuf>,
    /// Only print how this many training examples are tokenized (the first
    /// few in full, tokens split by `|`) and their mean length.
    show: usize,
    /// Go on training this written model (its vocabulary and weights) instead
    /// of starting from random weights.
    init: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            out: PathBuf::from("models/dsrs-tiny.gguf"),
            seed: 20_261_121,
            vocab: 1024,
            hidden: 160,
            layers: 4,
            heads: 4,
            ffn: 512,
            steps: 4000,
            stop_after: None,
            batch: 16,
            learning_rate: 1.5e-3,
            probe_weight: 1.0,
            reasoning_probe_weight: 0.0,
            hard_arithmetic: 0.5,
            eval: 40,
            word_share: 0.5,
            mix: Mix::default(),
            device: TrainingDevice::Cpu,
            eval_every: 0,
            check: None,
            evaluate_only: None,
            show: 0,
            init: None,
        }
    }
}

impl Settings {
    fn from_args() -> Result<Self> {
        let mut settings = Settings::default();
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            let number = || -> Result<usize> {
                value
                    .parse()
                    .with_context(|| format!("{flag}: not a number: {value}"))
            };
            match flag.as_str() {
                "--out" => settings.out = PathBuf::from(&value),
                "--seed" => settings.seed = number()? as u64,
                "--vocab" => settings.vocab = number()?,
                "--hidden" => settings.hidden = number()?,
                "--layers" => settings.layers = number()?,
                "--heads" => settings.heads = number()?,
                "--ffn" => settings.ffn = number()?,
                "--steps" => settings.steps = number()?,
                "--stop-after" => settings.stop_after = Some(number()?),
                "--batch" => settings.batch = number()?,
                "--eval" => settings.eval = number()?,
                "--learning-rate" => settings.learning_rate = value.parse()?,
                "--check" => settings.check = Some(PathBuf::from(&value)),
                "--evaluate" => settings.evaluate_only = Some(PathBuf::from(&value)),
                "--probe-weight" => settings.probe_weight = value.parse()?,
                "--reasoning-probe-weight" => settings.reasoning_probe_weight = value.parse()?,
                "--hard-arithmetic" => settings.hard_arithmetic = value.parse()?,
                "--word-share" => settings.word_share = value.parse()?,
                "--mix" => settings.mix.parse_weights(&value)?,
                "--demos" => settings.mix.max_demos = number()?,
                "--device" => {
                    settings.device = match value.as_str() {
                        "cpu" => TrainingDevice::Cpu,
                        "cuda" => TrainingDevice::Cuda,
                        other => bail!("--device {other}: cpu or cuda"),
                    }
                }
                "--eval-every" => settings.eval_every = number()?,
                "--show" => settings.show = number()?,
                "--init" => settings.init = Some(PathBuf::from(&value)),
                other => bail!("unknown option {other}"),
            }
        }
        Ok(settings)
    }
}

/// Where the model trains.
#[derive(Debug, Clone, Copy)]
enum TrainingDevice {
    Cpu,
    /// GPU 0, for trying settings fast (`tools/train-tiny/gpu/`).
    Cuda,
}

/// Seed offsets, so each stage draws its own stream.
const VOCAB_STREAM: u64 = 1;
const TRAIN_STREAM: u64 = 2;
const SHUFFLE_STREAM: u64 = 3;
const INIT_STREAM: u64 = 4;
const PROBE_STREAM: u64 = 5;
/// The evaluation seed is one training never uses (training seeds are the
/// settings' seed plus the offsets above).
const EVAL_SEED: u64 = 0x005e_ed0f_e7a1;

fn main() -> Result<()> {
    memory::keep_freed_memory();
    // Training runs two halves of each batch on two threads; candle's own
    // matmul threads would only contend with them (measured: 2100 against
    // 1100 tokens/s on 2 cores).
    // SAFETY: nothing else runs yet, so no thread can read the environment.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<()> {
    let settings = Settings::from_args()?;
    println!("{settings:?}");
    if let Some(path) = &settings.check {
        return check_export(path);
    }
    if let Some(path) = &settings.evaluate_only {
        return evaluate(&Settings {
            out: path.clone(),
            ..settings.clone()
        })
        .await;
    }
    let started = Instant::now();
    if let Some(parent) = settings.out.parent() {
        std::fs::create_dir_all(parent)?;
    }

    let vocab_path = settings.out.with_extension("vocab.gguf");
    let metadata = match &settings.init {
        Some(init) => {
            let mut metadata = tokenizer_metadata(init)?;
            // The template that renders tools (the same text without them).
            metadata.insert(
                "tokenizer.chat_template".into(),
                Value::String(dsrs_local::prompt::CHATML_TOOLS_TEMPLATE.into()),
            );
            vocab::write_vocab_only(&metadata, &vocab_path)?;
            metadata
        }
        None => build_vocabulary(&settings, &vocab_path)?,
    };
    let encoder = Arc::new(Encoder::new(&vocab_path)?);
    std::fs::remove_file(&vocab_path).ok();
    println!(
        "vocabulary: {} tokens ({:.1?})",
        encoder.vocab_size(),
        started.elapsed()
    );

    if settings.show > 0 {
        return show_examples(&settings, &encoder);
    }
    let model = train(&settings, &encoder, &metadata).await?;
    write_model(&settings, &model, metadata)?;
    println!(
        "wrote {} ({} bytes) after {:.1?}",
        settings.out.display(),
        std::fs::metadata(&settings.out)?.len(),
        started.elapsed()
    );
    check_export(&settings.out)?;
    evaluate(&settings).await
}

/// Prints training examples as the model reads them, and the mean length.
fn show_examples(settings: &Settings, encoder: &Encoder) -> Result<()> {
    let mut stream = TaskStream::training(settings.seed + TRAIN_STREAM)
        .with_hard_arithmetic(settings.hard_arithmetic);
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed + SHUFFLE_STREAM);
    let (mut tokens, mut targets, mut probed) = (0, 0, 0);
    for index in 0..settings.show {
        let example = draw_example(&mut stream, &mut rng, &settings.mix);
        let sequence = encoder.encode(&example)?;
        tokens += sequence.tokens.len();
        targets += sequence.targets.iter().filter(|&&t| t).count();
        probed += sequence.probe_labels.len() + sequence.reasoning_probe_labels.len();
        if index < 4 {
            let (prompt, reply) = prompt_and_reply(encoder.template(), &example)?;
            println!(
                "{}\n=> {}\nprobe labels (token; answer, first and second operand, units first): {:?}\n",
                encoder.pieces_of(&prompt),
                encoder.pieces_of(&reply),
                sequence
                    .probe_labels
                    .iter()
                    .chain(&sequence.reasoning_probe_labels)
                    .map(|(i, places)| (sequence.tokens[*i], places))
                    .collect::<Vec<_>>()
            );
        }
    }
    println!(
        "{} examples: {:.1} tokens, {:.1} targets, {:.1} probed digits each",
        settings.show,
        tokens as f64 / settings.show as f64,
        targets as f64 / settings.show as f64,
        probed as f64 / settings.show as f64
    );
    Ok(())
}

/// Reads the written file back into the training model and compares its
/// next-token logits with the crate's candle backend on a few prompts: a
/// layout or rotary-embedding mismatch between training and inference shows
/// here as a large difference.
fn check_export(path: &std::path::Path) -> Result<()> {
    let device = Device::Cpu;
    let trained = TinyLlama::from_gguf(path, 2048, &device)?;
    let served = CandleModel::load(path, CandleLoadOptions::default())?;
    let template = dsrs_local::prompt::ChatTemplate::chatml("", "<|im_end|>");
    let mut stream = TaskStream::held_out(EVAL_SEED + 1);
    let mut rng = ChaCha8Rng::seed_from_u64(EVAL_SEED + 1);
    let mut worst = 0.0f32;
    for _ in 0..3 {
        let example = draw_example(&mut stream, &mut rng, &Mix::default());
        let (prompt, _) = prompt_and_reply(&template, &example)?;
        let tokens = served.tokenize_prompt(&prompt)?;
        let input = Tensor::new(tokens.as_slice(), &device)?.unsqueeze(0)?;
        let hidden = trained.hidden_states(&input)?;
        let last = hidden.get(0)?.get(tokens.len() - 1)?.unsqueeze(0)?;
        let ours: Vec<f32> = trained.logits(&last)?.flatten_all()?.to_vec1()?;
        let theirs = served.next_token_logits(&prompt)?;
        let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        let difference = ours
            .iter()
            .zip(&theirs)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(difference / scale);
    }
    println!(
        "export check: largest logit difference {:.2e} of the logit scale",
        worst
    );
    if worst > 1e-3 {
        bail!("the written model computes differently from training ({worst:.2e})");
    }
    Ok(())
}

/// The `tokenizer.*` keys of a GGUF file.
fn tokenizer_metadata(path: &std::path::Path) -> Result<std::collections::HashMap<String, Value>> {
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)?;
    Ok(content
        .metadata
        .into_iter()
        .filter(|(key, _)| key.starts_with("tokenizer."))
        .collect())
}

fn build_vocabulary(
    settings: &Settings,
    vocab_path: &std::path::Path,
) -> Result<std::collections::HashMap<String, Value>> {
    let mut stream = TaskStream::training(settings.seed + VOCAB_STREAM);
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed + VOCAB_STREAM);
    let template = dsrs_local::prompt::ChatTemplate::chatml("", "<|im_end|>");
    let mut texts = Vec::new();
    for _ in 0..4000 {
        let example = mark_values(&draw_example(&mut stream, &mut rng, &settings.mix))?;
        let (prompt, reply) = prompt_and_reply(&template, &example)?;
        texts.push(prompt);
        texts.push(reply);
    }
    let metadata = vocab::train(&texts, settings.vocab, settings.word_share)?;
    vocab::write_vocab_only(&metadata, vocab_path)?;
    Ok(metadata)
}

async fn train(
    settings: &Settings,
    encoder: &Arc<Encoder>,
    metadata: &std::collections::HashMap<String, Value>,
) -> Result<TinyLlama> {
    let device = match settings.device {
        TrainingDevice::Cpu => Device::Cpu,
        TrainingDevice::Cuda => Device::new_cuda(0)?,
    };
    let dims = Dimensions {
        vocab: encoder.vocab_size(),
        hidden: settings.hidden,
        layers: settings.layers,
        heads: settings.heads,
        ffn: settings.ffn,
        max_positions: 2048,
    };
    let model = match &settings.init {
        Some(init) => TinyLlama::from_gguf(init, dims.max_positions, &device)?,
        None => TinyLlama::new(dims, settings.seed + INIT_STREAM, &device)?,
    };
    println!("model: {dims:?}, {} parameters", model.parameter_count());
    let probe = (settings.probe_weight > 0.0 || settings.reasoning_probe_weight > 0.0)
        .then(|| {
            ArithmeticProbe::new(
                dims.hidden,
                settings.probe_weight,
                settings.reasoning_probe_weight,
                settings.seed + PROBE_STREAM,
                &device,
            )
        })
        .transpose()?;
    // Everything trained: the model, and the probe if any.
    let vars: Vec<_> = model
        .vars()
        .into_iter()
        .chain(probe.as_ref().map(ArithmeticProbe::var))
        .collect();
    let objective = Objective {
        model: model.clone(),
        probe,
        device,
    };
    let mut stepper = Stepper::start(
        objective,
        vars,
        ParamsAdamW {
            lr: settings.learning_rate,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.01,
        },
    )?;

    let stream = TaskStream::training(settings.seed + TRAIN_STREAM)
        .with_hard_arithmetic(settings.hard_arithmetic);
    let rng = ChaCha8Rng::seed_from_u64(settings.seed + SHUFFLE_STREAM);
    let batch_sets = make_batches_ahead(
        Arc::clone(encoder),
        stream,
        rng,
        settings.batch,
        settings.mix.clone(),
    )?;
    let mut batches: Vec<Vec<Sequence>> = Vec::new();
    let started = Instant::now();
    let (mut loss_sum, mut loss_count, mut tokens_seen) = (0.0f64, 0usize, 0usize);
    let warmup = (settings.steps / 20).max(1);
    let last = settings
        .stop_after
        .map_or(settings.steps, |n| n.min(settings.steps));
    for step in 0..last {
        if batches.is_empty() {
            batches = batch_sets
                .recv()
                .context("the batch-making thread has stopped")??;
        }
        let batch = batches.pop().context("no batch")?;
        tokens_seen += batch.iter().map(|s| s.tokens.len()).sum::<usize>();
        let progress = step as f64 / settings.steps as f64;
        let rate = if step < warmup {
            settings.learning_rate * (step + 1) as f64 / warmup as f64
        } else {
            // Cosine decay to a tenth.
            settings.learning_rate
                * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
        };
        loss_sum += stepper.step(batch, rate)?;
        loss_count += 1;
        if (step + 1) % 50 == 0 || step + 1 == last {
            let elapsed = started.elapsed().as_secs_f64();
            println!(
                "step {:>5}/{}  loss {:.4}  lr {:.2e}  {:.0} tokens/s  {:.0}s",
                step + 1,
                settings.steps,
                loss_sum / loss_count as f64,
                rate,
                tokens_seen as f64 / elapsed,
                elapsed
            );
            loss_sum = 0.0;
            loss_count = 0;
        }
        if settings.eval_every > 0
            && (step + 1) % settings.eval_every == 0
            && step + 1 < settings.steps
        {
            write_model(settings, &model, metadata.clone())?;
            println!(
                "after {} steps, {} tokens, {:.0}s:",
                step + 1,
                tokens_seen,
                started.elapsed().as_secs_f64()
            );
            evaluate(settings).await?;
        }
    }
    Ok(model)
}

/// Draws batches on a thread of its own, one set of 32 ahead of training,
/// so neither training thread waits for them (drawing took 2 % of the
/// training thread's time); the same draws in the same order as on the
/// training thread.
fn make_batches_ahead(
    encoder: Arc<Encoder>,
    mut stream: TaskStream,
    mut rng: ChaCha8Rng,
    batch: usize,
    mix: Mix,
) -> Result<Receiver<Result<Vec<Vec<Sequence>>>>> {
    let (sets, receiver) = sync_channel(1);
    std::thread::Builder::new()
        .name("train-batches".into())
        .spawn(move || {
            loop {
                let set = next_batches(&encoder, &mut stream, &mut rng, batch, &mix);
                let failed = set.is_err();
                // Training has ended (the receiver is gone) or cannot go on.
                if sets.send(set).is_err() || failed {
                    return;
                }
            }
        })
        .context("starting the batch-making thread")?;
    Ok(receiver)
}

/// Draws 32 batches' worth of sequences, groups sequences of similar length
/// (little padding), and returns the batches in random order.
fn next_batches(
    encoder: &Encoder,
    stream: &mut TaskStream,
    rng: &mut ChaCha8Rng,
    batch: usize,
    mix: &Mix,
) -> Result<Vec<Vec<Sequence>>> {
    let mut sequences = (0..batch * 32)
        .map(|_| encoder.encode(&draw_example(stream, rng, mix)))
        .collect::<Result<Vec<_>>>()?;
    sequences.sort_by_key(|s| s.tokens.len());
    let mut batches = Vec::new();
    while !sequences.is_empty() {
        let rest = sequences.split_off(batch.min(sequences.len()));
        batches.push(std::mem::replace(&mut sequences, rest));
    }
    batches.shuffle(rng);
    Ok(batches)
}

fn write_model(
    settings: &Settings,
    model: &TinyLlama,
    mut metadata: std::collections::HashMap<String, Value>,
) -> Result<()> {
    let shape = TestModelSpec {
        layers: settings.layers,
        hidden: settings.hidden,
        heads: settings.heads,
        kv_heads: settings.heads,
        ffn: settings.ffn,
        context_length: model.dims.max_positions,
        ..TestModelSpec::tiny(TestTokenizer::ByteLevel)
    };
    metadata.extend(
        shape
            .hyperparameters(model.dims.vocab)
            .into_iter()
            .map(|(key, value)| (key, candle_value(value))),
    );
    metadata.insert(
        "general.name".into(),
        Value::String("dsrs-tiny (dsrs-local's own task model)".into()),
    );
    let tensors = model.gguf_tensors(GgmlDType::F32)?;
    let mut keys: Vec<&String> = metadata.keys().collect();
    keys.sort();
    let metadata_refs: Vec<(&str, &Value)> =
        keys.iter().map(|k| (k.as_str(), &metadata[*k])).collect();
    let tensor_refs: Vec<_> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(&settings.out)?);
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs)?;
    Ok(())
}

/// A header value of the crate's as candle writes it (at the widths
/// llama.cpp reads: 32-bit integers and floats).
fn candle_value(value: dsrs_local::gguf::MetadataValue) -> Value {
    use dsrs_local::gguf::MetadataValue as M;
    match value {
        M::Uint(v) => u32::try_from(v).map_or(Value::U64(v), Value::U32),
        M::Int(v) => i32::try_from(v).map_or(Value::I64(v), Value::I32),
        M::Float(v) => Value::F32(v as f32),
        M::Bool(v) => Value::Bool(v),
        M::String(v) => Value::String(v),
        M::Array(items) => Value::Array(items.into_iter().map(candle_value).collect()),
    }
}

async fn evaluate(settings: &Settings) -> Result<()> {
    if settings.eval == 0 {
        return Ok(());
    }
    let model = Arc::new(CandleModel::load(
        &settings.out,
        CandleLoadOptions::default(),
    )?);
    let config = CandleConfig::default()
        .with_generation(GenerationConfig::default().with_max_text_chars(200));
    let adapter = CandleAdapter::from_loaded_model(model, config);
    let lm = adapter.lm().await?;
    let mut stream = TaskStream::held_out(EVAL_SEED);
    println!("held-out accuracy (candle, greedy, constrained):");
    for family in TaskFamily::ALL {
        let examples: Vec<_> = if family == TaskFamily::Capital {
            stream.every_capital(1)
        } else {
            (0..settings.eval)
                .map(|i| stream.sample(family, i % 3))
                .collect()
        };
        let result = score(&adapter, &lm, &examples).await;
        println!(
            "  {:<18} {:>3}/{:<3} {:.1} %",
            family.name(),
            result.correct,
            result.total,
            100.0 * result.accuracy()
        );
        for (inputs, answer) in result.misses.iter().take(3) {
            let answer: String = answer.to_string().chars().take(80).collect();
            println!("      missed {inputs:?} -> {answer}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{NO_DIGIT, PROBE_PLACES};

    /// The number whose digits `labels` holds units first.
    fn number(labels: &[u32]) -> i64 {
        labels
            .iter()
            .rev()
            .filter(|&&d| d != NO_DIGIT)
            .fold(0, |v, &d| v * 10 + i64::from(d))
    }

    /// Every plain arithmetic reply (each demo's and the final one) is
    /// probed at each digit it writes, with operands and an answer that agree
    /// with the example; other families are not probed.
    /// An encoder with the default settings' vocabulary.
    fn test_encoder(name: &str) -> Result<Encoder> {
        let settings = Settings::default();
        let vocab_path = std::env::temp_dir().join(format!(
            "train-tiny-test-{name}-{}.gguf",
            std::process::id()
        ));
        build_vocabulary(&settings, &vocab_path)?;
        let encoder = Encoder::new(&vocab_path);
        std::fs::remove_file(&vocab_path).ok();
        encoder
    }

    /// Every chain-of-thought reply is probed at each digit it writes, all
    /// with the labels of its sum: the last reply's name the example's
    /// answer.
    #[test]
    fn reasoning_probe_labels_cover_every_digit_of_each_reply() -> Result<()> {
        let encoder = test_encoder("reasoning")?;
        let mut stream = TaskStream::training(2);
        for demos in 0..4 {
            let example = stream.sample(TaskFamily::ReasonedArithmetic, demos);
            let sequence = encoder.encode(&example)?;
            assert!(sequence.probe_labels.is_empty());
            let written_digits: Vec<usize> = (0..sequence.tokens.len())
                .filter(|&i| sequence.targets[i])
                .filter(|&i| {
                    let text = encoder.token_text(sequence.tokens[i]);
                    text.len() == 1 && text.as_bytes()[0].is_ascii_digit()
                })
                .collect();
            let probed: Vec<usize> = sequence
                .reasoning_probe_labels
                .iter()
                .map(|&(i, _)| i)
                .collect();
            assert_eq!(probed, written_digits);
            for (_, labels) in &sequence.reasoning_probe_labels {
                let (answer, a, b) = (
                    number(&labels[..3]),
                    number(&labels[3..5]),
                    number(&labels[5..7]),
                );
                assert!(a + b == answer || a - b == answer, "{labels:?}");
            }
            let (_, last) = sequence
                .reasoning_probe_labels
                .last()
                .context("no probed digit")?;
            assert_eq!(*example.expected(), serde_json::json!(number(&last[..3])));
        }
        Ok(())
    }

    #[test]
    fn probe_labels_name_the_operands_and_the_answer() -> Result<()> {
        let encoder = test_encoder("plain")?;
        let mut stream = TaskStream::training(1);
        for demos in 0..4 {
            for _ in 0..10 {
                let example = stream.sample(TaskFamily::Arithmetic, demos);
                let sequence = encoder.encode(&example)?;
                let mut replies: Vec<Vec<(usize, [u32; PROBE_PLACES])>> = Vec::new();
                for &(index, labels) in &sequence.probe_labels {
                    match replies.last_mut() {
                        Some(reply) if reply.last().is_some_and(|(i, _)| i + 1 == index) => {
                            reply.push((index, labels))
                        }
                        _ => replies.push(vec![(index, labels)]),
                    }
                }
                assert_eq!(replies.len(), demos + 1, "{:?}", sequence.probe_labels);
                for reply in &replies {
                    let labels = reply[0].1;
                    let written: String = reply
                        .iter()
                        .map(|&(index, _)| encoder.token_text(sequence.tokens[index]))
                        .collect();
                    let answer = number(&labels[..3]);
                    assert_eq!(written, answer.to_string());
                    let (a, b) = (number(&labels[3..5]), number(&labels[5..7]));
                    assert!(a + b == answer || a - b == answer, "{labels:?}");
                }
                let answer = number(&replies[demos][0].1[..3]);
                let expected = example.expected();
                assert!(
                    *expected == serde_json::json!(answer)
                        || *expected == serde_json::json!(answer.to_string()),
                    "{expected} vs {answer}"
                );
            }
        }
        for family in [
            TaskFamily::Capital,
            TaskFamily::Words,
            TaskFamily::ReasonedArithmetic,
        ] {
            let sequence = encoder.encode(&stream.sample(family, 2))?;
            assert!(sequence.probe_labels.is_empty());
        }
        Ok(())
    }
}
