//! `GET /metrics`: what the server did, as Prometheus text — requests by
//! endpoint and status, tokens in and out, prompt tokens served from the KV
//! cache, time to first token, decode speed, and the engine's queue.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::backend::{EngineStats, Generation};

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Counters of one served model.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    prompt_tokens: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// Microseconds spent decoding, for tokens per second.
    decode_micros: AtomicU64,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    ttft_micros: AtomicU64,
}

impl Metrics {
    /// Counts a finished request.
    pub(crate) fn request(&self, endpoint: &'static str, status: u16) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((endpoint, status)).or_default() += 1;
        }
    }

    /// Counts a generation that started at `started`; `first_token` is when
    /// its first text was streamed (without streaming, the time to the first
    /// token is the time until decoding started).
    pub(crate) fn generation(
        &self,
        generation: &Generation,
        started: Instant,
        first_token: Option<Instant>,
    ) {
        let add = |counter: &AtomicU64, n: usize| counter.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.prompt_tokens, generation.prompt_tokens);
        add(&self.cached_prompt_tokens, generation.cached_prompt_tokens);
        add(&self.completion_tokens, generation.completion_tokens);
        let decode = generation.timings.decode.as_micros();
        self.decode_micros
            .fetch_add(u64::try_from(decode).unwrap_or(u64::MAX), Ordering::Relaxed);
        let ttft = match first_token {
            Some(at) => at.duration_since(started),
            None => started.elapsed().saturating_sub(generation.timings.decode),
        };
        let seconds = ttft.as_secs_f64();
        for (bucket, bound) in self.ttft_buckets.iter().zip(TTFT_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
        self.ttft_micros.fetch_add(
            u64::try_from(ttft.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The Prometheus text, with the engine's `(running, waiting)` calls and
    /// what it holds.
    pub(crate) fn render(&self, (running, waiting): (usize, usize), engine: EngineStats) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = String::new();
        header(
            &mut out,
            "dsrs_requests_total",
            "counter",
            "HTTP requests by endpoint and status.",
        );
        if let Ok(requests) = self.requests.lock() {
            for ((endpoint, status), count) in requests.iter() {
                let _ = writeln!(
                    out,
                    "dsrs_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}"
                );
            }
        }
        let decode_seconds = get(&self.decode_micros) as f64 / 1e6;
        let completion = get(&self.completion_tokens);
        let speed = if decode_seconds > 0.0 {
            completion as f64 / decode_seconds
        } else {
            0.0
        };
        let scalars: [(&str, &str, &str, String); 16] = [
            (
                "dsrs_prompt_tokens_total",
                "counter",
                "Prompt tokens of generations.",
                get(&self.prompt_tokens).to_string(),
            ),
            (
                "dsrs_cached_prompt_tokens_total",
                "counter",
                "Of those, tokens served from the KV cache (prefix reuse).",
                get(&self.cached_prompt_tokens).to_string(),
            ),
            (
                "dsrs_completion_tokens_total",
                "counter",
                "Tokens generated.",
                completion.to_string(),
            ),
            (
                "dsrs_decode_seconds_total",
                "counter",
                "Time spent decoding replies.",
                format!("{decode_seconds:.6}"),
            ),
            (
                "dsrs_decode_tokens_per_second",
                "gauge",
                "Tokens generated per second of decoding, since start.",
                format!("{speed:.3}"),
            ),
            (
                "dsrs_running_requests",
                "gauge",
                "Calls running on the engine.",
                running.to_string(),
            ),
            (
                "dsrs_queue_depth",
                "gauge",
                "Calls waiting for the engine.",
                waiting.to_string(),
            ),
            (
                "dsrs_active_sequences",
                "gauge",
                "Generations on a sequence of the KV cache now.",
                engine.active_sequences.to_string(),
            ),
            (
                "dsrs_reserved_kv_cells",
                "gauge",
                "KV cells those generations reserve (prompt plus reply budget).",
                engine.reserved_cells.to_string(),
            ),
            (
                "dsrs_sampled_tokens_total",
                "counter",
                "Tokens the engine sampled, stopped generations included.",
                engine.sampled_tokens.to_string(),
            ),
            (
                "dsrs_forwarded_tokens_total",
                "counter",
                "Of those, forced tokens read in the pass before their own and kept.",
                engine.forwarded_tokens.to_string(),
            ),
            (
                "dsrs_forward_passes_total",
                "counter",
                "Forward passes of the model (one per batch of all sequences).",
                engine.passes.to_string(),
            ),
            (
                "dsrs_forward_pass_tokens_total",
                "counter",
                "Tokens those passes read, prompts and replies.",
                engine.pass_tokens.to_string(),
            ),
            (
                "dsrs_forward_pass_logit_rows_total",
                "counter",
                "Of those tokens, the ones whose logits the passes returned.",
                engine.pass_logit_rows.to_string(),
            ),
            (
                "dsrs_forward_pass_seconds_total",
                "counter",
                "Time in those passes, until their logits were readable.",
                engine.pass_time.as_secs_f64().to_string(),
            ),
            (
                "dsrs_token_choice_seconds_total",
                "counter",
                "Time choosing tokens from the logits (grammar, sampling, stops).",
                engine.token_choice_time.as_secs_f64().to_string(),
            ),
        ];
        for (name, kind, help, value) in scalars {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        let name = "dsrs_time_to_first_token_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Time from a request's arrival to its first token.",
        );
        for (bucket, bound) in self.ttft_buckets.iter().zip(TTFT_BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", get(bucket));
        }
        let count = get(&self.ttft_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {:.6}", get(&self.ttft_micros) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
