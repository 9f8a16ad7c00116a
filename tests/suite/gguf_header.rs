//! The GGUF header reader: real files, and bad input as typed errors.

use std::io::Write;

use dsrs_local::Error;
use dsrs_local::gguf::GgufHeader;

use crate::support::shared_model;

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
