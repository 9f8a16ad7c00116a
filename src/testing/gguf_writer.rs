//! Writing GGUF files (version 3): metadata, a tensor table and tensor data
//! in F32, F16, Q8_0 or Q4_K, with no inference engine involved, so test
//! support works in every build (llama.cpp-only ones included).
//!
//! Metadata values are [`MetadataValue`]s, written at the widths llama.cpp
//! expects of model headers: unsigned integers as `u32` (as `u64` past its
//! range), signed ones as `i32` (`i64`), floats as `f32`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::gguf::MetadataValue;

const ALIGNMENT: usize = 32;

/// A ggml tensor type this writer encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    F32,
    F16,
    Q8_0,
    Q4K,
}

impl Encoding {
    fn ggml_type(self) -> u32 {
        match self {
            Encoding::F32 => 0,
            Encoding::F16 => 1,
            Encoding::Q8_0 => 8,
            Encoding::Q4K => 12,
        }
    }

    /// (bytes per block, values per block).
    fn block(self) -> (usize, usize) {
        match self {
            Encoding::F32 => (4, 1),
            Encoding::F16 => (2, 1),
            Encoding::Q8_0 => (34, 32),
            Encoding::Q4K => (144, 256),
        }
    }

    /// Bytes of a tensor of `values` values (a whole number of blocks).
    pub(crate) fn bytes(self, values: usize) -> usize {
        let (bytes, per_block) = self.block();
        values / per_block * bytes
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Encoding::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Encoding::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Encoding::Q8_0 => values.chunks(32).flat_map(q8_0_block).collect(),
            Encoding::Q4K => values.chunks(256).flat_map(q4_k_block).collect(),
        }
    }
}

/// One tensor to write.
#[derive(Debug, Clone)]
pub(crate) struct TensorEntry {
    name: String,
    /// Dimensions, innermost (the row length) first, as GGUF stores them.
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

impl TensorEntry {
    /// A tensor of `rows` rows of `values.len() / rows` values, encoded.
    /// The row length must be a multiple of the encoding's block.
    pub(crate) fn new(
        name: impl Into<String>,
        rows: usize,
        values: &[f32],
        encoding: Encoding,
    ) -> Self {
        let row_len = values.len() / rows.max(1);
        let dims = if rows == 1 {
            vec![row_len as u64]
        } else {
            vec![row_len as u64, rows as u64]
        };
        TensorEntry {
            name: name.into(),
            dims,
            ggml_type: encoding.ggml_type(),
            data: encoding.encode(values),
        }
    }
}

/// Writes a GGUF file with `metadata` (in the given order) and `tensors`.
pub(crate) fn write_gguf(
    path: &Path,
    metadata: &[(String, MetadataValue)],
    tensors: &[TensorEntry],
) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut header = Vec::new();
    header.extend_from_slice(b"GGUF");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut header, key);
        put_value(&mut header, value);
    }
    let mut offset = 0usize;
    for tensor in tensors {
        put_string(&mut header, &tensor.name);
        header.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
        for dim in &tensor.dims {
            header.extend_from_slice(&dim.to_le_bytes());
        }
        header.extend_from_slice(&tensor.ggml_type.to_le_bytes());
        header.extend_from_slice(&(offset as u64).to_le_bytes());
        offset = (offset + tensor.data.len()).next_multiple_of(ALIGNMENT);
    }
    let aligned = header.len().next_multiple_of(ALIGNMENT);
    header.resize(aligned, 0);
    out.write_all(&header)?;
    for tensor in tensors {
        out.write_all(&tensor.data)?;
        let padding = tensor.data.len().next_multiple_of(ALIGNMENT) - tensor.data.len();
        out.write_all(&vec![0; padding])?;
    }
    out.flush()
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// The GGUF type id of a value, at the widths llama.cpp reads.
fn type_of(value: &MetadataValue) -> u32 {
    match value {
        MetadataValue::Uint(v) if u32::try_from(*v).is_ok() => 4,
        MetadataValue::Uint(_) => 10,
        MetadataValue::Int(v) if i32::try_from(*v).is_ok() => 5,
        MetadataValue::Int(_) => 11,
        MetadataValue::Float(_) => 6,
        MetadataValue::Bool(_) => 7,
        MetadataValue::String(_) => 8,
        MetadataValue::Array(_) => 9,
    }
}

fn put_value(out: &mut Vec<u8>, value: &MetadataValue) {
    out.extend_from_slice(&type_of(value).to_le_bytes());
    put_payload(out, value, type_of(value));
}

