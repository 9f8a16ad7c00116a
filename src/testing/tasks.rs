//! The task families the crate's own small model (`models/dsrs-tiny.gguf`) is
//! trained on and tested against: DSPy signatures with known answers.
//!
//! Training draws examples from [`TaskStream::training`]; tests draw from
//! [`TaskStream::held_out`], which asks only arithmetic pairs and sentences the
//! training stream never produces (a fixed hash decides which ones), so
//! accuracy measures generalisation, not recall. Countries are the exception:
//! a capital cannot be inferred, so every country is trained and tested.
//!
//! Each family comes in several signature shapes (field names, instructions,
//! output types, with and without demos), so the model learns the protocol
//! rather than one prompt.

use std::collections::HashMap;

use dspy_rs::{Example, MetaSignature};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use super::tool_task::{LOOKUP_TOOL, ToolRound, code_of, distractor_specs, lookup_spec, tools_for};
use crate::prompt::ToolCall;

/// The kinds of question the small model answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskFamily {
    /// Addition or subtraction of two numbers under 100 (`i32` answer;
    /// subtractions have non-negative results).
    Arithmetic,
    /// The capital of a country from [`CAPITALS`] (`String`).
    Capital,
    /// Whether a sentence built from the sentiment word lists is positive
    /// (`"positive"`/`"negative"` or a `bool`).
    Sentiment,
    /// Whether a number is even (`bool`).
    Parity,
    /// The words of a short sentence (`Vec<String>`).
    Words,
    /// Arithmetic with a `reasoning` field first (`#[Signature(cot)]`).
    ReasonedArithmetic,
    /// The code of an item, which only the `lookup_code` tool knows
    /// (`i32`; see [`super::tool_task`]).
    ToolLookup,
}

impl TaskFamily {
    /// Every family, in a fixed order.
    pub const ALL: [TaskFamily; 7] = [
        TaskFamily::Arithmetic,
        TaskFamily::Capital,
        TaskFamily::Sentiment,
        TaskFamily::Parity,
        TaskFamily::Words,
        TaskFamily::ReasonedArithmetic,
        TaskFamily::ToolLookup,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            TaskFamily::Arithmetic => "arithmetic",
            TaskFamily::Capital => "capital",
            TaskFamily::Sentiment => "sentiment",
            TaskFamily::Parity => "parity",
            TaskFamily::Words => "words",
            TaskFamily::ReasonedArithmetic => "arithmetic (cot)",
            TaskFamily::ToolLookup => "tool lookup",
        }
    }
}

