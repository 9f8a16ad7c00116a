//! Writes small llama, qwen2 or qwen3 GGUF models with seeded random weights,
//! a real tokenizer and a chat template, so tests and benchmarks need no download.
//!
//! The tokenizer and template are copied from a vocabulary-only GGUF (such as
//! llama.cpp's `ggml-vocab-deepseek-coder-chat.gguf`) when one is given, or
//! built here: a byte-level BPE vocabulary with ChatML special tokens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::gguf_writer::{Encoding, TensorEntry, write_gguf};
use crate::gguf::{GgufHeader, MetadataValue as Value, gpt2_byte_char};
use crate::{Error, Result};

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit blocks of 32.
    Q8_0,
    /// 4-bit K-quant blocks of 256 (tensors whose rows are not a multiple of
    /// 256 fall back to Q8_0, as llama.cpp's quantizer does).
    Q4K,
}

/// The model family: tensor names and hyperparameter keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestArchitecture {
    /// Llama (also what Mistral and SmolLM files are).
    Llama,
    /// Qwen2: llama plus biases on the Q, K and V projections.
    Qwen2,
    /// Qwen3: llama plus RMS norms on queries and keys.
    Qwen3,
    /// Gemma 2: norms after attention and the FFN, GELU, soft caps, every
    /// other layer attending through a window of [`TEST_SLIDING_WINDOW`]
    /// tokens; tied embeddings.
    Gemma2,
    /// Gemma 3: Gemma 2 with query/key norms, five local layers to one
    /// global, two RoPE bases, no soft caps.
    Gemma3,
    /// Phi-3: fused QKV and gate|up projections.
    Phi3,
}

/// The sliding window of test-built Gemma files: short, so a test prompt
/// reaches past it.
pub const TEST_SLIDING_WINDOW: usize = 16;

impl TestArchitecture {
    /// The GGUF architecture name.
    pub fn name(self) -> &'static str {
        match self {
            TestArchitecture::Llama => "llama",
            TestArchitecture::Qwen2 => "qwen2",
            TestArchitecture::Qwen3 => "qwen3",
            TestArchitecture::Gemma2 => "gemma2",
            TestArchitecture::Gemma3 => "gemma3",
            TestArchitecture::Phi3 => "phi3",
        }
    }
}

/// Where the vocabulary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestTokenizer {
    /// Copy every `tokenizer.*` key from this GGUF file.
    CopyFrom(PathBuf),
    /// A byte-level BPE vocabulary built here, with ChatML special tokens.
    ByteLevel,
}

/// The shape and contents of a test model.
#[derive(Debug, Clone, PartialEq)]
pub struct TestModelSpec {
    /// Transformer blocks.
    pub layers: usize,
    /// Model width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Trained context length written to the header.
    pub context_length: usize,
    /// Storage type of the 2-D weights (norms are always F32).
    pub weights: WeightType,
    /// Seed of the random weights.
    pub seed: u64,
    /// Standard deviation of the random weights.
    pub scale: f32,
    /// The vocabulary.
    pub tokenizer: TestTokenizer,
    /// The family: tensors and hyperparameter key prefix.
    pub family: TestArchitecture,
    /// `general.architecture`, normally the family's name; anything else
    /// makes a file no engine should accept.
    pub architecture: String,
    /// No `output.weight`: the token embedding also projects to the
    /// vocabulary, as in Qwen2.5-0.5B's file.
    pub tied_embeddings: bool,
    /// Replaces the vocabulary's chat template (`Some("")` removes it).
    pub chat_template: Option<String>,
}

impl TestModelSpec {
    /// A tiny model (2 layers, width 64) that loads and runs in milliseconds.
    pub fn tiny(tokenizer: TestTokenizer) -> Self {
        TestModelSpec {
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            context_length: 4096,
            weights: WeightType::F32,
            seed: 42,
            scale: 0.5,
            tokenizer,
            family: TestArchitecture::Llama,
            architecture: "llama".into(),
            tied_embeddings: false,
            chat_template: None,
        }
    }

    /// Qwen2.5-0.5B's shape (24 layers, width 896, 14/2 heads, FFN 4864): runs
    /// at that model's real speed, for benchmarks.
    pub fn qwen2_5_0_5b_shape(tokenizer: TestTokenizer, weights: WeightType) -> Self {
        TestModelSpec {
            layers: 24,
            hidden: 896,
            heads: 14,
            kv_heads: 2,
            ffn: 4864,
            context_length: 32768,
            weights,
            seed: 7,
            scale: 0.02,
            tokenizer,
            family: TestArchitecture::Llama,
            architecture: "llama".into(),
            tied_embeddings: false,
            chat_template: None,
        }
    }

