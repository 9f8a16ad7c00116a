//! Real models on both backends: how often a reply parses with the output
//! constraint on and off, how often it is right (a 135M model knows little:
//! reported, not targeted), and completion tokens per second.
//!
//! `make models` first, then `cargo run --release --example real_models`
//! (or name models: `-- smollm2-135m`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dspy_rs::{Example, LM, MetaSignature, Signature, example};
use dsrs_local::{
    Backend, CandleAdapter, CandleConfig, CandleLoadOptions, CandleModel, Error, GenerationConfig,
    LlamaCppAdapter, LlamaCppConfig, LlamaCppLoadOptions, LlamaCppModel, LocalAdapter, ModelSource,
};
use serde_json::{Value, json};

#[Signature]
struct Capital {
    /// Name the capital city of the country.
    #[input]
    country: String,
    #[output]
    capital: String,
}

#[Signature]
struct Sum {
    /// Add the two numbers.
    #[input]
    a: i64,
    #[input]
    b: i64,
    #[output]
    sum: i64,
}

#[Signature(cot)]
struct SumStepByStep {
    /// Add the two numbers.
    #[input]
    a: i64,
    #[input]
    b: i64,
    #[output]
    sum: i64,
}

#[Signature]
struct Half {
    /// Give half of the number.
    #[input]
    number: f64,
    #[output]
    half: f64,
}

#[Signature]
struct Parity {
    /// Say whether the number is even.
    #[input]
    number: i64,
    #[output]
    is_even: bool,
}

#[Signature]
struct Colours {
    /// List the colours asked for.
    #[input]
    request: String,
    #[output]
    colours: Vec<String>,
}

#[Signature]
struct Place {
    /// Say where the city is.
    #[input]
    city: String,
    #[output]
    country: String,
    #[output]
    continent: String,
}

/// One question: its signature kind, inputs and the expected outputs.
struct Question {
    kind: &'static str,
    signature: Box<dyn MetaSignature>,
    inputs: Example,
    expected: Vec<(&'static str, Value)>,
}

fn questions() -> Vec<Question> {
    let mut all = Vec::new();
    let mut add = |kind, signature: Box<dyn MetaSignature>, inputs, expected| {
        all.push(Question {
            kind,
            signature,
            inputs,
            expected,
        })
    };
    for (country, capital) in [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome")] {
        add(
            "text",
            Box::new(Capital::new()),
            example! { "country": "input" => country },
            vec![("capital", json!(capital))],
        );
    }
    for (a, b) in [(2, 3), (10, 5), (7, 8)] {
        add(
            "int",
            Box::new(Sum::new()),
            example! { "a": "input" => a, "b": "input" => b },
            vec![("sum", json!(a + b))],
        );
        add(
            "chain of thought",
            Box::new(SumStepByStep::new()),
            example! { "a": "input" => a, "b": "input" => b },
            vec![("sum", json!(a + b))],
        );
    }
    for number in [10.0, 7.0, 3.0] {
        add(
            "float",
            Box::new(Half::new()),
            example! { "number": "input" => number },
            vec![("half", json!(number / 2.0))],
        );
    }
    for number in [4, 7, 10] {
        add(
            "bool",
            Box::new(Parity::new()),
            example! { "number": "input" => number },
            vec![("is_even", json!(number % 2 == 0))],
        );
    }
    for (request, colours) in [
        (
            "the colours of the French flag",
            vec!["blue", "white", "red"],
        ),
        ("the three primary colours", vec!["red", "yellow", "blue"]),
    ] {
        add(
            "list",
            Box::new(Colours::new()),
            example! { "request": "input" => request },
            vec![("colours", json!(colours))],
        );
    }
    for (city, country, continent) in [
        ("Paris", "France", "Europe"),
        ("Tokyo", "Japan", "Asia"),
        ("Cairo", "Egypt", "Africa"),
    ] {
        add(
            "two outputs",
            Box::new(Place::new()),
            example! { "city": "input" => city },
            vec![("country", json!(country)), ("continent", json!(continent))],
        );
    }
    all
}

/// Whether `got` is `expected`, as a person would judge a short answer:
/// text case-insensitively and containing the expected word, lists as sets.
fn right(got: &Value, expected: &Value) -> bool {
    let words = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| i.as_str().unwrap_or_default().trim().to_lowercase())
                    .collect()
            })
            .unwrap_or_default()
    };
    match (got, expected) {
        (Value::String(got), Value::String(expected)) => {
            got.to_lowercase().contains(&expected.to_lowercase())
        }
        (Value::Number(got), Value::Number(expected)) => got.as_f64() == expected.as_f64(),
        (Value::Array(_), Value::Array(_)) => {
            let (mut got, mut expected) = (words(got), words(expected));
            got.sort();
            expected.sort();
            got == expected
        }
        (got, expected) => got == expected,
    }
}

#[derive(Default)]
struct Tally {
    calls: usize,
    parsed: usize,
    right: usize,
    tokens: usize,
    decode: Duration,
}

async fn run<B: Backend>(adapter: &LocalAdapter<B>, lm: &LM) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    for question in questions() {
        tally.calls += 1;
        match adapter
            .predict(lm, question.signature.as_ref(), &question.inputs)
            .await
        {
            Ok((data, generation)) => {
                tally.parsed += 1;
                tally.tokens += generation.completion_tokens;
                tally.decode += generation.timings.decode;
                if question
                    .expected
                    .iter()
                    .all(|(field, want)| data.get(*field).is_some_and(|got| right(got, want)))
                {
                    tally.right += 1;
                }
            }
            Err(Error::Parse(_)) => {}
            Err(e) => return Err(e).context(question.kind),
        }
    }
    Ok(tally)
}

async fn measure<B: Backend>(
    model: &str,
    backend: &str,
    adapter: impl Fn(bool) -> LocalAdapter<B>,
) -> anyhow::Result<()> {
    for constrained in [true, false] {
        let adapter = adapter(constrained);
        let lm = adapter.lm().await?;
        let tally = run(&adapter, &lm).await?;
        println!(
            "| {model} | {backend} | {} | {}/{} ({:.0} %) | {}/{} | {:.1} |",
            if constrained { "on" } else { "off" },
            tally.parsed,
            tally.calls,
            100.0 * tally.parsed as f64 / tally.calls as f64,
            tally.right,
            tally.calls,
            tally.tokens as f64 / tally.decode.as_secs_f64().max(1e-9),
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let names = if names.is_empty() {
        vec!["smollm2-135m".into(), "gemma3-270m".into()]
    } else {
        names
    };
    let config = |constrained: bool| {
        GenerationConfig::default()
            .with_temperature(0.0)
            .with_max_tokens(192)
            .with_max_text_chars(200)
            .with_constraint(constrained)
    };
    println!("| model | backend | constraint | parsed | right | completion tok/s |");
    println!("|---|---|---|---|---|---|");
    for name in &names {
        let path = ModelSource::parse(name).resolve()?;
        let llama = Arc::new(LlamaCppModel::load(&path, LlamaCppLoadOptions::default())?);
        measure(name, "llama.cpp", |constrained| {
            LlamaCppAdapter::from_loaded_model(
                Arc::clone(&llama),
                LlamaCppConfig::default().with_generation(config(constrained)),
            )
        })
        .await?;
        drop(llama);
        let candle = Arc::new(CandleModel::load(&path, CandleLoadOptions::default())?);
        measure(name, "candle", |constrained| {
            CandleAdapter::from_loaded_model(
                Arc::clone(&candle),
                CandleConfig::default().with_generation(config(constrained)),
            )
        })
        .await?;
    }
    Ok(())
}
