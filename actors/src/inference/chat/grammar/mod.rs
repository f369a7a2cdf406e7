//! Constrained decoding's grammars: what a completion's text must match,
//! as llama.cpp's GBNF, made from a JSON Schema (`schema.rs`), a regular
//! expression (`regex.rs`), a list of choices, or given as GBNF. Each one
//! is bounded (`gbnf.rs`) before it reaches llama.cpp, whose grammar
//! parser recurses on nesting and copies every repetition out.

mod gbnf;
mod regex;
mod schema;

use std::sync::{Arc, OnceLock};

use serde_json::Value;

use self::gbnf::literal;
use super::tools::{CALL_CLOSE, CALL_OPEN};

/// A grammar in llama.cpp's GBNF whose start rule is `root`; a lazy one
/// leaves the text free until its trigger appears, and constrains it from
/// the trigger on (tool calls among free text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grammar {
    gbnf: Arc<str>,
    trigger: Option<Arc<str>>,
}

/// A function a tool call may name, and the grammar of its arguments (a
/// JSON object).
#[derive(Debug, Clone)]
pub struct ToolFunction {
    pub name: String,
    pub arguments: Grammar,
}

/// Why a grammar cannot be made or used; each names what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error(
        "the JSON Schema keyword `{keyword}` at {at} cannot be enforced while decoding; remove it, or send `strict: false` to use the schema as guidance where it cannot be enforced"
    )]
    UnsupportedKeyword { keyword: String, at: String },
    #[error("the JSON Schema is invalid at {at}: {reason}")]
    InvalidSchema { at: String, reason: String },
    #[error("the regular expression is invalid: {0}")]
    InvalidRegex(String),
    #[error("the regular expression cannot be enforced while decoding: {0}")]
    UnsupportedRegex(String),
    #[error("the grammar is invalid: {0}")]
    InvalidGrammar(String),
    #[error("{0} is nested more than {limit} levels deep", limit = MOST_NESTING)]
    TooDeep(&'static str),
    #[error(
        "the grammar would expand to more than {limit} elements (repetition counts multiply); lower the counts",
        limit = MOST_ELEMENTS
    )]
    TooLarge,
    #[error("choices must be 1 to {limit} non-empty strings", limit = MOST_CHOICES)]
    InvalidChoices,
}

/// A JSON object, as llama.cpp's grammars/json.gbnf spells one (the
/// whitespace between tokens bounded, so it cannot run on alone).
const JSON_OBJECT: &str = r#"root ::= object
value ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,4})? ws
ws ::= | " " | "\n" [ \t]{0,20}
"#;

/// How deep a schema, a regular expression or a grammar may nest.
pub const MOST_NESTING: usize = 32;
/// The most elements a grammar may have once its repetitions are copied out.
pub const MOST_ELEMENTS: u64 = 200_000;
/// The most copies one repetition may make: llama.cpp reads a larger
/// upper bound as no bound.
pub const MOST_REPETITION: u64 = 2_000;
/// The most choices one completion may choose from.
pub const MOST_CHOICES: usize = 1_024;

impl Grammar {
    /// GBNF text as it was given (`root` must be defined); its size is
    /// checked here, its syntax by the engine that parses it.
    pub fn from_gbnf(text: &str) -> Result<Self, GrammarError> {
        gbnf::check_size(text)?;
        if !gbnf::defines_root(text) {
            return Err(GrammarError::InvalidGrammar("it does not define the rule `root`".to_owned()));
        }
        Ok(Self { gbnf: Arc::from(text), trigger: None })
    }

    /// Any JSON object (OpenAI's `json_object` format).
    pub fn json_object() -> Self {
        static OBJECT: OnceLock<Grammar> = OnceLock::new();
        OBJECT.get_or_init(|| Self { gbnf: Arc::from(JSON_OBJECT), trigger: None }).clone()
    }

    /// Text that is a JSON value matching `schema`. With `strict`, a
    /// keyword the grammar cannot enforce is refused by name; without, it
    /// is left as guidance the output may not follow.
    pub fn from_json_schema(schema: &Value, strict: bool) -> Result<Self, GrammarError> {
        schema::audit(schema, strict)?;
        let gbnf = schema::convert(schema)?;
        gbnf::check_size(&gbnf)?;
        Ok(Self { gbnf: Arc::from(gbnf), trigger: None })
    }

    /// Text the whole of which matches `pattern` (anchors at its ends are
    /// implied).
    pub fn from_regex(pattern: &str) -> Result<Self, GrammarError> {
        let gbnf = format!("root ::= {}\n", regex::convert(pattern)?);
        gbnf::check_size(&gbnf)?;
        Ok(Self { gbnf: Arc::from(gbnf), trigger: None })
    }

    /// Exactly one of `choices`.
    pub fn from_choices(choices: &[String]) -> Result<Self, GrammarError> {
        if choices.is_empty() || choices.len() > MOST_CHOICES || choices.iter().any(String::is_empty) {
            return Err(GrammarError::InvalidChoices);
        }
        let alternatives: Vec<String> = choices.iter().map(|choice| literal(choice)).collect();
        Ok(Self { gbnf: Arc::from(format!("root ::= {}\n", alternatives.join(" | "))), trigger: None })
    }

    /// Tool calls, as [`super::tools`] lays them out, to one of
    /// `functions` with arguments of its grammar: one call, or with
    /// `parallel` one or more, a line apart. A `lazy` grammar lets free
    /// text come first and constrains the text from the first call on.
    pub fn tool_calls(functions: &[ToolFunction], parallel: bool, lazy: bool) -> Result<Self, GrammarError> {
        if functions.is_empty() {
            return Err(GrammarError::InvalidGrammar("no function to call".to_owned()));
        }
        let mut gbnf =
            String::from(if parallel { "root ::= call (\"\\n\" call)*\n" } else { "root ::= call\n" });
        let alternatives: Vec<String> = functions
            .iter()
            .enumerate()
            .map(|(index, function)| {
                format!("{} f{index}-root", literal(&format!("{}\", \"arguments\": ", function.name)))
            })
            .collect();
        gbnf.push_str(&format!(
            "call ::= {} ({}) {}\n",
            literal(&format!("{CALL_OPEN}\n{{\"name\": \"")),
            alternatives.join(" | "),
            literal(&format!("}}\n{CALL_CLOSE}")),
        ));
        for (index, function) in functions.iter().enumerate() {
            gbnf.push_str(&gbnf::prefixed(function.arguments.gbnf(), &format!("f{index}-")));
            gbnf.push('\n');
        }
        gbnf::check_size(&gbnf)?;
        Ok(Self { gbnf: Arc::from(gbnf), trigger: lazy.then(|| Arc::from(CALL_OPEN)) })
    }

    pub fn gbnf(&self) -> &str {
        &self.gbnf
    }

    /// The text that starts the constrained part of a lazy grammar; `None`:
    /// the whole text is constrained.
    pub fn trigger(&self) -> Option<&str> {
        self.trigger.as_deref()
    }
}

#[cfg(test)]
mod tests;
