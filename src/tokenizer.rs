//! A tokenizer built from a GGUF file's `tokenizer.*` keys alone (no
//! `tokenizer.json`), giving the same token ids as llama.cpp.
//!
//! - `tokenizer.ggml.model = "llama"`: SentencePiece BPE by token scores, with
//!   `▁` for spaces, a space prefix and `<0xXX>` byte fallback (llama.cpp's
//!   `llm_tokenizer_spm`).
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE by merge rank, after the
//!   pre-tokenizer regexes llama.cpp uses for the file's `tokenizer.ggml.pre`
//!   (`llm_tokenizer_bpe`).
//!
//! Both split out special tokens (control, user-defined, unknown) first, as
//! llama.cpp does with special-token parsing on.
//!
//! Used where llama.cpp's own tokenizer is not at hand: the candle backend,
//! and the remote backend (which counts a prompt's tokens before sending it).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;

use crate::gguf::{GgufHeader, MetadataValue, gpt2_byte_char as byte_to_char};
use crate::model_card::TokenTexts;
use crate::{Error, Result};

const TOKEN_TYPE_NORMAL: u64 = 1;
const TOKEN_TYPE_UNKNOWN: u64 = 2;
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;
const TOKEN_TYPE_BYTE: u64 = 6;

/// A GGUF vocabulary with llama.cpp's tokenization rules.
#[derive(Debug)]
pub(crate) struct GgufTokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// Special tokens, longest text first (the order llama.cpp splits in).
    specials: Vec<(String, u32)>,
    kind: Kind,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    end_of_generation: Vec<u32>,
    /// Bytes of each token as it appears in generated text.
    pieces: Vec<Vec<u8>>,
}

#[derive(Debug)]
enum Kind {
    SentencePiece {
        scores: Vec<f32>,
        add_space_prefix: bool,
    },
    BytePairs {
        ranks: HashMap<(String, String), usize>,
        pre_tokenizer: Vec<Regex>,
        /// Llama-3-style vocabularies take a whole word that is a token as is.
        ignore_merges: bool,
    },
}

fn tokenizer_error(reason: impl Into<String>) -> Error {
    Error::Tokenizer {
        backend: "GGUF",
        reason: reason.into(),
    }
}