    /// Llama-3.1-8B's shape (32 layers, width 4096, 32/8 heads, FFN 14336).
    pub fn llama_3_1_8b_shape(tokenizer: TestTokenizer, weights: WeightType) -> Self {
        TestModelSpec {
            layers: 32,
            hidden: 4096,
            heads: 32,
            kv_heads: 8,
            ffn: 14336,
            context_length: 131_072,
            weights,
            seed: 8,
            scale: 0.02,
            tokenizer,
            family: TestArchitecture::Llama,
            architecture: "llama".into(),
            tied_embeddings: false,
            chat_template: None,
        }
    }

    /// Sets the weight type.
    #[must_use]
    pub fn with_weights(mut self, weights: WeightType) -> Self {
        self.weights = weights;
        self
    }

    /// Sets the seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the family (and `general.architecture` to its name). Gemma 2
    /// files have no output matrix: the embedding is tied.
    #[must_use]
    pub fn with_family(mut self, family: TestArchitecture) -> Self {
        self.family = family;
        self.architecture = family.name().into();
        if family == TestArchitecture::Gemma2 {
            self.tied_embeddings = true;
        }
        self
    }

    /// Replaces the chat template of the file (an empty one removes it).
    #[must_use]
    pub fn with_chat_template(mut self, template: impl Into<String>) -> Self {
        self.chat_template = Some(template.into());
        self
    }

    /// Sets `general.architecture` alone.
    #[must_use]
    pub fn with_architecture(mut self, architecture: impl Into<String>) -> Self {
        self.architecture = architecture.into();
        self
    }

