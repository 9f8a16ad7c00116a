//! Reading a GGUF file's header — metadata and tensor table — without its weights.
//!
//! Every backend hands files to its engine only after this check, so a missing,
//! foreign or truncated file is a clear [`Error`] rather than an engine abort.
//! The header also carries what the prompt layer needs (chat template, special
//! tokens) and what load sizing needs (layer count, tensor bytes, context).

mod consistency;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Limits far above any real header (the largest vocabularies hold about
/// 260 000 tokens, chat templates are tens of kilobytes, models a few
/// thousand tensors). A larger count means a corrupt or hostile file, and
/// refusing it bounds what reading it allocates: every count is also checked
/// against the file's size, but a one-byte array item becomes a 32-byte
/// value in memory.
const MAX_STRING_BYTES: u64 = 16 << 20;
const MAX_ARRAY_ITEMS: u64 = 1 << 22;
const MAX_METADATA_ENTRIES: u64 = 1 << 16;
const MAX_TENSORS: u64 = 1 << 20;
/// The largest `general.alignment` accepted (llama.cpp takes any power of two).
const MAX_ALIGNMENT: u64 = 1 << 20;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<MetadataValue>),
}

impl MetadataValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::Uint(v) => Some(v),
            MetadataValue::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::Float(v) => Some(v),
            MetadataValue::Uint(v) => Some(v as f64),
            MetadataValue::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// One tensor's entry in the table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`…).
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// The ggml type id.
    pub ggml_type: u32,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
    /// Size of its data in bytes.
    pub bytes: u64,
}

/// A GGUF file's header.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// The file it was read from.
    pub path: PathBuf,
    /// GGUF format version.
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, MetadataValue>,
    /// The tensor table.
    pub tensors: Vec<TensorInfo>,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// Where tensor data starts (tensor offsets count from here).
    pub data_offset: u64,
}

impl GgufHeader {
    /// Reads and checks a GGUF header: magic, version, metadata, tensor table,
    /// and that every tensor's data lies inside the file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let unreadable = |error: std::io::Error| Error::ModelUnreadable {
            path: path.to_path_buf(),
            source: std::sync::Arc::new(error),
        };
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ModelNotFound {
                path: path.to_path_buf(),
                hint: "no such file".into(),
            },
            _ => unreadable(e),
        })?;
        let invalid = |reason: String| Error::InvalidModelFile {
            path: path.to_path_buf(),
            reason,
        };
        let file_size = file.metadata().map_err(unreadable)?.len();
        let mut reader = Reader {
            inner: BufReader::new(file),
            file_size,
        };
        let header = reader.header(path).map_err(invalid)?;
        if let Some(reason) = consistency::contradiction(&header) {
            return Err(invalid(reason));
        }
        Ok(header)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetadataValue::as_str)
    }

    /// An integer metadata value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetadataValue::as_u64)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// An architecture-scoped integer, such as `llama.block_count`.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.{suffix}"))
    }

    /// An architecture-scoped number, such as `llama.rope.freq_base`.
    pub fn arch_f64(&self, suffix: &str) -> Option<f64> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.{suffix}"))
            .and_then(MetadataValue::as_f64)
    }

    /// An architecture-scoped string, such as `llama.rope.scaling.type`.
    pub fn arch_str(&self, suffix: &str) -> Option<&str> {
        let arch = self.architecture()?;
        self.get_str(&format!("{arch}.{suffix}"))
    }

    /// The Jinja chat template, when the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.get_str("tokenizer.chat_template")
    }

    /// The vocabulary's token texts.
    pub fn tokens(&self) -> Option<Vec<&str>> {
        self.get("tokenizer.ggml.tokens")?
            .as_array()?
            .iter()
            .map(MetadataValue::as_str)
            .collect()
    }

    /// The text of a token id, from the vocabulary.
    pub fn token_text(&self, id: u64) -> Option<&str> {
        let items = self.get("tokenizer.ggml.tokens")?.as_array()?;
        items.get(usize::try_from(id).ok()?)?.as_str()
    }

    /// Total bytes of tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }
}

struct Reader {
    inner: BufReader<File>,
    file_size: u64,
}

type ReadResult<T> = std::result::Result<T, String>;

