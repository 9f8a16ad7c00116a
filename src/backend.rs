//! The seam between the generic adapter and an inference engine.
//!
//! A backend knows its model's chat template, counts tokens, and runs one
//! blocking generation for a rendered prompt. Everything else — DSPy
//! formatting, rendering, parsing, building the output grammar, concurrency
//! limits, usage accounting — lives once in [`crate::LocalAdapter`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::Result;
use crate::gguf::GgufHeader;
use crate::hardware::{AcceleratorKind, DeviceId};
use crate::model_card::ModelCard;
use crate::prompt::{ChatTemplate, OutputConstraint};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; `0.0` (or below, or NaN) means greedy: always the most likely token.
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add up to this (1.0 = off).
    pub top_p: f32,
    /// Keep only this many most likely tokens (0 = off).
    pub top_k: usize,
    /// Random seed; the same seed, prompt and settings give the same reply.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }

    /// True when the temperature makes decoding greedy (at most 0, or NaN).
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0
    }
}

/// One generation: a rendered prompt and how to continue it.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The exact prompt text (already through the chat template).
    pub prompt: String,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Extra strings that end the reply (the completed marker always does).
    pub stop: Vec<String>,
    /// The grammar the reply must follow, if any.
    pub constraint: Option<OutputConstraint>,
    /// How the caller follows and stops the generation while it runs.
    pub control: GenerationControl,
}

impl GenerationRequest {
    /// A greedy request for `prompt` of at most `max_tokens` tokens, with no
    /// stop string and no constraint.
    pub fn new(prompt: impl Into<String>, max_tokens: usize) -> Self {
        GenerationRequest {
            prompt: prompt.into(),
            sampling: Sampling::greedy(),
            max_tokens,
            stop: Vec::new(),
            constraint: None,
            control: GenerationControl::default(),
        }
    }
}

/// A caller's hold on a running generation: it can stop it, and, when
/// streaming, receives the reply's text as it is generated.
///
/// Clones share the same flag and stream. A backend checks the flag at every
/// decode step, so a stopped generation ends within one step and frees what
/// it held ([`FinishReason::Cancelled`]).
#[derive(Debug, Clone, Default)]
pub struct GenerationControl {
    cancelled: Arc<AtomicBool>,
    text: Option<mpsc::UnboundedSender<String>>,
}

impl GenerationControl {
    /// A control that streams: text reaches the returned [`TextStream`] as
    /// it is confirmed (never a stop string or half a character).
    pub fn streaming() -> (Self, TextStream) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let control = GenerationControl {
            cancelled: Arc::default(),
            text: Some(sender),
        };
        (control, TextStream(receiver))
    }

    /// Asks the generation to stop at its next step.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether the generation was asked to stop, or its stream's reader is gone.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.text.as_ref().is_some_and(|s| s.is_closed())
    }

    /// Sends confirmed reply text to the stream, if there is one.
    pub(crate) fn emit(&self, text: String) {
        if let Some(sender) = &self.text
            && !text.is_empty()
        {
            // A reader that went away shows up in `is_cancelled`.
            let _ = sender.send(text);
        }
    }
}

/// The reply's text as it is generated; ends when the generation ends.
#[derive(Debug)]
pub struct TextStream(mpsc::UnboundedReceiver<String>);

impl TextStream {
    /// The next piece of text, or `None` once the generation has ended.
    pub async fn next(&mut self) -> Option<String> {
        self.0.recv().await
    }

    /// A piece already sent, without waiting: what is left once the
    /// generation has returned (a backend that keeps a clone of the control
    /// past its return would otherwise keep the stream open).
    pub(crate) fn try_next(&mut self) -> Option<String> {
        self.0.try_recv().ok()
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token, the completed marker or a stop string.
    Stop,
    /// `max_tokens` reached, or the context window is full.
    Length,
    /// The output grammar reached its end, so nothing more could follow.
    Constraint,
    /// The caller stopped it ([`GenerationControl::cancel`], or a dropped call).
    Cancelled,
}

/// Wall-clock time spent in each phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Evaluating the prompt.
    pub prefill: Duration,
    /// Generating the reply.
    pub decode: Duration,
    /// Of `decode`, the CPU time spent choosing tokens from the logits: the
    /// output constraint's mask and advance, and the sampler.
    pub token_choice: Duration,
}

/// What a backend returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The reply text.
    pub text: String,
    /// Tokens in the prompt, as the model's tokenizer counts them.
    pub prompt_tokens: usize,
    /// Of those, how many were served from the KV cache of an earlier request.
    pub cached_prompt_tokens: usize,
    /// Tokens generated for the reply (end-of-generation tokens excluded).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Time per phase.
    pub timings: Timings,
}

/// A model a backend has loaded: its facts and its tokenizer.
pub trait LocalModel: Send + Sync + 'static {
    /// The model's facts (file, architecture, template, vocabulary, context).
    fn card(&self) -> &ModelCard;

    /// Tokenizes `text` as llama.cpp does (special-token text becomes the
    /// special token), adding a BOS token only when `add_bos`.
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32>;

    /// Tokenizes `text`, adding no BOS.
    fn tokenize(&self, text: &str) -> Vec<u32> {
        self.encode(text, false)
    }

    /// Tokenizes a rendered prompt: a BOS is added only when the model wants
    /// one and the chat template did not already print it. An empty or
    /// white-space prompt is [`Error::EmptyPrompt`](crate::Error::EmptyPrompt).
    fn tokenize_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.card()
            .tokenize_prompt(prompt, |text, add_bos| Ok(self.encode(text, add_bos)))
    }
}