/// Countries and their capitals: the capital task's whole table.
pub const CAPITALS: &[(&str, &str)] = &[
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Colombia", "Bogota"),
    ("Australia", "Canberra"),
    ("New Zealand", "Wellington"),
    ("Russia", "Moscow"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Switzerland", "Bern"),
    ("Belgium", "Brussels"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"),
    ("Ireland", "Dublin"),
    ("United Kingdom", "London"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Hungary", "Budapest"),
    ("Czechia", "Prague"),
    ("Romania", "Bucharest"),
    ("Ukraine", "Kyiv"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"),
    ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"),
    ("Pakistan", "Islamabad"),
    ("Nigeria", "Abuja"),
    ("Ghana", "Accra"),
    ("Ethiopia", "Addis Ababa"),
    ("Morocco", "Rabat"),
    ("Cuba", "Havana"),
    ("Iceland", "Reykjavik"),
    ("Nepal", "Kathmandu"),
];

const SUBJECTS: &[&str] = &[
    "movie", "food", "service", "weather", "book", "trip", "hotel", "game", "song", "team",
    "concert", "dinner", "class", "show", "room", "coffee", "staff", "party", "visit", "ride",
];
const POSITIVE_ADJECTIVES: &[&str] = &[
    "great",
    "wonderful",
    "excellent",
    "lovely",
    "amazing",
    "fantastic",
    "pleasant",
    "delightful",
    "superb",
    "brilliant",
];
const NEGATIVE_ADJECTIVES: &[&str] = &[
    "terrible",
    "awful",
    "boring",
    "horrible",
    "dreadful",
    "disappointing",
    "poor",
    "bad",
    "dull",
    "miserable",
];
const POSITIVE_VERBS: &[&str] = &["loved", "enjoyed", "liked", "adored", "admired"];
const NEGATIVE_VERBS: &[&str] = &["hated", "disliked", "regretted", "loathed", "resented"];

const NOUNS: &[&str] = &[
    "cat", "dog", "bird", "child", "teacher", "farmer", "river", "train", "garden", "house",
    "window", "table", "letter", "city", "friend", "doctor", "boat", "tree", "road", "lamp",
];
const VERBS: &[&str] = &[
    "sees", "finds", "likes", "follows", "paints", "watches", "builds", "carries", "visits",
    "opens",
];
const ADJECTIVES: &[&str] = &[
    "small", "old", "red", "quiet", "happy", "green", "tall", "young", "busy", "bright",
];
const DETERMINERS: &[&str] = &["The", "A", "My", "Our", "That", "This"];

/// A signature built at run time, formatted exactly as one from dspy-rs's
/// `#[Signature]` macro with the same fields (same JSON, same type names).
#[derive(Debug, Clone, Default)]
pub struct TaskSignature {
    instruction: String,
    input_fields: Map<String, Value>,
    output_fields: Map<String, Value>,
    demos: Vec<Example>,
}

/// The Rust type of a task field, as the `#[Signature]` macro names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// `String`.
    Text,
    /// `i32`.
    Integer,
    /// `bool`.
    Boolean,
    /// `Vec<String>` (the macro adds its JSON schema).
    TextList,
}

impl FieldType {
    fn metadata(self, desc: &str, kind: &str) -> Value {
        let (type_name, schema) = match self {
            FieldType::Text => ("String", json!("")),
            FieldType::Integer => ("i32", json!("")),
            FieldType::Boolean => ("bool", json!("")),
            // What `schemars::schema_for!(Vec<String>)` gives the macro.
            FieldType::TextList => (
                "Vec < String >",
                json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "title": "Array_of_string",
                    "type": "array",
                    "items": { "type": "string" }
                }),
            ),
        };
        json!({ "type": type_name, "desc": desc, "schema": schema, "__dsrs_field_type": kind })
    }
}

impl TaskSignature {
    /// A signature with this instruction (empty: dspy-rs's default sentence).
    pub fn new(instruction: impl Into<String>) -> Self {
        TaskSignature {
            instruction: instruction.into(),
            ..TaskSignature::default()
        }
    }

    /// Adds an input field.
    pub fn input(mut self, name: &str, field_type: FieldType, desc: &str) -> Self {
        self.input_fields
            .insert(name.into(), field_type.metadata(desc, "input"));
        self
    }

    /// Adds an output field.
    pub fn output(mut self, name: &str, field_type: FieldType, desc: &str) -> Self {
        self.output_fields
            .insert(name.into(), field_type.metadata(desc, "output"));
        self
    }

    /// Adds the `reasoning` output field that `#[Signature(cot)]` puts first.
    pub fn with_reasoning(self) -> Self {
        self.output("reasoning", FieldType::Text, "Think step by step")
    }
}

impl MetaSignature for TaskSignature {
    fn demos(&self) -> Vec<Example> {
        self.demos.clone()
    }

    fn set_demos(&mut self, demos: Vec<Example>) -> anyhow::Result<()> {
        self.demos = demos;
        Ok(())
    }

    fn instruction(&self) -> String {
        self.instruction.clone()
    }

    fn input_fields(&self) -> Value {
        Value::Object(self.input_fields.clone())
    }

    fn output_fields(&self) -> Value {
        Value::Object(self.output_fields.clone())
    }

    fn update_instruction(&mut self, instruction: String) -> anyhow::Result<()> {
        self.instruction = instruction;
        Ok(())
    }

    fn append(&mut self, name: &str, value: Value) -> anyhow::Result<()> {
        let kind = value["__dsrs_field_type"].as_str().unwrap_or("input");
        let fields = if kind == "output" {
            &mut self.output_fields
        } else {
            &mut self.input_fields
        };
        fields.insert(name.into(), value);
        Ok(())
    }
}

/// One question: a signature (with its demos), the inputs, and the right
/// answer for every output field.
#[derive(Debug, Clone)]
pub struct TaskExample {
    /// The family it belongs to.
    pub family: TaskFamily,
    /// The signature, demos included.
    pub signature: TaskSignature,
    /// The input fields.
    pub inputs: Example,
    /// The expected value of every output field.
    pub outputs: Map<String, Value>,
    /// The output field whose value decides correctness (the answer, not the
    /// reasoning).
    pub answer_field: String,
    /// The tool family's round trip (its tools, the call, the result).
    pub tool_round: Option<ToolRound>,
}

impl TaskExample {
    /// The expected answer.
    pub fn expected(&self) -> &Value {
        &self.outputs[&self.answer_field]
    }

    /// The inputs and outputs as one example, as a demo carries them.
    pub fn as_demo(&self) -> Example {
        let mut data: HashMap<String, Value> = self.inputs.data.clone();
        data.extend(self.outputs.clone());
        Example::new(
            data,
            self.inputs.input_keys.clone(),
            self.outputs.keys().cloned().collect(),
        )
    }
}

/// A seeded stream of task examples.
#[derive(Debug, Clone)]
pub struct TaskStream {
    rng: ChaCha8Rng,
    side: Side,
}

/// Which items a stream asks.
#[derive(Debug, Clone, Copy)]
struct Side {
    /// Only held-out items (otherwise only training ones).
    held_out: bool,
    /// The share of arithmetic questions drawn from [`is_hard_pair`]'s pairs.
    hard_arithmetic: f64,
}

/// One question before it is dressed as a signature call.
struct Question {
    /// Input field values in signature order.
    inputs: Vec<Value>,
    /// Output field values in signature order.
    outputs: Vec<Value>,
}

/// Draws a question from one side of the held-out split.
type Ask = Box<dyn Fn(&mut ChaCha8Rng, Side) -> Question>;

/// A signature shape with a way to fill it.
struct Shape {
    signature: TaskSignature,
    answer_field: String,
    ask: Ask,
}

impl TaskStream {
    /// The stream training draws from: never asks a held-out pair or sentence.
    pub fn training(seed: u64) -> Self {
        TaskStream {
            rng: ChaCha8Rng::seed_from_u64(seed),
            side: Side {
                held_out: false,
                hard_arithmetic: 0.0,
            },
        }
    }

    /// The same stream drawing `share` (0 to 1) of its arithmetic questions,
    /// demos included, from the pairs a small model learns last
    /// ([`is_hard_pair`]): a training curriculum; the rest stay uniform.
    pub fn with_hard_arithmetic(mut self, share: f64) -> Self {
        self.side.hard_arithmetic = share.clamp(0.0, 1.0);
        self
    }

    /// The stream tests draw from: asks only held-out pairs and sentences
    /// (demos still come from the training side).
    pub fn held_out(seed: u64) -> Self {
        TaskStream {
            rng: ChaCha8Rng::seed_from_u64(seed),
            side: Side {
                held_out: true,
                hard_arithmetic: 0.0,
            },
        }
    }

    /// A random example of `family`, with `demos` demos (none for the tool
    /// family, whose demos would answer without the tool).
    pub fn sample(&mut self, family: TaskFamily, demos: usize) -> TaskExample {
        let Some(shape) = shape(family, &mut self.rng) else {
            let (signature, output, code, round) = tool_question(&mut self.rng, self.side.held_out);
            let question = Question {
                inputs: vec![round.call.arguments["item"].clone()],
                outputs: vec![json!(code)],
            };
            let mut example = example_of(&signature, &question);
            example.family = family;
            example.answer_field = output;
            example.tool_round = Some(round);
            return example;
        };
        self.fill(family, shape, demos)
    }

    /// `count` questions of the short-answer families (arithmetic, capital,
    /// sentiment, parity) in turn, with 0, 1 or 2 demos in turn: on them the
    /// own model answers with wide margins, so a reply does not hang on the
    /// rounding of one batch shape against another.
    pub fn short_answers(&mut self, count: usize) -> Vec<TaskExample> {
        const FAMILIES: [TaskFamily; 4] = [
            TaskFamily::Arithmetic,
            TaskFamily::Capital,
            TaskFamily::Sentiment,
            TaskFamily::Parity,
        ];
        (0..count)
            .map(|i| self.sample(FAMILIES[i % FAMILIES.len()], i % 3))
            .collect()
    }

    /// Every country of [`CAPITALS`] once, each in a random capital shape.
    pub fn every_capital(&mut self, demos: usize) -> Vec<TaskExample> {
        (0..CAPITALS.len())
            .map(|country| {
                let shape = capital_shape(&mut self.rng, Some(country));
                self.fill(TaskFamily::Capital, shape, demos)
            })
            .collect()
    }

    fn fill(&mut self, family: TaskFamily, shape: Shape, demos: usize) -> TaskExample {
        let demo_examples: Vec<Example> = (0..demos)
            .map(|_| {
                let demo_side = Side {
                    held_out: false,
                    ..self.side
                };
                let question = (shape.ask)(&mut self.rng, demo_side);
                example_of(&shape.signature, &question).as_demo()
            })
            .collect();
        let question = (shape.ask)(&mut self.rng, self.side);
        let mut example = example_of(&shape.signature, &question);
        example.signature.demos = demo_examples;
        example.family = family;
        example.answer_field = shape.answer_field;
        example
    }
}

fn example_of(signature: &TaskSignature, question: &Question) -> TaskExample {
    let input_keys: Vec<String> = signature.input_fields.keys().cloned().collect();
    let data: HashMap<String, Value> = input_keys
        .iter()
        .cloned()
        .zip(question.inputs.iter().cloned())
        .collect();
    let outputs: Map<String, Value> = signature
        .output_fields
        .keys()
        .cloned()
        .zip(question.outputs.iter().cloned())
        .collect();
    TaskExample {
        family: TaskFamily::Arithmetic,
        signature: signature.clone(),
        inputs: Example::new(data, input_keys, vec![]),
        answer_field: String::new(),
        outputs,
        tool_round: None,
    }
}

/// Whether an item belongs to the held-out side: a fixed eighth of all items,
/// chosen by hash.
pub fn is_held_out(key: &str) -> bool {
    // FNV-1a, then a final mix so nearby keys land far apart.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash.is_multiple_of(8)
}

/// Draws until the item is on the wanted side of the held-out split.
fn draw<T>(
    rng: &mut ChaCha8Rng,
    held_out: bool,
    key: impl Fn(&T) -> String,
    mut make: impl FnMut(&mut ChaCha8Rng) -> T,
) -> T {
    loop {
        let item = make(rng);
        if is_held_out(&key(&item)) == held_out {
            return item;
        }
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or_default()
}

#[derive(Clone, Copy)]
enum Operation {
    Add,
    Subtract,
}

impl Operation {
    fn apply(self, a: i32, b: i32) -> i32 {
        match self {
            Operation::Add => a + b,
            Operation::Subtract => a - b,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Operation::Add => "+",
            Operation::Subtract => "-",
        }
    }
}

/// Column arithmetic, units then tens, as the reasoning of the `cot` shape:
/// `96 + 83`: "6 + 3 = 9, 9 + 8 + 0 = 17, so 96 + 83 = 179";
/// `71 - 59`: "11 - 9 = 2, 7 - 5 - 1 = 1, so 71 - 59 = 12" (a borrow shows
/// as the ten added to the units and the 1 taken from the tens). Every step
/// is one digit fact, which a small model learns far sooner than the whole
/// sum at once.
fn written_sum(operation: Operation, a: i32, b: i32) -> String {
    let (a_tens, a_units, b_tens, b_units) = (a / 10, a % 10, b / 10, b % 10);
    let result = operation.apply(a, b);
    match operation {
        Operation::Add => {
            let units = a_units + b_units;
            let carry = units / 10;
            let tens = a_tens + b_tens + carry;
            format!(
                "{a_units} + {b_units} = {units}, {a_tens} + {b_tens} + {carry} = {tens}, so {a} + {b} = {result}"
            )
        }
        Operation::Subtract => {
            let borrow = i32::from(a_units < b_units);
            let units = a_units + 10 * borrow - b_units;
            let tens = a_tens - b_tens - borrow;
            format!(
                "{} - {b_units} = {units}, {a_tens} - {b_tens} - {borrow} = {tens}, so {a} - {b} = {result}",
                a_units + 10 * borrow
            )
        }
    }
}

/// Two operands under 100 (for subtraction, the first is the larger).
fn operands(rng: &mut ChaCha8Rng, side: Side, operation: Operation) -> (i32, i32) {
    // Decided before drawing, so a stream with no share draws as it always did.
    let hard = side.hard_arithmetic > 0.0 && rng.random_bool(side.hard_arithmetic);
    draw(
        rng,
        side.held_out,
        |(a, b)| format!("{}{a}{b}", operation.symbol()),
        |rng| loop {
            let a = rng.random_range(0..100);
            let b = rng.random_range(0..100);
            let pair = match operation {
                Operation::Add => (a, b),
                Operation::Subtract => (a.max(b), a.min(b)),
            };
            if !hard || is_hard_pair(operation, pair) {
                return pair;
            }
        },
    )
}

/// The pairs whose answers a small model gets right last (what the trained
/// model missed): a carry or borrow at its boundary (`99 + 41`: units sum to
/// ten; `81 - 51`: equal units), a sum at the hundreds boundary, a one-digit
/// result of a subtraction, or a one-digit operand (whose digit sits where a
/// tens digit usually does).
fn is_hard_pair(operation: Operation, (a, b): (i32, i32)) -> bool {
    let (a_tens, a_units, b_tens, b_units) = (a / 10, a % 10, b / 10, b % 10);
    let one_digit_operand = a < 10 || b < 10;
    match operation {
        Operation::Add => {
            let units = a_units + b_units;
            let tens = a_tens + b_tens + units / 10;
            one_digit_operand || matches!(units, 9 | 10) || matches!(tens, 9 | 10)
        }
        Operation::Subtract => {
            let borrow = i32::from(a_units < b_units);
            let units_gap = a_units - b_units;
            one_digit_operand || matches!(units_gap, -1 | 0) || a_tens - b_tens - borrow == 0
        }
    }
}

/// The family's shapes; `None` for the tool family, drawn whole by
/// [`tool_question`] (its signature comes with its tools).
fn shape(family: TaskFamily, rng: &mut ChaCha8Rng) -> Option<Shape> {
    Some(match family {
        TaskFamily::Arithmetic => arithmetic_shape(rng, false),
        TaskFamily::ReasonedArithmetic => arithmetic_shape(rng, true),
        TaskFamily::Capital => capital_shape(rng, None),
        TaskFamily::Sentiment => sentiment_shape(rng),
        TaskFamily::Parity => parity_shape(rng),
        TaskFamily::Words => words_shape(rng),
        TaskFamily::ToolLookup => return None,
    })
}

const ADD_INSTRUCTIONS: &[&str] = &[
    "Add the two numbers.",
    "Compute the sum.",
    "Add the numbers together.",
    "Return the sum of the inputs.",
];
const ADD_OUTPUTS: &[&str] = &["sum", "result", "total", "answer"];
const SUBTRACT_INSTRUCTIONS: &[&str] = &[
    "Subtract the second number from the first.",
    "Compute the difference.",
    "Take the second number away from the first.",
];
const SUBTRACT_OUTPUTS: &[&str] = &["difference", "result", "answer", "remainder"];
const OPERAND_NAMES: &[(&str, &str)] = &[
    ("a", "b"),
    ("x", "y"),
    ("first", "second"),
    ("left", "right"),
];
const QUESTION_INSTRUCTIONS: &[&str] = &[
    "Answer the question.",
    "Answer the question in a few words.",
    "Give a short answer.",
    "",
];

/// An instruction and output name for `operation`; with dspy-rs's default
/// instruction (which names no operation) the output's name must say it.
fn arithmetic_names(rng: &mut ChaCha8Rng, operation: Operation) -> (&'static str, &'static str) {
    let (instructions, outputs) = match operation {
        Operation::Add => (ADD_INSTRUCTIONS, ADD_OUTPUTS),
        Operation::Subtract => (SUBTRACT_INSTRUCTIONS, SUBTRACT_OUTPUTS),
    };
    if rng.random_bool(0.15) {
        ("", outputs[0])
    } else {
        (pick(rng, instructions), pick(rng, outputs))
    }
}

fn arithmetic_shape(rng: &mut ChaCha8Rng, reasoning: bool) -> Shape {
    if !reasoning && rng.random_bool(0.3) {
        return arithmetic_question_shape(rng);
    }
    let operation = if rng.random_bool(0.5) {
        Operation::Add
    } else {
        Operation::Subtract
    };
    let (instruction, output) = arithmetic_names(rng, operation);
    let (a_name, b_name) = *OPERAND_NAMES.choose(rng).unwrap_or(&("a", "b"));
    let mut signature = TaskSignature::new(instruction)
        .input(a_name, FieldType::Integer, "")
        .input(b_name, FieldType::Integer, "");
    if reasoning {
        signature = signature.with_reasoning();
    }
    Shape {
        signature: signature.output(output, FieldType::Integer, ""),
        answer_field: output.into(),
        ask: Box::new(move |rng, side| {
            let (a, b) = operands(rng, side, operation);
            let result = operation.apply(a, b);
            let mut outputs = Vec::new();
            if reasoning {
                outputs.push(json!(written_sum(operation, a, b)));
            }
            outputs.push(json!(result));
            Question {
                inputs: vec![json!(a), json!(b)],
                outputs,
            }
        }),
    }
}

/// Arithmetic asked in words, answered as a number or as text.
fn arithmetic_question_shape(rng: &mut ChaCha8Rng) -> Shape {
    let text_answer = rng.random_bool(0.5);
    let answer_type = if text_answer {
        FieldType::Text
    } else {
        FieldType::Integer
    };
    Shape {
        signature: TaskSignature::new(pick(rng, QUESTION_INSTRUCTIONS))
            .input("question", FieldType::Text, "")
            .output("answer", answer_type, ""),
        answer_field: "answer".into(),
        ask: Box::new(move |rng, side| {
            let operation = if rng.random_bool(0.5) {
                Operation::Add
            } else {
                Operation::Subtract
            };
            let (a, b) = operands(rng, side, operation);
            let result = operation.apply(a, b);
            let question = match (operation, rng.random_range(0..3)) {
                (Operation::Add, 0) => format!("What is {a} plus {b}?"),
                (Operation::Add, 1) => format!("What is {a} + {b}?"),
                (Operation::Add, _) => format!("How much is {a} and {b} together?"),
                (Operation::Subtract, 0) => format!("What is {a} minus {b}?"),
                (Operation::Subtract, 1) => format!("What is {a} - {b}?"),
                (Operation::Subtract, _) => format!("How much is {a} take away {b}?"),
            };
            let answer = if text_answer {
                json!(result.to_string())
            } else {
                json!(result)
            };
            Question {
                inputs: vec![json!(question)],
                outputs: vec![answer],
            }
        }),
    }
}

const CAPITAL_INSTRUCTIONS: &[&str] = &[
    "Name the capital city of the country.",
    "Give the capital of the country.",
    "What is the capital of this country?",
    "Find the capital.",
    "",
];
const CAPITAL_FIELDS: &[(&str, &str)] = &[
    ("country", "capital"),
    ("country", "city"),
    ("nation", "capital_city"),
    ("country", "answer"),
];

/// A capital shape; with `country`, it asks that one.
fn capital_shape(rng: &mut ChaCha8Rng, country: Option<usize>) -> Shape {
    let choose = move |rng: &mut ChaCha8Rng| {
        country
            .and_then(|index| CAPITALS.get(index))
            .or_else(|| CAPITALS.choose(rng))
            .copied()
            .unwrap_or(("France", "Paris"))
    };
    if rng.random_bool(0.4) {
        return Shape {
            signature: TaskSignature::new(pick(rng, QUESTION_INSTRUCTIONS))
                .input("question", FieldType::Text, "")
                .output("answer", FieldType::Text, ""),
            answer_field: "answer".into(),
            ask: Box::new(move |rng, _| {
                let (country, capital) = choose(rng);
                let question = match rng.random_range(0..3) {
                    0 => format!("What is the capital of {country}?"),
                    1 => format!("Which city is the capital of {country}?"),
                    _ => format!("Name the capital of {country}."),
                };
                Question {
                    inputs: vec![json!(question)],
                    outputs: vec![json!(capital)],
                }
            }),
        };
    }
    let instruction = pick(rng, CAPITAL_INSTRUCTIONS);
    let (input, output) = if instruction.is_empty() {
        ("country", "capital")
    } else {
        *CAPITAL_FIELDS
            .choose(rng)
            .unwrap_or(&("country", "capital"))
    };
    Shape {
        signature: TaskSignature::new(instruction)
            .input(input, FieldType::Text, "")
            .output(output, FieldType::Text, ""),
        answer_field: output.into(),
        ask: Box::new(move |rng, _| {
            let (country, capital) = choose(rng);
            Question {
                inputs: vec![json!(country)],
                outputs: vec![json!(capital)],
            }
        }),
    }
}

/// A sentence from the sentiment word lists and whether it is positive.
fn sentiment_sentence(rng: &mut ChaCha8Rng, held_out: bool) -> (String, bool) {
    draw(
        rng,
        held_out,
        |(sentence, _): &(String, bool)| sentence.clone(),
        |rng| {
            let positive = rng.random_bool(0.5);
            let subject = pick(rng, SUBJECTS);
            let adjective = pick(
                rng,
                if positive {
                    POSITIVE_ADJECTIVES
                } else {
                    NEGATIVE_ADJECTIVES
                },
            );
            let verb = pick(
                rng,
                if positive {
                    POSITIVE_VERBS
                } else {
                    NEGATIVE_VERBS
                },
            );
            let sentence = match rng.random_range(0..6) {
                0 => format!("The {subject} was {adjective}."),
                1 => format!("What a {adjective} {subject}!"),
                2 => format!("I found the {subject} {adjective}."),
                3 => format!("This {subject} is {adjective}."),
                4 => format!("I {verb} the {subject}."),
                _ => format!("We {verb} this {subject}."),
            };
            (sentence, positive)
        },
    )
}

const SENTIMENT_LABEL_SHAPES: &[(&str, &str, &str)] = &[
    (
        "Classify the sentiment as positive or negative.",
        "sentence",
        "sentiment",
    ),
    ("Is the review positive or negative?", "review", "sentiment"),
    ("Label the sentiment of the text.", "text", "label"),
    ("", "sentence", "sentiment"),
];
const SENTIMENT_FLAG_SHAPES: &[(&str, &str, &str)] = &[
    (
        "Decide whether the sentence is positive.",
        "sentence",
        "positive",
    ),
    ("Is the review positive?", "review", "is_positive"),
    ("", "text", "is_positive"),
];

/// Sentiment as a label (`"positive"`/`"negative"`) or as a `bool`.
fn sentiment_shape(rng: &mut ChaCha8Rng) -> Shape {
    let as_label = rng.random_bool(0.5);
    let shapes = if as_label {
        SENTIMENT_LABEL_SHAPES
    } else {
        SENTIMENT_FLAG_SHAPES
    };
    let (instruction, input, output) = *shapes.choose(rng).unwrap_or(&SENTIMENT_LABEL_SHAPES[0]);
    let (output_type, desc) = if as_label {
        (FieldType::Text, "positive or negative")
    } else {
        (FieldType::Boolean, "")
    };
    Shape {
        signature: TaskSignature::new(instruction)
            .input(input, FieldType::Text, "")
            .output(output, output_type, desc),
        answer_field: output.into(),
        ask: Box::new(move |rng, side| {
            let (sentence, positive) = sentiment_sentence(rng, side.held_out);
            let answer = match (as_label, positive) {
                (true, true) => json!("positive"),
                (true, false) => json!("negative"),
                (false, flag) => json!(flag),
            };
            Question {
                inputs: vec![json!(sentence)],
                outputs: vec![answer],
            }
        }),
    }
}

const PARITY_SHAPES: &[(&str, &str, &str)] = &[
    ("Is the number even?", "number", "is_even"),
    ("Decide whether the number is even.", "number", "even"),
    ("Check if n is even.", "n", "is_even"),
    ("", "value", "is_even"),
];

fn parity_shape(rng: &mut ChaCha8Rng) -> Shape {
    if rng.random_bool(0.3) {
        return Shape {
            signature: TaskSignature::new(pick(rng, QUESTION_INSTRUCTIONS))
                .input("question", FieldType::Text, "")
                .output("answer", FieldType::Boolean, ""),
            answer_field: "answer".into(),
            ask: Box::new(|rng, _| {
                let number: i32 = rng.random_range(0..1000);
                let question = if rng.random_bool(0.5) {
                    format!("Is {number} even?")
                } else {
                    format!("Is the number {number} even?")
                };
                Question {
                    inputs: vec![json!(question)],
                    outputs: vec![json!(number % 2 == 0)],
                }
            }),
        };
    }
    let (instruction, input, output) = *PARITY_SHAPES.choose(rng).unwrap_or(&PARITY_SHAPES[0]);
    Shape {
        signature: TaskSignature::new(instruction)
            .input(input, FieldType::Integer, "")
            .output(output, FieldType::Boolean, ""),
        answer_field: output.into(),
        ask: Box::new(|rng, _| {
            let number: i32 = rng.random_range(0..1000);
            Question {
                inputs: vec![json!(number)],
                outputs: vec![json!(number % 2 == 0)],
            }
        }),
    }
}

/// A short sentence from the word lists and its words.
fn plain_sentence(rng: &mut ChaCha8Rng, held_out: bool) -> (String, Vec<String>) {
    draw(
        rng,
        held_out,
        |(sentence, _): &(String, Vec<String>)| sentence.clone(),
        |rng| {
            let mut words = vec![pick(rng, DETERMINERS).to_string()];
            if rng.random_bool(0.5) {
                words.push(pick(rng, ADJECTIVES).into());
            }
            words.push(pick(rng, NOUNS).into());
            words.push(pick(rng, VERBS).into());
            if rng.random_bool(0.7) {
                words.push("the".into());
                if rng.random_bool(0.4) {
                    words.push(pick(rng, ADJECTIVES).into());
                }
                words.push(pick(rng, NOUNS).into());
            }
            (format!("{}.", words.join(" ")), words)
        },
    )
}

const WORD_SHAPES: &[(&str, &str, &str)] = &[
    ("Split the sentence into words.", "sentence", "words"),
    ("List the words of the sentence.", "sentence", "words"),
    ("Give the words of the text, in order.", "text", "tokens"),
    ("", "sentence", "words"),
];

fn words_shape(rng: &mut ChaCha8Rng) -> Shape {
    let (instruction, input, output) = *WORD_SHAPES.choose(rng).unwrap_or(&WORD_SHAPES[0]);
    Shape {
        signature: TaskSignature::new(instruction)
            .input(input, FieldType::Text, "")
            .output(output, FieldType::TextList, ""),
        answer_field: output.into(),
        ask: Box::new(|rng, side| {
            let (sentence, words) = plain_sentence(rng, side.held_out);
            Question {
                inputs: vec![json!(sentence)],
                outputs: vec![json!(words)],
            }
        }),
    }
}

const TOOL_INSTRUCTIONS: &[&str] = &[
    "Find the code of the item.",
    "Look up the item's code and answer with it.",
    "Use the tools to answer.",
    "",
];
const TOOL_FIELDS: &[(&str, &str)] = &[("item", "code"), ("item", "answer"), ("name", "code")];

/// A tool-family question: the signature, its answer field, the code, and
/// the round trip (with a random code in training, the hash's when held out).
fn tool_question(rng: &mut ChaCha8Rng, held_out: bool) -> (TaskSignature, String, u32, ToolRound) {
    let instruction = *TOOL_INSTRUCTIONS.choose(rng).unwrap_or(&"");
    let (input, output) = *TOOL_FIELDS.choose(rng).unwrap_or(&TOOL_FIELDS[0]);
    let signature = TaskSignature::new(instruction)
        .input(input, FieldType::Text, "")
        .output(output, FieldType::Integer, "");
    // Items from the word lists of the other families (words the model
    // already writes), in about 1200 pairs: too many to learn by heart, so
    // the call must copy the item.
    let item = loop {
        let nouns = [NOUNS, SUBJECTS];
        let adjectives = [ADJECTIVES, POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES];
        let noun = *nouns.concat().choose(rng).unwrap_or(&"lamp");
        let item = if rng.random_bool(0.7) {
            let adjective = *adjectives.concat().choose(rng).unwrap_or(&"red");
            format!("{adjective} {noun}")
        } else {
            noun.to_string()
        };
        if is_held_out(&item) == held_out {
            break item;
        }
    };
    let code: u32 = if held_out {
        code_of(&item)
    } else {
        rng.random_range(100..1000)
    };
    let mut tools = vec![lookup_spec()];
    if rng.random_bool(0.5) {
        let distractors = distractor_specs();
        if let Some(extra) = distractors.choose(rng) {
            tools.push(extra.clone());
        }
        tools.shuffle(rng);
    }
    let round = ToolRound {
        tools,
        call: ToolCall {
            id: format!("call_{}", rng.random::<u32>()),
            name: LOOKUP_TOOL.into(),
            arguments: json!({"item": item}),
        },
        result: code.to_string(),
        answer_round: rng.random_bool(0.5),
    };
    (signature, output.to_string(), code, round)
}

/// How many of `examples` an adapter answers exactly (the answer field equal
/// to the expected value), and the examples it missed with what it said (a
/// call that fails counts as a miss, its error as the answer).
pub async fn score<B: crate::Backend>(
    adapter: &crate::LocalAdapter<B>,
    lm: &dspy_rs::LM,
    examples: &[TaskExample],
) -> Score {
    use dspy_rs::adapter::Adapter as _;
    let mut score = Score::default();
    let shared_lm = std::sync::Arc::new(lm.clone());
    for example in examples {
        let answered = match &example.tool_round {
            Some(round) => adapter
                .call(
                    std::sync::Arc::clone(&shared_lm),
                    &example.signature,
                    example.inputs.clone(),
                    tools_for(&round.tools),
                )
                .await
                .map(|prediction| prediction.data)
                .map_err(|e| format!("{e:#}")),
            None => adapter
                .predict(lm, &example.signature, &example.inputs)
                .await
                .map(|(fields, _)| fields)
                .map_err(|e| e.to_string()),
        };
        let answer = match answered {
            Ok(fields) => fields
                .get(&example.answer_field)
                .cloned()
                .unwrap_or(Value::Null),
            Err(error) => Value::String(format!("error: {error}")),
        };
        if &answer == example.expected() {
            score.correct += 1;
        } else {
            score.misses.push((example.inputs.data.clone(), answer));
        }
        score.total += 1;
    }
    score
}

/// The result of [`score`].
#[derive(Debug, Clone, Default)]
pub struct Score {
    /// Exact answers.
    pub correct: usize,
    /// Examples asked.
    pub total: usize,
    /// The inputs of each miss and the answer given.
    pub misses: Vec<(HashMap<String, Value>, Value)>,
}

impl Score {
    /// The fraction answered exactly.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_examples_never_come_from_training() {
        let mut training = TaskStream::training(1);
        let mut held_out = TaskStream::held_out(2);
        for family in [
            TaskFamily::Arithmetic,
            TaskFamily::Sentiment,
            TaskFamily::Words,
        ] {
            for _ in 0..200 {
                let train = training.sample(family, 0);
                let test = held_out.sample(family, 2);
                let key = |e: &TaskExample| format!("{:?}", e.inputs.data);
                assert_ne!(key(&train), key(&test));
                assert_eq!(test.signature.demos.len(), 2);
            }
        }
    }

    /// The two operands and the integer answers of an arithmetic example or
    /// demo asked with two number fields.
    fn operands_and_answers(example: &Example) -> Option<(i32, i32, Vec<i64>)> {
        let [a, b] = example.input_keys.as_slice() else {
            return None;
        };
        let number = |key: &String| example.data.get(key)?.as_i64();
        let answers = example
            .output_keys
            .iter()
            .filter_map(|key| example.data.get(key)?.as_i64())
            .collect();
        Some((
            i32::try_from(number(a)?).ok()?,
            i32::try_from(number(b)?).ok()?,
            answers,
        ))
    }

    #[test]
    fn a_hard_arithmetic_share_of_one_draws_only_hard_pairs() {
        let mut hard = TaskStream::training(5).with_hard_arithmetic(1.0);
        let mut checked = 0;
        for family in [TaskFamily::Arithmetic, TaskFamily::ReasonedArithmetic] {
            for _ in 0..100 {
                let example = hard.sample(family, 3);
                let mut asked = example.inputs.clone();
                asked.data.extend(example.outputs.clone());
                asked.output_keys = example.outputs.keys().cloned().collect();
                for item in example.signature.demos.iter().chain([&asked]) {
                    let Some((a, b, answers)) = operands_and_answers(item) else {
                        continue;
                    };
                    let operation = if answers.contains(&i64::from(a + b)) {
                        Operation::Add
                    } else {
                        Operation::Subtract
                    };
                    assert!(is_hard_pair(operation, (a, b)), "{a} {b} {answers:?}");
                    checked += 1;
                }
            }
        }
        assert!(
            checked > 400,
            "only {checked} pairs asked with number fields"
        );
    }

    #[test]
    fn a_hard_arithmetic_share_of_zero_changes_nothing() {
        let mut plain = TaskStream::training(9);
        let mut zero = TaskStream::training(9).with_hard_arithmetic(0.0);
        for family in TaskFamily::ALL {
            for demos in 0..3 {
                let (a, b) = (plain.sample(family, demos), zero.sample(family, demos));
                assert_eq!(a.inputs.data, b.inputs.data);
                assert_eq!(a.outputs, b.outputs);
                let demo_data = |e: &TaskExample| -> Vec<HashMap<String, Value>> {
                    e.signature.demos.iter().map(|d| d.data.clone()).collect()
                };
                assert_eq!(demo_data(&a), demo_data(&b));
            }
        }
        // `is_hard_pair` picks some pairs, not all (or the test above would
        // prove nothing): about half of the uniform ones.
        let hard = (0..100)
            .flat_map(|a| (0..100).map(move |b| (a, b)))
            .filter(|&pair| is_hard_pair(Operation::Add, pair))
            .count();
        assert!(
            (3000..7000).contains(&hard),
            "{hard} of 10000 sums are hard"
        );
    }

    #[test]
    fn answers_are_right() {
        let mut stream = TaskStream::training(3);
        for _ in 0..100 {
            let example = stream.sample(TaskFamily::Arithmetic, 0);
            if example.inputs.input_keys.len() == 2 {
                let a = example.inputs.data[&example.inputs.input_keys[0]]
                    .as_i64()
                    .unwrap_or_default();
                let b = example.inputs.data[&example.inputs.input_keys[1]]
                    .as_i64()
                    .unwrap_or_default();
                let result = example.expected().as_i64().unwrap_or_default();
                assert!(result == a + b || result == a - b, "{a} {b} {result}");
                assert!((0..100).contains(&a) && (0..100).contains(&b));
            }
        }
        assert_eq!(stream.every_capital(0).len(), CAPITALS.len());
    }

    #[test]
    fn written_sums_go_column_by_column() {
        let cases = [
            (
                Operation::Add,
                96,
                83,
                "6 + 3 = 9, 9 + 8 + 0 = 17, so 96 + 83 = 179",
            ),
            (
                Operation::Add,
                8,
                94,
                "8 + 4 = 12, 0 + 9 + 1 = 10, so 8 + 94 = 102",
            ),
            (
                Operation::Subtract,
                71,
                59,
                "11 - 9 = 2, 7 - 5 - 1 = 1, so 71 - 59 = 12",
            ),
            (
                Operation::Subtract,
                86,
                79,
                "16 - 9 = 7, 8 - 7 - 1 = 0, so 86 - 79 = 7",
            ),
        ];
        for (operation, a, b, written) in cases {
            assert_eq!(written_sum(operation, a, b), written);
        }
    }
}
