// The signatures the tests share. The `Signature` macro makes private
// structs, so they live at the crate root (`include!`d by main.rs), where
// every test module sees them.

use dspy_rs::Signature;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[Signature]
struct QA {
    /// Answer the question.
    #[input]
    question: String,
    #[output]
    answer: String,
}

#[Signature]
struct MultiField {
    /// Describe a number.
    #[input(desc = "a number")]
    number: i32,
    #[input]
    language: String,
    #[output(desc = "the number doubled")]
    doubled: i32,
    #[output]
    half: f64,
    #[output]
    is_even: bool,
    #[output(desc = "its digits, as words")]
    digits: Vec<String>,
    #[output]
    comment: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
struct City {
    name: String,
    population: u64,
}

#[Signature]
struct CapitalFacts {
    /// Give facts about the capital.
    #[input]
    country: String,
    #[output]
    capital: City,
}

#[Signature(cot)]
struct Arithmetic {
    /// Compute the sum.
    #[input]
    a: i32,
    #[input]
    b: i32,
    #[output]
    sum: i32,
}

#[Signature]
struct ItemCode {
    /// Find the code of the item.
    #[input]
    item: String,
    #[output]
    code: i32,
}

#[Signature(cot)]
struct ItemCodeReasoned {
    /// Find the code of the item.
    #[input]
    item: String,
    #[output]
    code: i32,
}
