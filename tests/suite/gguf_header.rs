//! The GGUF header reader: real files, and bad input as typed errors (hand-made
//! hostile headers, and mutations of a real one under proptest).

use std::io::Write;
use std::path::Path;
use std::sync::LazyLock;

use dsrs_local::Error;
use dsrs_local::gguf::GgufHeader;
use dsrs_local::testing::task_model_path;
use proptest::prelude::*;

use crate::support::{fuzz_cases, shared_model};

#[test]
fn reads_a_real_model_header() {
    let Some(path) = shared_model("stories260K.gguf") else {
        return;
    };
    let header = GgufHeader::read(&path).unwrap();
    assert_eq!(header.architecture(), Some("llama"));
    assert_eq!(header.arch_u64("block_count"), Some(5));
    assert_eq!(header.arch_u64("embedding_length"), Some(64));
    assert_eq!(header.tokens().unwrap().len(), 512);
    assert!(header.tensor_bytes() > 900_000 && header.tensor_bytes() <= header.file_size);
}

#[test]
fn missing_foreign_and_truncated_files_are_typed_errors() {
    let err = GgufHeader::read("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(err, Error::ModelNotFound { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("notes.gguf");
    std::fs::write(&foreign, b"this is not a model at all").unwrap();
    let err = GgufHeader::read(&foreign).unwrap_err();
    assert!(matches!(err, Error::InvalidModelFile { .. }), "{err}");
    assert!(err.to_string().contains("not a GGUF file"), "{err}");

    let empty = dir.path().join("empty.gguf");
    std::fs::File::create(&empty).unwrap().flush().unwrap();
    assert!(matches!(
        GgufHeader::read(&empty),
        Err(Error::InvalidModelFile { .. })
    ));

    let Some(real) = shared_model("stories260K.gguf") else {
        return;
    };
    let bytes = std::fs::read(real).unwrap();
    for cut in [10, 2_000, bytes.len() / 2, bytes.len() - 1] {
        let truncated = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let err = GgufHeader::read(&truncated).unwrap_err();
        assert!(
            matches!(err, Error::InvalidModelFile { .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("truncated"), "cut at {cut}: {err}");
    }
}

/// A change to a file's header bytes, as corruption or a hostile file makes.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR one byte.
    Flip(proptest::sample::Index, u8),
    /// Overwrite eight bytes with a value a lying length or count would hold.
    Lie(proptest::sample::Index, u64),
    /// Insert bytes (everything after shifts).
    Insert(proptest::sample::Index, Vec<u8>),
    /// Cut the header there.
    Truncate(proptest::sample::Index),
    /// Give one of the architecture's numbers (`llama.block_count`,
    /// `llama.rope.freq_base`, …) a wrong value: a file that still parses
    /// but describes another model than its tensors.
    Hyper(proptest::sample::Index, u32),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let lies = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1 << 31),
        Just(1 << 40),
        Just(9),
        0..100_000u64,
    ];
    prop_oneof![
        4 => (any::<proptest::sample::Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        3 => (any::<proptest::sample::Index>(), lies).prop_map(|(i, v)| Mutation::Lie(i, v)),
        1 => (any::<proptest::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<proptest::sample::Index>().prop_map(Mutation::Truncate),
        4 => (
            any::<proptest::sample::Index>(),
            prop_oneof![Just(0u32), Just(1), Just(3), Just(7), Just(65), Just(1 << 20), Just(u32::MAX), any::<u32>()]
        )
            .prop_map(|(i, v)| Mutation::Hyper(i, v)),
    ]
}

/// Writes `file` with `mutations` applied to its first `header_len` bytes;
/// the data after the header stays as it was (unless a cut drops it).
pub fn write_mutated(file: &[u8], header_len: usize, mutations: &[Mutation], path: &Path) {
    let mut header = file[..header_len].to_vec();
    let mut rest = &file[header_len..];
    for mutation in mutations {
        if header.is_empty() {
            break;
        }
        match mutation {
            Mutation::Flip(at, x) => {
                let at = at.index(header.len());
                header[at] ^= x;
            }
            Mutation::Lie(at, value) => {
                let at = at.index(header.len().saturating_sub(8).max(1));
                let end = (at + 8).min(header.len());
                header[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            }
            Mutation::Insert(at, bytes) => {
                let at = at.index(header.len());
                header.splice(at..at, bytes.iter().copied());
            }
            Mutation::Truncate(at) => {
                header.truncate(at.index(header.len()));
                rest = &[];
            }
            Mutation::Hyper(which, lie) => {
                let numbers = architecture_numbers(&header);
                if numbers.is_empty() {
                    continue;
                }
                let (at, value_type) = numbers[which.index(numbers.len())];
                let bytes = match value_type {
                    // A float: zero, negative, NaN, infinite, huge or tiny.
                    6 => [0.0f32, -1.0, f32::NAN, f32::INFINITY, 1e30, 1e-30][*lie as usize % 6]
                        .to_le_bytes(),
                    _ => lie.to_le_bytes(),
                };
                header[at..at + 4].copy_from_slice(&bytes);
            }
        }
    }
    let mut out = std::fs::File::create(path).unwrap();
    out.write_all(&header).unwrap();
    out.write_all(rest).unwrap();
}

/// Where the 32-bit numbers of the `llama.*` keys are: (offset of the
/// value, its GGUF type: 4 u32, 5 i32, 6 f32).
fn architecture_numbers(header: &[u8]) -> Vec<(usize, u32)> {
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
    (8..header.len())
        .filter(|&at| header[at..].starts_with(b"llama."))
        .filter_map(|at| {
            let len = usize::try_from(u64_at(at - 8)).ok().filter(|&l| l < 200)?;
            let value_at = at + len + 4;
            (value_at + 4 <= header.len())
                .then(|| u32_at(at + len))
                .filter(|t| matches!(t, 4..=6))
                .map(|t| (value_at, t))
        })
        .collect()
}

/// The bytes and header length of a file.
pub fn file_and_header_len(path: &Path) -> (Vec<u8>, usize) {
    let header = GgufHeader::read(path).unwrap();
    let bytes = std::fs::read(path).unwrap();
    (bytes, usize::try_from(header.data_offset).unwrap())
}

/// The crate's own model, cut to its header and the first of its data
/// (so a case is a small write): the reader sees every header field.
static OWN_MODEL: LazyLock<(Vec<u8>, usize)> = LazyLock::new(|| {
    let (bytes, header_len) = file_and_header_len(&task_model_path());
    (bytes[..header_len + 4096].to_vec(), header_len)
});

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(1000), failure_persistence: None, ..ProptestConfig::default() })]

    /// A mutated real header is read or refused with `InvalidModelFile`:
    /// never a panic, never a huge allocation (the limits in `gguf/mod.rs`),
    /// never an endless recursion.
    #[test]
    fn mutated_real_headers_are_read_or_refused(mutations in proptest::collection::vec(mutation(), 1..6)) {
        let (bytes, header_len) = &*OWN_MODEL;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mutated.gguf");
        write_mutated(bytes, *header_len, &mutations, &path);
        match GgufHeader::read(&path) {
            // The data was cut, so only a header whose tensors all lie
            // within what is left reads.
            Ok(header) => prop_assert!(header.tensor_bytes() <= header.file_size),
            Err(Error::InvalidModelFile { reason, .. }) => prop_assert!(!reason.is_empty()),
            Err(other) => prop_assert!(false, "not a typed file error: {other}"),
        }
    }

    /// Random bytes after a valid magic and version.
    #[test]
    fn random_bytes_after_the_magic_are_refused(version in 2u32..=3, body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("random.gguf");
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&body);
        std::fs::write(&path, &bytes).unwrap();
        // Only all-zero counts read, as an empty model.
        if let Err(err) = GgufHeader::read(&path) {
            prop_assert!(matches!(err, Error::InvalidModelFile { .. }), "{err}");
        }
    }
}