impl GgufTokenizer {
    /// The vocabulary as the shared model card describes it.
    pub(crate) fn token_texts(&self) -> TokenTexts {
        let pieces = self.pieces().to_vec();
        let special_names = pieces
            .iter()
            .enumerate()
            .filter(|(_, piece)| piece.is_empty())
            .filter_map(|(id, _)| {
                let id = id as u32;
                let name = self.token_text(id)?;
                (!name.is_empty()).then(|| (id, name.as_bytes().to_vec()))
            })
            .collect();
        let text_of = |id: Option<u32>| {
            id.and_then(|id| self.token_text(id))
                .unwrap_or("")
                .to_string()
        };
        TokenTexts {
            pieces,
            special_names,
            end_of_generation: self.end_of_generation().to_vec(),
            bos: self.bos(),
            adds_bos: self.adds_bos(),
            bos_text: text_of(self.bos()),
            eos_text: text_of(self.eos()),
        }
    }
    /// Builds the tokenizer from a GGUF header.
    pub(crate) fn from_header(header: &GgufHeader) -> Result<Self> {
        let model = header.get_str("tokenizer.ggml.model").unwrap_or("llama");
        let tokens: Vec<String> = header
            .tokens()
            .ok_or_else(|| tokenizer_error("the file has no tokenizer.ggml.tokens"))?
            .into_iter()
            .map(str::to_string)
            .collect();
        let types: Vec<u64> = match header
            .get("tokenizer.ggml.token_type")
            .and_then(MetadataValue::as_array)
        {
            Some(values) => values
                .iter()
                .map(|v| v.as_u64().unwrap_or(TOKEN_TYPE_NORMAL))
                .collect(),
            None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
        };
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                !t.is_empty()
                    && matches!(
                        types.get(*i).copied(),
                        Some(TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN)
                    )
            })
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));

        let kind = match model {
            "llama" => {
                let scores = match header
                    .get("tokenizer.ggml.scores")
                    .and_then(MetadataValue::as_array)
                {
                    Some(values) => values
                        .iter()
                        .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                        .collect(),
                    None => vec![0.0; tokens.len()],
                };
                let add_space_prefix = header
                    .get("tokenizer.ggml.add_space_prefix")
                    .and_then(MetadataValue::as_bool)
                    .unwrap_or(true);
                Kind::SentencePiece {
                    scores,
                    add_space_prefix,
                }
            }
            "gpt2" => {
                let merges = header
                    .get("tokenizer.ggml.merges")
                    .and_then(MetadataValue::as_array)
                    .ok_or_else(|| {
                        tokenizer_error("a BPE vocabulary needs tokenizer.ggml.merges")
                    })?;
                let ranks = merges
                    .iter()
                    .enumerate()
                    .filter_map(|(rank, m)| {
                        let (a, b) = m.as_str()?.split_once(' ')?;
                        Some(((a.to_string(), b.to_string()), rank))
                    })
                    .collect();
                let pre = header.get_str("tokenizer.ggml.pre").unwrap_or("default");
                let pre_tokenizer = pre_tokenizer_regexes(pre)?
                    .iter()
                    .map(|rx| {
                        Regex::new(rx)
                            .map_err(|e| tokenizer_error(format!("pre-tokenizer regex: {e}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let ignore_merges = header
                    .get("tokenizer.ggml.ignore_merges")
                    .and_then(MetadataValue::as_bool)
                    .unwrap_or(matches!(
                        pre,
                        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral"
                    ));
                Kind::BytePairs {
                    ranks,
                    pre_tokenizer,
                    ignore_merges,
                }
            }
            other => {
                return Err(tokenizer_error(format!(
                    "tokenizer model `{other}` is not supported (supported: llama, gpt2)"
                )));
            }
        };
        let token_id = |key: &str| header.get_u64(key).and_then(|v| u32::try_from(v).ok());
        let bos = token_id("tokenizer.ggml.bos_token_id");
        let add_bos = header
            .get("tokenizer.ggml.add_bos_token")
            .and_then(MetadataValue::as_bool)
            .unwrap_or(matches!(kind, Kind::SentencePiece { .. }));
        let end_of_generation = end_of_generation_tokens(
            &tokens,
            [
                token_id("tokenizer.ggml.eos_token_id"),
                token_id("tokenizer.ggml.eot_token_id"),
                token_id("tokenizer.ggml.eom_token_id"),
            ],
        );

        let mut tokenizer = GgufTokenizer {
            tokens,
            ids,
            specials,
            kind,
            bos,
            eos: token_id("tokenizer.ggml.eos_token_id"),
            add_bos,
            end_of_generation,
            pieces: Vec::new(),
        };
        tokenizer.pieces = (0..tokenizer.tokens.len())
            .map(|id| tokenizer.render_token(id, &types))
            .collect();
        Ok(tokenizer)
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub(crate) fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the vocabulary names one.
    pub(crate) fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The text of a token (as stored in the vocabulary).
    pub(crate) fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether the model wants a BOS token in front of a prompt.
    pub(crate) fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Tokens that end generation.
    pub(crate) fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// Bytes of every token as generated text (empty for special tokens).
    pub(crate) fn pieces(&self) -> &[Vec<u8>] {
        &self.pieces
    }

    /// Tokenizes `text` with special-token parsing, adding BOS when `add_bos`.
    pub(crate) fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let mut output = Vec::new();
        if add_bos && let Some(bos) = self.bos {
            output.push(bos);
        }
        let mut previous_was_special = true;
        for fragment in self.split_specials(text) {
            match fragment {
                Fragment::Special(id) => {
                    output.push(id);
                    previous_was_special = true;
                }
                Fragment::Text(text) => {
                    match &self.kind {
                        Kind::SentencePiece {
                            scores,
                            add_space_prefix,
                        } => {
                            let mut escaped = String::with_capacity(text.len() + 3);
                            if *add_space_prefix && previous_was_special {
                                escaped.push('▁');
                            }
                            escaped.push_str(&text.replace(' ', "▁"));
                            self.encode_sentence_piece(&escaped, scores, &mut output);
                        }
                        Kind::BytePairs {
                            ranks,
                            pre_tokenizer,
                            ignore_merges,
                        } => {
                            for word in pre_tokenize(text, pre_tokenizer) {
                                let encoded: String = word.bytes().map(byte_to_char).collect();
                                self.encode_byte_pairs(&encoded, ranks, ignore_merges, &mut output);
                            }
                        }
                    }
                    previous_was_special = false;
                }
            }
        }
        output
    }

    fn split_specials<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut fragments = vec![Fragment::Text(text)];
        for (special, id) in &self.specials {
            let mut next = Vec::with_capacity(fragments.len());
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(special.as_str()) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Special(*id));
                    rest = &rest[at + special.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// llama.cpp's SentencePiece: merge the adjacent pair whose merged text is
    /// the highest-scoring token (leftmost on ties) until none is left, then
    /// map symbols to tokens, falling back to `<0xXX>` byte tokens.
    fn encode_sentence_piece(&self, text: &str, scores: &[f32], output: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::new();
        for (start, ch) in text.char_indices() {
            let index = symbols.len() as isize;
            symbols.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: index - 1,
                next: index + 1,
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = -1;
        }
        let mut queue: BinaryHeap<ScoredPair> = BinaryHeap::new();
        let mut reverse_merges: HashMap<String, (usize, usize)> = HashMap::new();
        let try_pair = |left: isize,
                        right: isize,
                        symbols: &[Symbol],
                        queue: &mut BinaryHeap<ScoredPair>,
                        reverse: &mut HashMap<String, (usize, usize)>| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
            let merged = &text[l.start..l.start + l.len + r.len];
            if let Some(&id) = self.ids.get(merged) {
                queue.push(ScoredPair {
                    score: scores.get(id as usize).copied().unwrap_or(0.0),
                    left: left as usize,
                    right: right as usize,
                    size: merged.len(),
                });
                reverse.insert(merged.to_string(), (left as usize, right as usize));
            }
        };
        for i in 1..symbols.len() {
            try_pair(
                i as isize - 1,
                i as isize,
                &symbols,
                &mut queue,
                &mut reverse_merges,
            );
        }
        while let Some(pair) = queue.pop() {
            let (left_len, right_len) = (symbols[pair.left].len, symbols[pair.right].len);
            if left_len == 0 || right_len == 0 || left_len + right_len != pair.size {
                continue;
            }
            symbols[pair.left].len += right_len;
            symbols[pair.right].len = 0;
            let right_next = symbols[pair.right].next;
            symbols[pair.left].next = right_next;
            if right_next >= 0 {
                symbols[right_next as usize].prev = pair.left as isize;
            }
            let (prev, next) = (symbols[pair.left].prev, symbols[pair.left].next);
            try_pair(
                prev,
                pair.left as isize,
                &symbols,
                &mut queue,
                &mut reverse_merges,
            );
            try_pair(
                pair.left as isize,
                next,
                &symbols,
                &mut queue,
                &mut reverse_merges,
            );
        }
        let mut index = if symbols.is_empty() { -1 } else { 0 };
        while index >= 0 {
            self.resegment(text, &symbols, index as usize, &reverse_merges, output);
            index = symbols[index as usize].next;
        }
    }

    fn resegment(
        &self,
        text: &str,
        symbols: &[Symbol],
        index: usize,
        reverse: &HashMap<String, (usize, usize)>,
        output: &mut Vec<u32>,
    ) {
        let symbol = &symbols[index];
        let piece = &text[symbol.start..symbol.start + symbol.len];
        if let Some(&id) = self.ids.get(piece) {
            output.push(id);
            return;
        }
        match reverse.get(piece) {
            Some(&(left, right)) if left != index || right != index => {
                self.resegment(text, symbols, left, reverse, output);
                self.resegment(text, symbols, right, reverse, output);
            }
            _ => {
                for byte in piece.bytes() {
                    if let Some(&id) = self.ids.get(&format!("<0x{byte:02X}>")) {
                        output.push(id);
                    }
                }
            }
        }
    }

    /// llama.cpp's byte-level BPE on one pre-tokenized word: merge the
    /// adjacent pair with the lowest merge rank (leftmost on ties).
    fn encode_byte_pairs(
        &self,
        word: &str,
        ranks: &HashMap<(String, String), usize>,
        ignore_merges: &bool,
        output: &mut Vec<u32>,
    ) {
        if *ignore_merges && let Some(&id) = self.ids.get(word) {
            output.push(id);
            return;
        }
        let mut parts: Vec<String> = word.chars().map(String::from).collect();
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| ranks.get(&(w[0].clone(), w[1].clone())).map(|&r| (r, i)))
                .min();
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", parts[i], parts[i + 1]);
            parts[i] = merged;
            parts.remove(i + 1);
        }
        for part in parts {
            match self.ids.get(&part) {
                Some(&id) => output.push(id),
                None => {
                    // As llama.cpp: look up each byte on its own (only ASCII can match).
                    for byte in part.bytes().filter(u8::is_ascii) {
                        if let Some(&id) = self.ids.get(&char::from(byte).to_string()) {
                            output.push(id);
                        }
                    }
                }
            }
        }
    }

    fn render_token(&self, id: usize, types: &[u64]) -> Vec<u8> {
        let text = &self.tokens[id];
        match types.get(id).copied().unwrap_or(TOKEN_TYPE_NORMAL) {
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => Vec::new(),
            TOKEN_TYPE_BYTE => parse_byte_token(text).map_or_else(Vec::new, |b| vec![b]),
            TOKEN_TYPE_USER_DEFINED => text.as_bytes().to_vec(),
            _ => match &self.kind {
                Kind::SentencePiece { .. } => text.replace('▁', " ").into_bytes(),
                Kind::BytePairs { .. } => text
                    .chars()
                    .map(|c| char_to_byte(c).unwrap_or(b'?'))
                    .collect(),
            },
        }
    }
}

#[derive(Debug)]
enum Fragment<'t> {
    Text(&'t str),
    Special(u32),
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

#[derive(Debug)]
struct ScoredPair {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for ScoredPair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for ScoredPair {}
impl PartialOrd for ScoredPair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ScoredPair {
    /// Highest score first, then leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| Reverse(self.left).cmp(&Reverse(other.left)))
    }
}

fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// End-of-generation tokens as llama.cpp's vocabulary loader lists them:
/// EOS, EOT and EOM by id, the fill-in-the-middle pad/repo/separator tokens,
/// and the end-of-turn markers it recognises by their text (whatever their
/// token type: llama.cpp makes them control tokens).
fn end_of_generation_tokens(tokens: &[String], ids: [Option<u32>; 3]) -> Vec<u32> {
    const END_TEXTS: [&str; 33] = [
        // FIM pad, repo and file-separator tokens.
        "<|fim_pad|>",
        "<fim-pad>",
        "<fim_pad>",
        "<PAD>",
        "[PAD]",
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
        "<|file_sep|>",
        // End-of-turn markers.
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<eos>",
        "<turn|>",
        "<|tool_response>",
        "<｜end▁of▁sentence｜>",
        "[e~[",
    ];
    let mut found: Vec<u32> = ids.into_iter().flatten().collect();
    for (id, text) in tokens.iter().enumerate() {
        if END_TEXTS.contains(&text.as_str()) && !found.contains(&(id as u32)) {
            found.push(id as u32);
        }
    }
    found
}

/// The pre-tokenizer regexes llama.cpp uses for each `tokenizer.ggml.pre`.
fn pre_tokenizer_regexes(pre: &str) -> Result<Vec<&'static str>> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        "default" => vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "mpt" | "olmo" => vec![GPT2],
        "deepseek-coder" => vec![
            "[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            "[一-龥ࠀ-一가-퟿]+",
            r"\p{N}",
        ],
        "qwen2" | "stablelm2" | "hunyuan" => vec![QWEN2],
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => vec![LLAMA3],
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", GPT2]
        }
        other => {
            return Err(tokenizer_error(format!(
                "pre-tokenizer `{other}` is not supported by the crate's GGUF tokenizer"
            )));
        }
    })
}

/// Splits `text` by each regex in turn, keeping matches and the text between
/// them as separate pieces (llama.cpp's `unicode_regex_split`).
fn pre_tokenize<'t>(text: &'t str, regexes: &[Regex]) -> Vec<&'t str> {
    let mut pieces = vec![text];
    for regex in regexes {
        let mut next = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let mut last = 0;
            for found in regex.find_iter(piece) {
                let Ok(found) = found else { break };
                if found.start() > last {
                    next.push(&piece[last..found.start()]);
                }
                if found.end() > found.start() {
                    next.push(found.as_str());
                }
                last = found.end();
            }
            if last < piece.len() {
                next.push(&piece[last..]);
            }
        }
        pieces = next;
    }
    pieces
}

/// The inverse of [`byte_to_char`] (GPT-2's byte ↔ character mapping).
fn char_to_byte(ch: char) -> Option<u8> {
    let code = ch as u32;
    if code < 256 {
        let byte = code as u8;
        return (byte_to_char(byte) == ch).then_some(byte);
    }
    (0..=255u8).find(|&b| byte_to_char(b) == ch)
}