/// The value's bytes as type `as_type` (array items all take the first item's type).
fn put_payload(out: &mut Vec<u8>, value: &MetadataValue, as_type: u32) {
    match (value, as_type) {
        (MetadataValue::Uint(v), 4) => out.extend_from_slice(&(*v as u32).to_le_bytes()),
        (MetadataValue::Uint(v), _) => out.extend_from_slice(&v.to_le_bytes()),
        (MetadataValue::Int(v), 5) => out.extend_from_slice(&(*v as i32).to_le_bytes()),
        (MetadataValue::Int(v), _) => out.extend_from_slice(&v.to_le_bytes()),
        (MetadataValue::Float(v), _) => out.extend_from_slice(&(*v as f32).to_le_bytes()),
        (MetadataValue::Bool(v), _) => out.push(u8::from(*v)),
        (MetadataValue::String(s), _) => put_string(out, s),
        (MetadataValue::Array(items), _) => {
            let item_type = items.iter().map(type_of).max().unwrap_or(8);
            out.extend_from_slice(&item_type.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_payload(out, item, item_type);
            }
        }
    }
}

/// One Q8_0 block: an f16 scale and 32 signed bytes (ggml's `block_q8_0`).
fn q8_0_block(values: &[f32]) -> Vec<u8> {
    let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut block = half::f16::from_f32(scale).to_le_bytes().to_vec();
    block.extend(
        values
            .iter()
            .map(|v| (v * inverse).round().clamp(-127.0, 127.0) as i8 as u8),
    );
    block
}

/// One Q4_K block of 256 values (ggml's `block_q4_K`): f16 `d` and `dmin`,
/// 12 bytes of 6-bit scales and mins for its 8 sub-blocks of 32, then 128
/// bytes of 4-bit values; a value is `d·scale·q − dmin·min`.
fn q4_k_block(values: &[f32]) -> Vec<u8> {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for (j, sub) in values.chunks(32).enumerate() {
        let low = sub.iter().fold(0f32, |m, &v| m.min(v));
        let high = sub.iter().fold(f32::MIN, |m, &v| m.max(v));
        mins[j] = -low;
        scales[j] = (high - low) / 15.0;
    }
    let d = scales.iter().fold(0f32, |m, &s| m.max(s)) / 63.0;
    let dmin = mins.iter().fold(0f32, |m, &s| m.max(s)) / 63.0;
    // Round through f16 first: the decoder sees the stored values.
    let d = half::f16::from_f32(d);
    let dmin = half::f16::from_f32(dmin);
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let quantize6 = |x: f32, unit: f32| {
        if unit > 0.0 {
            (x / unit).round().clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    let ls: Vec<u8> = scales.iter().map(|&s| quantize6(s, df)).collect();
    let lm: Vec<u8> = mins.iter().map(|&m| quantize6(m, dminf)).collect();
    let mut packed = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            packed[j] = ls[j];
            packed[j + 4] = lm[j];
        } else {
            packed[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            packed[j - 4] |= (ls[j] >> 4) << 6;
            packed[j] |= (lm[j] >> 4) << 6;
        }
    }
    let mut levels = [0u8; 256];
    for (j, sub) in values.chunks(32).enumerate() {
        let scale = df * f32::from(ls[j]);
        let min = dminf * f32::from(lm[j]);
        for (i, &v) in sub.iter().enumerate() {
            levels[j * 32 + i] = if scale > 0.0 {
                ((v + min) / scale).round().clamp(0.0, 15.0) as u8
            } else {
                0
            };
        }
    }
    let mut block = Vec::with_capacity(144);
    block.extend_from_slice(&d.to_le_bytes());
    block.extend_from_slice(&dmin.to_le_bytes());
    block.extend_from_slice(&packed);
    for chunk in levels.chunks(64) {
        block.extend((0..32).map(|l| chunk[l] | (chunk[l + 32] << 4)));
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a Q4_K block as ggml does (`dequantize_row_q4_K`).
    fn decode_q4_k(block: &[u8]) -> Vec<f32> {
        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        let dmin = half::f16::from_le_bytes([block[2], block[3]]).to_f32();
        let q = &block[4..16];
        let scale_min = |j: usize| -> (u8, u8) {
            if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                (
                    (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                    (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                )
            }
        };
        let mut out = Vec::with_capacity(256);
        for (pair, chunk) in block[16..].chunks(32).enumerate() {
            let (s1, m1) = scale_min(2 * pair);
            let (s2, m2) = scale_min(2 * pair + 1);
            out.extend(
                chunk
                    .iter()
                    .map(|b| d * f32::from(s1) * f32::from(b & 0xF) - dmin * f32::from(m1)),
            );
            out.extend(
                chunk
                    .iter()
                    .map(|b| d * f32::from(s2) * f32::from(b >> 4) - dmin * f32::from(m2)),
            );
        }
        out
    }

    #[test]
    fn q4_k_and_q8_0_blocks_decode_close_to_their_values() {
        let values: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let block = q4_k_block(&values);
        assert_eq!(block.len(), 144);
        let decoded = decode_q4_k(&block);
        let worst = values
            .iter()
            .zip(&decoded)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Steps of (max − min) / 15 ≈ 0.17 here, plus 6-bit scale rounding.
        assert!(worst < 0.2, "worst error {worst}");

        let block = q8_0_block(&values[..32]);
        assert_eq!(block.len(), 34);
        let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (v, q) in values[..32].iter().zip(&block[2..]) {
            assert!((v - scale * f32::from(*q as i8)).abs() <= scale);
        }
    }
}