/// What a hostile header gets instead of a crash: nested arrays, a duplicate
/// key, a lying alignment and a vocabulary count beyond any model's.
#[test]
fn hostile_headers_are_refused_with_their_reason() {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let header = |entries: &[(&str, Vec<u8>)]| {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (key, value) in entries {
            string(&mut out, key);
            out.extend_from_slice(value);
        }
        // Room for the lengths the cases claim, so only the limits refuse them.
        out.resize(out.len() + (8 << 20), 0);
        out
    };
    let u32_value = |v: u32| [4u32.to_le_bytes(), v.to_le_bytes()].concat();
    let f32_value = |v: f32| [6u32.to_le_bytes(), v.to_le_bytes()].concat();
    let string_value = |v: &str| {
        let mut out = 8u32.to_le_bytes().to_vec();
        string(&mut out, v);
        out
    };
    let mut nested = Vec::new();
    for _ in 0..100_000 {
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&9u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    let mut huge_vocabulary = 9u32.to_le_bytes().to_vec();
    huge_vocabulary.extend_from_slice(&8u32.to_le_bytes());
    huge_vocabulary.extend_from_slice(&(5u64 << 20).to_le_bytes());
    type Entries<'a> = Vec<(&'a str, Vec<u8>)>;
    let cases: Vec<(Entries, &str)> = vec![
        (vec![("deep", nested)], "array of arrays"),
        (
            vec![("a", u32_value(1)), ("a", u32_value(2))],
            "appears twice",
        ),
        (vec![("general.alignment", u32_value(48))], "power of two"),
        (
            vec![
                ("general.architecture", string_value("llama")),
                ("llama.attention.layer_norm_rms_epsilon", f32_value(-1.0)),
            ],
            "must be at least 0",
        ),
        (
            vec![
                ("general.architecture", string_value("llama")),
                ("llama.attention.head_count", u32_value(0)),
            ],
            "must be from 1",
        ),
        (
            vec![
                ("general.architecture", string_value("llama")),
                ("llama.rope.freq_base", f32_value(f32::INFINITY)),
            ],
            "not a finite number",
        ),
        (
            vec![("general.alignment", u32_value(1 << 31))],
            "power of two",
        ),
        (
            vec![("tokenizer.ggml.tokens", huge_vocabulary)],
            "more than any real model",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (entries, reason)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("hostile{i}.gguf"));
        std::fs::write(&path, header(&entries)).unwrap();
        let err = GgufHeader::read(&path).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidModelFile { reason: r, .. } if r.contains(reason)),
            "case {i}: {err}"
        );
    }
}