    /// Writes the model to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let fail = |e: &dyn std::fmt::Display| {
            Error::config(format!("writing test model {}: {e}", path.display()))
        };
        if self.heads == 0
            || !self.hidden.is_multiple_of(self.heads)
            || self.kv_heads == 0
            || !self.heads.is_multiple_of(self.kv_heads)
        {
            return Err(fail(
                &"heads must divide the width and be a multiple of kv_heads",
            ));
        }
        if self.family == TestArchitecture::Gemma2 && !self.tied_embeddings {
            return Err(fail(&"gemma2 files tie the output to the embedding"));
        }
        let mut metadata = self.tokenizer_metadata().map_err(|e| fail(&e))?;
        let vocab = match metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len(),
            _ => return Err(fail(&"the tokenizer has no token list")),
        };
        metadata.extend(self.hyperparameters(vocab));
        match self.chat_template.as_deref() {
            Some("") => {
                metadata.remove("tokenizer.chat_template");
            }
            Some(template) => {
                metadata.insert(
                    "tokenizer.chat_template".into(),
                    Value::String(template.into()),
                );
            }
            None => {}
        }

        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut tensors: Vec<TensorEntry> = Vec::new();
        for (name, rows, cols) in self.weight_shapes(vocab) {
            let values = random_values(&mut rng, rows * cols, self.scale);
            tensors.push(TensorEntry::new(
                name,
                rows,
                &values,
                storage_type(cols, self.weights),
            ));
        }
        let norm = |name: String, n: usize| TensorEntry::new(name, 1, &vec![1.0; n], Encoding::F32);
        // Family extras come from a second stream, so llama weights stay the same.
        let mut extra_rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(1));
        for layer in 0..self.layers {
            tensors.push(norm(format!("blk.{layer}.attn_norm.weight"), self.hidden));
            tensors.push(norm(format!("blk.{layer}.ffn_norm.weight"), self.hidden));
            for (name, len) in self.extra_vectors() {
                let name = format!("blk.{layer}.{name}");
                let mut values = random_values(&mut extra_rng, len, self.scale);
                // A family's own norms scale around 1, each a little
                // differently, so reading the wrong one shows in the logits.
                if name.contains("norm") {
                    values.iter_mut().for_each(|v| *v = 1.0 + *v * 0.4);
                }
                tensors.push(TensorEntry::new(name, 1, &values, Encoding::F32));
            }
        }
        tensors.push(norm("output_norm.weight".into(), self.hidden));

        let mut metadata: Vec<(String, Value)> = metadata.into_iter().collect();
        metadata.sort_by(|a, b| a.0.cmp(&b.0));
        write_gguf(path, &metadata, &tensors).map_err(|e| fail(&e))
    }

    /// The architecture keys of the header (`general.architecture`,
    /// `<family>.block_count`, …) for a vocabulary of `vocab` tokens: what a
    /// writer of this shape's weights puts beside the tokenizer.
    pub fn hyperparameters(&self, vocab: usize) -> Vec<(String, Value)> {
        let head_dim = self.hidden / self.heads.max(1);
        let u32_of = |n: usize| Value::Uint(n as u64);
        let family_keys: Vec<(&str, Value)> = match self.family {
            TestArchitecture::Gemma2 => vec![
                ("attention.sliding_window", u32_of(TEST_SLIDING_WINDOW)),
                ("attn_logit_softcapping", Value::Float(50.0)),
                ("final_logit_softcapping", Value::Float(30.0)),
            ],
            TestArchitecture::Gemma3 => vec![
                ("attention.sliding_window", u32_of(TEST_SLIDING_WINDOW)),
                ("rope.freq_base_swa", Value::Float(10_000.0)),
            ],
            _ => vec![],
        };
        let rope_base = match self.family {
            TestArchitecture::Gemma3 => 1_000_000.0,
            _ => 10_000.0,
        };
        [
            (
                "general.architecture",
                Value::String(self.architecture.clone()),
            ),
            (
                "general.name",
                Value::String("dsrs-local test model".into()),
            ),
            ("block_count", u32_of(self.layers)),
            ("context_length", u32_of(self.context_length)),
            ("embedding_length", u32_of(self.hidden)),
            ("feed_forward_length", u32_of(self.ffn)),
            ("attention.head_count", u32_of(self.heads)),
            ("attention.head_count_kv", u32_of(self.kv_heads)),
            ("attention.key_length", u32_of(head_dim)),
            ("attention.value_length", u32_of(head_dim)),
            ("rope.dimension_count", u32_of(head_dim)),
            ("rope.freq_base", Value::Float(rope_base)),
            ("attention.layer_norm_rms_epsilon", Value::Float(1e-5)),
            ("vocab_size", u32_of(vocab)),
        ]
        .into_iter()
        .chain(family_keys)
        .map(|(key, value)| {
            let key = if key.starts_with("general.") {
                key.to_string()
            } else {
                format!("{}.{key}", self.family.name())
            };
            (key, value)
        })
        .collect()
    }

    /// The weight matrices (name, rows, row length), in the order they are drawn.
    fn weight_shapes(&self, vocab: usize) -> Vec<(String, usize, usize)> {
        let head_dim = self.hidden / self.heads.max(1);
        let q = self.heads * head_dim;
        let kv = self.kv_heads * head_dim;
        let mut shapes = vec![("token_embd.weight".to_string(), vocab, self.hidden)];
        let matrices = match self.family {
            // Phi-3 fuses Q|K|V and gate|up into one matrix each.
            TestArchitecture::Phi3 => vec![
                ("attn_qkv", q + 2 * kv, self.hidden),
                ("attn_output", self.hidden, q),
                ("ffn_up", 2 * self.ffn, self.hidden),
                ("ffn_down", self.hidden, self.ffn),
            ],
            _ => vec![
                ("attn_q", q, self.hidden),
                ("attn_k", kv, self.hidden),
                ("attn_v", kv, self.hidden),
                ("attn_output", self.hidden, q),
                ("ffn_gate", self.ffn, self.hidden),
                ("ffn_up", self.ffn, self.hidden),
                ("ffn_down", self.hidden, self.ffn),
            ],
        };
        for layer in 0..self.layers {
            for &(name, rows, cols) in &matrices {
                shapes.push((format!("blk.{layer}.{name}.weight"), rows, cols));
            }
        }
        if !self.tied_embeddings {
            shapes.push(("output.weight".to_string(), vocab, self.hidden));
        }
        shapes
    }

    /// Per-layer vectors a family adds: (tensor name after `blk.N.`, length).
    fn extra_vectors(&self) -> Vec<(&'static str, usize)> {
        let head_dim = self.hidden / self.heads.max(1);
        match self.family {
            TestArchitecture::Llama | TestArchitecture::Phi3 => vec![],
            TestArchitecture::Qwen2 => vec![
                ("attn_q.bias", self.heads * head_dim),
                ("attn_k.bias", self.kv_heads * head_dim),
                ("attn_v.bias", self.kv_heads * head_dim),
            ],
            TestArchitecture::Qwen3 => vec![
                ("attn_q_norm.weight", head_dim),
                ("attn_k_norm.weight", head_dim),
            ],
            TestArchitecture::Gemma2 => vec![
                ("post_attention_norm.weight", self.hidden),
                ("post_ffw_norm.weight", self.hidden),
            ],
            TestArchitecture::Gemma3 => vec![
                ("attn_q_norm.weight", head_dim),
                ("attn_k_norm.weight", head_dim),
                ("post_attention_norm.weight", self.hidden),
                ("post_ffw_norm.weight", self.hidden),
            ],
        }
    }

    /// What load sizing reads from the header of the file [`write`](Self::write)
    /// makes, computed without writing it (to plan the large shapes).
    pub fn facts(&self) -> Result<crate::pool::plan::ModelFacts> {
        let metadata = self.tokenizer_metadata().map_err(Error::config)?;
        let vocab = match metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len(),
            _ => return Err(Error::config("the tokenizer has no token list")),
        };
        let bytes =
            |rows: usize, cols: usize| storage_type(cols, self.weights).bytes(rows * cols) as u64;
        let norm_bytes = (self.hidden * 4) as u64;
        let extra_bytes: u64 = self
            .extra_vectors()
            .iter()
            .map(|(_, len)| (len * 4) as u64)
            .sum();
        let mut layer_bytes = vec![2 * norm_bytes + extra_bytes; self.layers];
        let (mut embedding_bytes, mut output_bytes) = (0, norm_bytes);
        for (name, rows, cols) in self.weight_shapes(vocab) {
            let size = bytes(rows, cols);
            let layer = name
                .strip_prefix("blk.")
                .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok());
            match layer {
                Some(layer) => layer_bytes[layer] += size,
                None if name.starts_with("token_embd") => embedding_bytes += size,
                None => output_bytes += size,
            }
        }
        Ok(crate::pool::plan::ModelFacts {
            architecture: self.architecture.clone(),
            layers: self.layers as u32,
            embedding: self.hidden as u64,
            heads: self.heads as u64,
            kv_heads: self.kv_heads as u64,
            head_dim: (self.hidden / self.heads.max(1)) as u64,
            vocab: vocab as u64,
            trained_context: self.context_length as u32,
            layer_bytes,
            output_bytes,
            embedding_bytes,
        })
    }

    fn tokenizer_metadata(&self) -> std::result::Result<HashMap<String, Value>, String> {
        match &self.tokenizer {
            TestTokenizer::CopyFrom(path) => {
                let header = GgufHeader::read(path).map_err(|e| e.to_string())?;
                Ok(header
                    .metadata
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("tokenizer."))
                    .collect())
            }
            TestTokenizer::ByteLevel => Ok(byte_level_tokenizer()),
        }
    }
}

