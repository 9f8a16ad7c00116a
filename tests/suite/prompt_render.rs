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

/// Templates come inside model files from strangers: one that loops without
/// end, recurses without end or writes without end is a render error within
/// a bounded time, and the process goes on.
#[test]
fn hostile_templates_are_render_errors_not_hangs_or_crashes() {
    let cases = [
        (
            "a loop of 10^10 steps",
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        ),
        (
            "recursion without end",
            "{% macro down(n) %}{{ down(n + 1) }}{% endmacro %}{{ down(0) }}",
        ),
        (
            "a flood of output",
            "{% for i in range(1000) %}{{ 'x' * 1000000 }}{% endfor %}",
        ),
        ("a template that includes itself", "{% include 'chat' %}"),
    ];
    let chat = conversation();
    for (what, source) in cases {
        let started = std::time::Instant::now();
        // A template that fails its load-time tool probe still loads.
        let template = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let err = template.render(&chat).unwrap_err();
        assert!(
            matches!(
                err,
                dsrs_local::Error::ChatTemplate {
                    stage: dsrs_local::TemplateStage::Render,
                    ..
                }
            ),
            "{what}: {err}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{what} took {:?}",
            started.elapsed()
        );
    }
}

/// The limits leave room for real conversations: the largest a server
/// request may carry (1024 messages) with tools renders through a
/// tool-calling template and the models' own templates.
#[test]
fn the_template_limits_leave_room_for_the_largest_conversation() {
    use dsrs_local::prompt::{CHATML_TOOLS_TEMPLATE, ToolSpec, Turn};
    let tools: Vec<ToolSpec> = (0..16)
        .map(|i| {
            ToolSpec::new(
                format!("tool_{i}"),
                "Looks something up.",
                serde_json::json!({"type": "object", "properties": {"item": {"type": "string"}}}),
            )
        })
        .collect();
    let turns: Vec<Turn> = (0..1024)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            Turn::new(role, format!("message {i}: {}", "words ".repeat(50)))
        })
        .collect();
    let mut templates = vec![ChatTemplate::new(CHATML_TOOLS_TEMPLATE, "", "<|im_end|>").unwrap()];
    templates.extend(
        [
            "ggml-vocab-deepseek-coder-chat.gguf",
            "ggml-vocab-phi-3.gguf",
        ]
        .iter()
        .filter_map(|f| template_of(f)),
    );
    for template in templates {
        let text = template.render_conversation(&turns, &tools, true).unwrap();
        assert!(text.contains("message 1023"));
    }
}
