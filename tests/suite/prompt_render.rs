//! Rendering through the models' own chat templates (read from the GGUF files
//! in ../shared/models/vocab), compared with hand-written expected text.

use dspy_rs::{Chat, Message};
use dsrs_local::gguf::GgufHeader;
use dsrs_local::prompt::ChatTemplate;

use crate::support::shared_model;

fn template_of(vocab_file: &str) -> Option<ChatTemplate> {
    let path = shared_model(&format!("vocab/{vocab_file}"))?;
    let header = GgufHeader::read(path).unwrap();
    let bos = header
        .token_text(header.get_u64("tokenizer.ggml.bos_token_id").unwrap())
        .unwrap();
    let eos = header
        .token_text(header.get_u64("tokenizer.ggml.eos_token_id").unwrap())
        .unwrap();
    let architecture = header.architecture().unwrap_or("llama");
    Some(ChatTemplate::for_model(header.chat_template(), architecture, bos, eos).unwrap())
}

fn conversation() -> Chat {
    Chat::new(vec![
        Message::system("S"),
        Message::user("U1"),
        Message::assistant("A1"),
        Message::user("U2"),
    ])
}

#[test]
fn deepseek_coder_template() {
    let Some(template) = template_of("ggml-vocab-deepseek-coder-chat.gguf") else {
        return;
    };
    assert!(!template.is_fallback());
    assert_eq!(
        template.render(&conversation()).unwrap(),
        "<｜begin▁of▁sentence｜>S### Instruction:\nU1\n### Response:\nA1\n<|EOT|>\n### Instruction:\nU2\n### Response:\n"
    );
    // Without a system message the template adds its own.
    let text = template
        .render(&Chat::new(vec![Message::user("Q")]))
        .unwrap();
    assert!(
        text.starts_with("<｜begin▁of▁sentence｜>You are an AI programming assistant"),
        "{text}"
    );
    assert!(
        text.ends_with("refuse to answer\n### Instruction:\nQ\n### Response:\n"),
        "{text}"
    );
    // No generation prompt: the text ends after the last user turn.
    let text = template
        .render_with(
            &Chat::new(vec![Message::system("S"), Message::user("Q")]),
            false,
        )
        .unwrap();
    assert_eq!(text, "<｜begin▁of▁sentence｜>S### Instruction:\nQ\n");
}

#[test]
fn phi3_template() {
    let Some(template) = template_of("ggml-vocab-phi-3.gguf") else {
        return;
    };
    // Phi-3's template has no system role: it drops the system message, as llama.cpp does.
    assert_eq!(
        template.render(&conversation()).unwrap(),
        "<s><|user|>\nU1<|end|>\n<|assistant|>\nA1<|end|>\n<|user|>\nU2<|end|>\n<|assistant|>\n"
    );
}

#[test]
fn models_without_a_template_get_chatml() {
    let Some(path) = shared_model("stories260K.gguf") else {
        return;
    };
    let header = GgufHeader::read(path).unwrap();
    assert!(header.chat_template().is_none());
    let template = ChatTemplate::for_model(None, "llama", "<s>", "</s>").unwrap();
    assert!(template.is_fallback());
    assert_eq!(
        template
            .render(&Chat::new(vec![Message::system("S"), Message::user("U")]))
            .unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// A gemma file without a template gets Gemma's turns, as llama.cpp's
/// template detection gives it: `user`/`model` roles, the system message at
/// the top of the first user turn, the BOS printed once.
#[test]
fn gemma_models_without_a_template_get_gemma_turns() {
    for architecture in ["gemma", "gemma2", "gemma3"] {
        let template = ChatTemplate::for_model(None, architecture, "<bos>", "<eos>").unwrap();
        assert!(template.is_fallback());
        assert_eq!(
            template.render(&conversation()).unwrap(),
            "<bos><start_of_turn>user\nS\n\nU1<end_of_turn>\n\
             <start_of_turn>model\nA1<end_of_turn>\n\
             <start_of_turn>user\nU2<end_of_turn>\n\
             <start_of_turn>model\n",
            "{architecture}"
        );
    }
    // A template in the file wins over the architecture's.
    let own = ChatTemplate::for_model(Some("{{ 'X' }}"), "gemma3", "<bos>", "<eos>").unwrap();
    assert_eq!(own.render(&conversation()).unwrap(), "X");
}