/// An inference engine with one model loaded.
///
/// Implementations must be cheap to share (`Arc`) and safe to call from many
/// threads at once; [`generate`](Backend::generate) blocks and is called on
/// tokio's blocking pool.
pub trait Backend: Send + Sync + 'static {
    /// The model it runs.
    fn loaded_model(&self) -> &dyn LocalModel;

    /// The context window requests run with.
    fn context_length(&self) -> usize;

    /// Runs one generation to the end. Blocking.
    fn generate(&self, request: &GenerationRequest) -> Result<Generation>;

    /// A short name for logs and errors (`"llama.cpp"`, `"candle"`).
    fn name(&self) -> &'static str {
        self.loaded_model().card().backend()
    }

    /// The model's chat template (its own, or its architecture's).
    fn chat_template(&self) -> &ChatTemplate {
        self.loaded_model().card().template()
    }

    /// Counts the tokens of a rendered prompt the way [`generate`](Backend::generate) would.
    fn count_tokens(&self, prompt: &str) -> Result<usize> {
        Ok(self.loaded_model().tokenize_prompt(prompt)?.len())
    }

    /// What the engine holds now and has done: how a caller checks that a
    /// stopped or failed generation freed its sequence and cells.
    fn stats(&self) -> EngineStats;
}

/// What an engine holds now and has done ([`Backend::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Generations running now (each on a sequence of the KV cache).
    pub active_sequences: usize,
    /// KV cells they reserve: prompt plus reply budget each.
    pub reserved_cells: usize,
    /// Tokens sampled since the engine started, all generations together.
    pub sampled_tokens: usize,
    /// Of those, tokens the output constraint forced that were read in the
    /// pass before their own and kept (each a pass saved;
    /// `EngineConfig::fast_forward`).
    pub forwarded_tokens: usize,
    /// The most generations that have run at once: how much batching a
    /// workload actually got.
    pub peak_sequences: usize,
    /// Forward passes of the model since the engine started (one per
    /// batch: with several sequences, one pass reads a token of each; 0 for
    /// an engine that runs no model in this process, such as the remote one).
    pub passes: usize,
    /// Tokens those passes read, prompts and replies: divided by
    /// [`passes`](Self::passes), how wide the batches were.
    pub pass_tokens: usize,
    /// Of those tokens, the ones whose logits the passes returned (a
    /// generating sequence's token and each forced token read ahead with
    /// it; on candle also the last token of each prompt chunk): each is a
    /// row of the vocabulary's size, copied back from the device on a GPU.
    pub pass_logit_rows: usize,
    /// Time in those passes, until their logits were readable.
    pub pass_time: Duration,
    /// Time choosing tokens from their logits (grammar masks, sampling,
    /// stops), as the engine waited for it: with sequences choosing on
    /// several threads, the slowest thread's share. Computing drafts (the
    /// forced tokens read ahead) before a pass is not counted.
    pub token_choice_time: Duration,
}

/// Where a model goes when it loads: the part of a [`LoadPlan`](crate::pool::plan::LoadPlan)
/// a backend reads. It names no engine, so the pool can plan for any backend
/// and every backend reads the same facts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    /// The accelerator that takes the offloaded layers (the main one when
    /// they are split over several); `None` runs on the CPU.
    pub device: Option<DeviceId>,
    /// Repeating layers on the accelerators, all of them together.
    pub gpu_layers: u32,
    /// Several accelerators: each one's share of the offloaded layers, the
    /// main one first (llama.cpp's `devices` and layer split). Empty when one
    /// device takes them.
    pub split: Vec<DeviceShare>,
    /// Split each layer's matrices by rows across [`split`](Self::split)'s
    /// devices instead of giving each device whole layers (llama.cpp's
    /// `split_mode` row; the KV cache stays on the main device).
    pub split_rows: bool,
    /// Layers in the model.
    pub total_layers: u32,
    /// Whether the output head is on the device too.
    pub output_on_device: bool,
    /// Context length adapters on the model use unless they set one.
    pub context_length: usize,
}

impl Placement {
    /// Everything on the CPU.
    pub fn cpu(total_layers: u32, context_length: usize) -> Self {
        Placement {
            device: None,
            gpu_layers: 0,
            split: Vec::new(),
            split_rows: false,
            total_layers,
            output_on_device: false,
            context_length,
        }
    }

    /// Whether the whole model (every layer and the output head) is on the device.
    pub fn whole_model_on_device(&self) -> bool {
        self.device.is_some() && self.gpu_layers >= self.total_layers && self.output_on_device
    }
}

/// One device's share of a model split over several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceShare {
    /// The device.
    pub device: DeviceId,
    /// Repeating layers it holds (with a row split: every layer's share of rows).
    pub layers: u32,
}

/// A model type a backend loads from a GGUF file: what
/// [`ModelPool`](crate::ModelPool) is generic over. Each backend's model
/// implements it; the pool plans, then calls [`load_placed`](Self::load_placed).
pub trait LoadModel: Send + Sync + Sized + 'static {
    /// The backend's name (`"llama.cpp"`, `"candle"`).
    const BACKEND: &'static str;

    /// Whether part of a model can go to a device and the rest stay on the
    /// CPU (llama.cpp), or a model runs whole on one device (candle).
    const SPLITS_LAYERS: bool;

    /// Whether this build of the backend can run models on devices of `kind`.
    fn drives(kind: AcceleratorKind) -> bool;

    /// Loads the file whose header is `header` as `placement` says.
    fn load_placed(header: &GgufHeader, placement: &Placement) -> Result<Self>;
}