/// `count` values uniform in [-√3σ, √3σ]: standard deviation σ, cheap to draw.
fn random_values(rng: &mut ChaCha8Rng, count: usize, scale: f32) -> Vec<f32> {
    let bound = scale * 3f32.sqrt();
    (0..count)
        .map(|_| rng.random_range(-bound..bound))
        .collect()
}

/// The encoding of a weight matrix with rows of `row_len`.
fn storage_type(row_len: usize, weights: WeightType) -> Encoding {
    match weights {
        WeightType::F32 => Encoding::F32,
        WeightType::F16 => Encoding::F16,
        WeightType::Q8_0 if row_len.is_multiple_of(32) => Encoding::Q8_0,
        WeightType::Q4K if row_len.is_multiple_of(256) => Encoding::Q4K,
        WeightType::Q4K if row_len.is_multiple_of(32) => Encoding::Q8_0,
        WeightType::Q8_0 | WeightType::Q4K => Encoding::F16,
    }
}

/// ChatML special tokens of the byte-level vocabulary.
pub const BYTE_LEVEL_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A byte-level BPE vocabulary: the 256 bytes, a few merges, ChatML specials;
/// `<|im_end|>` ends generation.
fn byte_level_tokenizer() -> HashMap<String, Value> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_byte_char(b).to_string()).collect();
    let mut types: Vec<Value> = vec![Value::Int(1); tokens.len()];
    let space = gpt2_byte_char(b' ');
    let merges: Vec<(String, String)> = [
        ("t", "h"),
        ("th", "e"),
        ("i", "n"),
        ("e", "r"),
        ("a", "n"),
        ("o", "n"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .chain([
        (space.to_string(), "t".to_string()),
        (space.to_string(), "a".to_string()),
    ])
    .collect();
    for (a, b) in &merges {
        tokens.push(format!("{a}{b}"));
        types.push(Value::Int(1));
    }
    let first_special = tokens.len() as u32;
    for special in BYTE_LEVEL_SPECIAL_TOKENS {
        tokens.push(special.to_string());
        types.push(Value::Int(3));
    }
    let chatml = crate::prompt::CHATML_TEMPLATE.to_string();
    HashMap::from([
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                merges
                    .into_iter()
                    .map(|(a, b)| Value::String(format!("{a} {b}")))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::Uint(u64::from(first_special)),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::Uint(u64::from(first_special + 2)),
        ),
        (
            "tokenizer.ggml.padding_token_id".into(),
            Value::Uint(u64::from(first_special)),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(chatml)),
    ])
}
