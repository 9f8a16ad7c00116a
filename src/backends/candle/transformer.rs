//! One decoder-only transformer for the GGUF families this backend runs
//! (`family.rs`: llama, qwen2, qwen3, gemma2, gemma3, phi3), computed with
//! candle's quantized kernels from the blocks of `layers.rs`.
//!
//! Why our own and not candle-transformers' `quantized_*` models: their KV
//! caches are private and can only be cleared, so every call re-read its
//! whole prompt. Here the cache knows which tokens it holds and is cut back
//! to the prefix a new prompt shares with them (a DSPy call repeats the
//! system message and demos). The token embedding also stays quantized
//! (candle's models dequantize it to F32, 4 bytes a weight), RoPE is
//! computed per call (no family is capped at precomputed positions), and
//! each family is computed as llama.cpp computes it (Gemma's sliding window
//! masks prefill and decode alike).

use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::quantized::{QTensor, gguf_file};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_transformers::quantized_nn::RmsNorm;

use super::family::{Architecture, Family};
use super::kv_cache::LayerCache;
use super::layers::{Layer, Rope, Step, TensorSource, attention_mask, soft_cap};
use super::weight::Weight;
use crate::gguf::GgufHeader;

/// The model and its KV cache, with the tokens the cache holds.
#[derive(Debug)]
pub(super) struct Transformer {
    embedding: Arc<QTensor>,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Weight,
    global_rope: Rope,
    local_rope: Rope,
    arch: Architecture,
    device: Device,
    cache: Vec<LayerCache>,
    /// The tokens whose keys and values are in `cache`, in order.
    cached_tokens: Vec<u32>,
}

impl Transformer {
    /// Reads the weights of a `family` model; `header` is the same file's.
    /// `progress` hears the fraction of layers read.
    pub(super) fn load<R: Read + Seek>(
        family: Family,
        header: &GgufHeader,
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        progress: &dyn Fn(f32),
    ) -> Result<Self, String> {
        let arch = Architecture::from_header(family, header)?;
        let mut source = TensorSource {
            content,
            reader,
            device,
            rms_eps: arch.rms_eps,
        };
        let embedding = Arc::new(source.tensor("token_embd.weight")?);
        // Files with tied embeddings have no `output.weight`: the one table
        // serves both ends.
        let output = if source.has("output.weight") {
            source.matmul("output.weight")?
        } else {
            Weight::shared(Arc::clone(&embedding)).map_err(|e| e.to_string())?
        };
        let factors = if source.has("rope_freqs.weight") {
            let factors = source.tensor("rope_freqs.weight")?.dequantize(&Device::Cpu);
            Some(
                factors
                    .and_then(|f| f.flatten_all()?.to_vec1::<f32>())
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        if source.has("blk.0.rope_factors_long.weight") || source.has("rope_factors_long.weight") {
            tracing::warn!(
                "LongRoPE factors are not applied by candle; exact within the original context"
            );
        }
        let mut layers = Vec::with_capacity(arch.layers);
        for index in 0..arch.layers {
            progress(index as f32 / arch.layers.max(1) as f32);
            layers.push(Layer::load(&arch, index, &mut source)?);
        }
        let neox = family.rope_is_neox();
        Ok(Transformer {
            embedding,
            norm: source.norm("output_norm.weight")?,
            output,
            global_rope: Rope::new(arch.rope, arch.head_dim, factors.as_deref(), neox),
            local_rope: Rope::new(arch.local_rope, arch.head_dim, factors.as_deref(), neox),
            cache: (0..arch.layers).map(|_| LayerCache::default()).collect(),
            layers,
            arch,
            device: device.clone(),
            cached_tokens: Vec::new(),
        })
    }

    /// Empties the KV cache.
    pub(super) fn clear_cache(&mut self) {
        self.truncate_cache(0);
    }

    /// Keeps the longest prefix of the cache that `prompt` starts with, but
    /// never all of `prompt` (its last token is read again for its logits).
    /// Returns how many positions were kept.
    pub(super) fn keep_shared_prefix(&mut self, prompt: &[u32]) -> usize {
        let shared = self
            .cached_tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len().saturating_sub(1));
        self.truncate_cache(shared);
        shared
    }

    /// Keeps the first `positions` positions of the cache.
    pub(super) fn truncate_cache(&mut self, positions: usize) {
        if positions >= self.cached_tokens.len() {
            return;
        }
        self.cached_tokens.truncate(positions);
        for layer in &mut self.cache {
            layer.truncate(positions);
        }
    }

    /// Reads `tokens` after the cached ones and returns the logits for the
    /// token after the last, as a vector.
    pub(super) fn next_logits(&mut self, tokens: &[u32]) -> crate::Result<Vec<f32>> {
        self.logits_rows(tokens, 1)
            .map(|rows| rows.into_iter().next().unwrap_or_default())
    }

    /// Reads `tokens` after the cached ones and returns the logits after
    /// each of the last `rows` of them (at least one), in order.
    pub(super) fn logits_rows(
        &mut self,
        tokens: &[u32],
        rows: usize,
    ) -> crate::Result<Vec<Vec<f32>>> {
        self.forward(tokens, rows)
            .and_then(|logits| logits.to_vec2::<f32>())
            .map_err(|e| crate::Error::inference("candle", "the forward pass failed", e))
    }

    /// Reads `tokens` after the cached ones and returns the logits
    /// `(rows, vocab)` after each of the last `rows`. On an error the cache
    /// is emptied, so it never holds a half-written step.
    fn forward(&mut self, tokens: &[u32], rows: usize) -> candle_core::Result<Tensor> {
        let result = self.run_layers(tokens, rows);
        match result {
            Ok(logits) => {
                self.cached_tokens.extend_from_slice(tokens);
                Ok(logits)
            }
            Err(e) => {
                self.cached_tokens.clear();
                self.cache.iter_mut().for_each(|layer| layer.truncate(0));
                Err(e)
            }
        }
    }

    fn run_layers(&mut self, tokens: &[u32], rows: usize) -> candle_core::Result<Tensor> {
        let len = tokens.len();
        let rows = rows.clamp(1, len.max(1));
        if len == 0 {
            candle_core::bail!("no tokens to read");
        }
        let start = self.cached_tokens.len();
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mut x = self.embedding.embedding(&ids)?;
        if let Some(scale) = self.arch.embedding_scale {
            x = (x * scale)?;
        }
        let step = Step {
            global_rope: self.global_rope.tables(start, len, &self.device)?,
            local_rope: self.local_rope.tables(start, len, &self.device)?,
            global_mask: attention_mask(len, start, None, &self.device)?,
            local_mask: attention_mask(len, start, self.arch.window, &self.device)?,
        };
        let ropes = (&self.global_rope, &self.local_rope);
        for (layer, cache) in self.layers.iter().zip(self.cache.iter_mut()) {
            x = layer.forward(&self.arch, ropes, &x, &step, cache)?;
        }
        // Only the last positions' logits are needed: norm and project them alone.
        let last = x.i((.., len - rows.., ..))?;
        let logits = self
            .output
            .forward(&self.norm.forward(&last)?)?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        match self.arch.final_softcap {
            Some(cap) => soft_cap(&logits, cap),
            None => Ok(logits),
        }
    }
}