impl Reader {
    fn header(&mut self, path: &Path) -> ReadResult<GgufHeader> {
        let mut magic = [0u8; 4];
        self.exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(format!(
                "not a GGUF file (it starts with {magic:?}, not \"GGUF\")"
            ));
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            ));
        }
        let tensor_count = self.length("tensor count", MAX_TENSORS)?;
        let kv_count = self.length("metadata count", MAX_METADATA_ENTRIES)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = self.string()?;
            let value_type = self.u32()?;
            let value = self.value(value_type, true)?;
            if metadata.contains_key(&key) {
                return Err(format!("the metadata key {key:?} appears twice"));
            }
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            let name = self.string()?;
            let n_dims = self.u32()?;
            if n_dims > 8 {
                return Err(format!("tensor {name} has {n_dims} dimensions"));
            }
            let dims = (0..n_dims)
                .map(|_| self.u64())
                .collect::<ReadResult<Vec<_>>>()?;
            let ggml_type = self.u32()?;
            let offset = self.u64()?;
            let bytes = tensor_bytes(ggml_type, &dims)
                .ok_or_else(|| format!("tensor {name} has unknown or invalid type {ggml_type}"))?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                bytes,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(value) => value
                .as_u64()
                .filter(|a| a.is_power_of_two() && *a <= MAX_ALIGNMENT)
                .ok_or_else(|| {
                    format!("general.alignment must be a power of two up to {MAX_ALIGNMENT}, not {value:?}")
                })?,
        };
        let position = self.inner.stream_position().map_err(|e| e.to_string())?;
        // Both at most the file's size and the alignment at most 2^20: no overflow.
        let data_start = position.div_ceil(alignment) * alignment;
        for tensor in &tensors {
            let end = data_start
                .checked_add(tensor.offset)
                .and_then(|o| o.checked_add(tensor.bytes));
            if end.is_none_or(|end| end > self.file_size) {
                return Err(format!(
                    "the file is truncated: tensor {} needs bytes up to {} but the file has {}",
                    tensor.name,
                    end.map_or_else(|| "overflow".to_string(), |e| e.to_string()),
                    self.file_size
                ));
            }
        }
        Ok(GgufHeader {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            file_size: self.file_size,
            data_offset: data_start,
        })
    }

    fn exact(&mut self, buf: &mut [u8]) -> ReadResult<()> {
        self.inner
            .read_exact(buf)
            .map_err(|_| "the header is truncated".to_string())
    }

    fn u8(&mut self) -> ReadResult<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }
    fn u16(&mut self) -> ReadResult<u16> {
        let mut b = [0u8; 2];
        self.exact(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn u32(&mut self) -> ReadResult<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> ReadResult<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn length(&mut self, what: &str, most: u64) -> ReadResult<u64> {
        let n = self.u64()?;
        if n > self.file_size {
            return Err(format!(
                "{what} {n} is impossible for a file of {} bytes",
                self.file_size
            ));
        }
        if n > most {
            return Err(format!(
                "{what} {n} is more than any real model has (at most {most} are read)"
            ));
        }
        Ok(n)
    }

    fn string(&mut self) -> ReadResult<String> {
        let len = self.length("string length", MAX_STRING_BYTES)?;
        let mut bytes = vec![0u8; len as usize];
        self.exact(&mut bytes)?;
        String::from_utf8(bytes).map_err(|_| "a header string is not UTF-8".to_string())
    }

    /// A value of `value_type`; arrays only where `array_allowed` (GGUF, as
    /// llama.cpp reads it, has no arrays of arrays, and refusing them keeps
    /// a hostile file from recursing without end).
    fn value(&mut self, value_type: u32, array_allowed: bool) -> ReadResult<MetadataValue> {
        Ok(match value_type {
            0 => MetadataValue::Uint(u64::from(self.u8()?)),
            1 => MetadataValue::Int(i64::from(self.u8()? as i8)),
            2 => MetadataValue::Uint(u64::from(self.u16()?)),
            3 => MetadataValue::Int(i64::from(self.u16()? as i16)),
            4 => MetadataValue::Uint(u64::from(self.u32()?)),
            5 => MetadataValue::Int(i64::from(self.u32()? as i32)),
            6 => MetadataValue::Float(f64::from(f32::from_bits(self.u32()?))),
            7 => MetadataValue::Bool(self.u8()? != 0),
            8 => MetadataValue::String(self.string()?),
            9 if array_allowed => {
                let item_type = self.u32()?;
                let len = self.length("array length", MAX_ARRAY_ITEMS)?;
                let items = (0..len)
                    .map(|_| self.value(item_type, false))
                    .collect::<ReadResult<Vec<_>>>()?;
                MetadataValue::Array(items)
            }
            9 => return Err("an array of arrays (GGUF has none)".to_string()),
            10 => MetadataValue::Uint(self.u64()?),
            11 => MetadataValue::Int(self.u64()? as i64),
            12 => MetadataValue::Float(f64::from_bits(self.u64()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

/// GPT-2's byte → printable character mapping, in which byte-level BPE
/// vocabularies (`tokenizer.ggml.model = "gpt2"`) store their tokens.
pub fn gpt2_byte_char(byte: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(byte) {
        return char::from(byte);
    }
    let shifted = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + shifted).unwrap_or('?')
}

/// (bytes per block, elements per block) of a ggml tensor type.
fn block_layout(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (4, 1),      // F32
        1 => (2, 1),      // F16
        2 => (18, 32),    // Q4_0
        3 => (20, 32),    // Q4_1
        6 => (22, 32),    // Q5_0
        7 => (24, 32),    // Q5_1
        8 => (34, 32),    // Q8_0
        9 => (36, 32),    // Q8_1
        10 => (84, 256),  // Q2_K
        11 => (110, 256), // Q3_K
        12 => (144, 256), // Q4_K
        13 => (176, 256), // Q5_K
        14 => (210, 256), // Q6_K
        15 => (292, 256), // Q8_K
        16 => (66, 256),  // IQ2_XXS
        17 => (74, 256),  // IQ2_XS
        18 => (98, 256),  // IQ3_XXS
        19 => (50, 256),  // IQ1_S
        20 => (18, 32),   // IQ4_NL
        21 => (110, 256), // IQ3_S
        22 => (82, 256),  // IQ2_S
        23 => (136, 256), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (2, 1),     // I16
        26 => (4, 1),     // I32
        27 => (8, 1),     // I64
        28 => (8, 1),     // F64
        29 => (56, 256),  // IQ1_M
        30 => (2, 1),     // BF16
        34 => (54, 256),  // TQ1_0
        35 => (66, 256),  // TQ2_0
        39 => (17, 32),   // MXFP4
        _ => return None,
    })
}

fn tensor_bytes(ggml_type: u32, dims: &[u64]) -> Option<u64> {
    let (block_bytes, block_elems) = block_layout(ggml_type)?;
    let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
    elements.div_ceil(block_elems).checked_mul(block_bytes)
}
