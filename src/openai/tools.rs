//! Tool calling, on the request's side: chat's `tools`, `tool_choice` and
//! `parallel_tool_calls` read and checked, and made into the grammar the
//! calls are decoded under (lazy with `auto`: free text until a call
//! starts); the assistant's earlier calls and the tools' results written
//! back into the conversation as the model reads them. The model's text is
//! read back as OpenAI's `tool_calls` in `tool_calls.rs`.

use std::collections::{BTreeMap, HashSet};

use blaze_actors::inference::{tools, Grammar, GrammarError, ToolFunction};
use serde_json::{Map, Value};

use super::request::MessageToolCall;
use super::validate::invalid;
use crate::error::{ApiError, ErrorCode};

/// The most tools one request may define, as OpenAI.
pub const MOST_TOOLS: usize = 128;

/// Whether and how the model may call the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The tools are described, but the text is free and read as text.
    None,
    /// Text, or calls: a call is constrained from its first mark on.
    Auto,
    /// At least one call, and nothing else.
    Required,
    /// One call (or more with `parallel_tool_calls`) to this function.
    Named(String),
}

/// What a chat request asks of its tools.
#[derive(Debug, Clone)]
pub struct ToolAsk {
    /// The definitions as the client sent them, for the prompt.
    pub definitions: Vec<Value>,
    pub choice: ToolChoice,
    pub parallel: bool,
    /// Each function with its arguments' grammar, in definition order.
    functions: Vec<ToolFunction>,
}

impl ToolAsk {
    /// The grammar the calls are decoded under; none when the choice is
    /// `none`.
    pub fn grammar(&self) -> Result<Option<Grammar>, ApiError> {
        let functions: Vec<ToolFunction> = match &self.choice {
            ToolChoice::None => return Ok(None),
            ToolChoice::Named(name) => {
                self.functions.iter().filter(|function| &function.name == name).cloned().collect()
            }
            ToolChoice::Auto | ToolChoice::Required => self.functions.clone(),
        };
        let lazy = self.choice == ToolChoice::Auto;
        Grammar::tool_calls(&functions, self.parallel, lazy)
            .map(Some)
            .map_err(|error| invalid(ErrorCode::InvalidTools, "tools", error.to_string()))
    }

    /// Whether the model's text is read for calls.
    pub fn reads_calls(&self) -> bool {
        self.choice != ToolChoice::None
    }
}

/// The tools a chat body defines and how they may be called; `None` when
/// it defines none (`tool_choice` `none` or `auto` is then neutral).
pub fn requested(other: &BTreeMap<String, Value>) -> Result<Option<ToolAsk>, ApiError> {
    let field = |name: &str| other.get(name).filter(|value| !value.is_null());
    let definitions = match field("tools") {
        None => Vec::new(),
        Some(Value::Array(tools)) => tools.clone(),
        Some(_) => {
            return Err(invalid(ErrorCode::InvalidTools, "tools", "tools must be an array".to_owned()))
        }
    };
    if definitions.len() > MOST_TOOLS {
        let message = format!("tools has {} items; at most {MOST_TOOLS} are accepted", definitions.len());
        return Err(invalid(ErrorCode::InvalidTools, "tools", message));
    }
    let mut functions = Vec::with_capacity(definitions.len());
    let mut names = HashSet::new();
    for (index, definition) in definitions.iter().enumerate() {
        let function = function(definition, index)?;
        if !names.insert(function.name.clone()) {
            let param = format!("tools[{index}].function.name");
            let message = format!("the function name {} is defined twice", function.name);
            return Err(invalid(ErrorCode::InvalidTools, &param, message));
        }
        functions.push(function);
    }
    let choice = tool_choice(field("tool_choice"), &names)?;
    let parallel = match field("parallel_tool_calls") {
        None => true,
        Some(Value::Bool(parallel)) => *parallel,
        Some(_) => {
            let message = "parallel_tool_calls must be true or false".to_owned();
            return Err(invalid(ErrorCode::InvalidToolChoice, "parallel_tool_calls", message));
        }
    };
    if functions.is_empty() {
        return Ok(None);
    }
    let structured = ["response_format", "structured_outputs"].into_iter().find(|name| {
        field(name).is_some_and(|value| value.get("type").and_then(Value::as_str) != Some("text"))
    });
    if let Some(structured) = structured.filter(|_| choice != ToolChoice::None) {
        let message =
            format!("send either tools (with tool_choice other than none) or {structured}, not both");
        return Err(invalid(ErrorCode::InvalidToolChoice, "tool_choice", message));
    }
    Ok(Some(ToolAsk { definitions, choice, parallel, functions }))
}

/// `tools[index]`: `{"type": "function", "function": {name, description,
/// parameters, strict}}`, with its arguments' grammar.
fn function(definition: &Value, index: usize) -> Result<ToolFunction, ApiError> {
    let at = format!("tools[{index}]");
    let fields = object(definition, &at)?;
    only_fields(fields, &["type", "function"], &at)?;
    if fields.get("type").and_then(Value::as_str) != Some("function") {
        let message = format!("{at}.type must be \"function\"");
        return Err(invalid(ErrorCode::InvalidTools, &format!("{at}.type"), message));
    }
    let at = format!("{at}.function");
    let fields = object(fields.get("function").unwrap_or(&Value::Null), &at)?;
    only_fields(fields, &["name", "description", "parameters", "strict"], &at)?;
    let name = fields.get("name").and_then(Value::as_str).unwrap_or_default();
    if !valid_name(name) {
        let message = format!("{at}.name must be 1 to 64 letters, digits, _ or -");
        return Err(invalid(ErrorCode::InvalidTools, &format!("{at}.name"), message));
    }
    if fields.get("description").is_some_and(|description| !description.is_string() && !description.is_null())
    {
        let message = format!("{at}.description must be a string");
        return Err(invalid(ErrorCode::InvalidTools, &format!("{at}.description"), message));
    }
    let strict = match fields.get("strict") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(strict)) => *strict,
        Some(_) => {
            let message = format!("{at}.strict must be true or false");
            return Err(invalid(ErrorCode::InvalidTools, &format!("{at}.strict"), message));
        }
    };
    let param = format!("{at}.parameters");
    // No parameters: a function of none, whose arguments are `{}`.
    let none = serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false});
    let parameters = fields.get("parameters").filter(|value| !value.is_null()).unwrap_or(&none);
    let describes_object = parameters.as_object().is_some_and(|schema| {
        schema.get("type").is_none_or(|kind| kind == "object") && !schema.contains_key("$ref")
    });
    if !describes_object {
        let message = format!("{param} must be a JSON Schema of an object (\"type\": \"object\")");
        return Err(invalid(ErrorCode::InvalidTools, &param, message));
    }
    let arguments = Grammar::from_json_schema(parameters, strict).map_err(|error| {
        let code = match error {
            GrammarError::UnsupportedKeyword { .. } => ErrorCode::UnsupportedSchema,
            _ => ErrorCode::InvalidTools,
        };
        invalid(code, &param, error.to_string())
    })?;
    Ok(ToolFunction { name: name.to_owned(), arguments })
}

/// `tool_choice`: `none`, `auto`, `required`, or `{"type": "function",
/// "function": {"name": ...}}` naming one of `names`.
fn tool_choice(value: Option<&Value>, names: &HashSet<String>) -> Result<ToolChoice, ApiError> {
    const PARAM: &str = "tool_choice";
    let choice = match value {
        None if names.is_empty() => ToolChoice::None,
        None => ToolChoice::Auto,
        Some(Value::String(choice)) => match choice.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => {
                let message =
                    "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}";
                return Err(invalid(ErrorCode::InvalidToolChoice, PARAM, message.to_owned()));
            }
        },
        Some(named) => {
            let fields = object(named, PARAM)?;
            only_fields(fields, &["type", "function"], PARAM)?;
            let function = object(fields.get("function").unwrap_or(&Value::Null), "tool_choice.function")?;
            only_fields(function, &["name"], "tool_choice.function")?;
            let name = function.get("name").and_then(Value::as_str);
            match (fields.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => ToolChoice::Named(name.to_owned()),
                _ => {
                    let message = "tool_choice names a function as {\"type\": \"function\", \"function\": {\"name\": ...}}";
                    return Err(invalid(ErrorCode::InvalidToolChoice, PARAM, message.to_owned()));
                }
            }
        }
    };
    match &choice {
        ToolChoice::Named(name) if !names.contains(name) => {
            let message = format!("tool_choice names {name}, which is not among the tools");
            Err(invalid(ErrorCode::InvalidToolChoice, "tool_choice.function.name", message))
        }
        ToolChoice::Required | ToolChoice::Named(_) if names.is_empty() => {
            let message = "tool_choice required or a function needs tools".to_owned();
            Err(invalid(ErrorCode::InvalidToolChoice, PARAM, message))
        }
        _ => Ok(choice),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
}

fn object<'a>(value: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ApiError> {
    let code =
        if param.starts_with("tool_choice") { ErrorCode::InvalidToolChoice } else { ErrorCode::InvalidTools };
    value.as_object().ok_or_else(|| invalid(code, param, format!("{param} must be an object")))
}

fn only_fields(fields: &Map<String, Value>, known: &[&str], param: &str) -> Result<(), ApiError> {
    match fields.keys().find(|name| !known.contains(&name.as_str())) {
        Some(name) => Err(invalid(
            ErrorCode::UnknownParameter,
            &format!("{param}.{name}"),
            format!("Unrecognized request argument supplied: {param}.{name}"),
        )),
        None => Ok(()),
    }
}

/// An assistant message's calls as the model wrote them, after its text.
pub fn assistant_text(content: String, calls: &[MessageToolCall], index: usize) -> Result<String, ApiError> {
    let mut text = content;
    for (call_index, call) in calls.iter().enumerate() {
        let param = format!("messages[{index}].tool_calls[{call_index}]");
        if call.kind.as_deref().is_some_and(|kind| kind != "function") || !valid_name(&call.function.name) {
            let message = format!("{param} must be a function call with a valid name");
            return Err(invalid(ErrorCode::InvalidMessages, &param, message));
        }
        if serde_json::from_str::<Value>(&call.function.arguments).is_err() {
            let message = format!("{param}.function.arguments must be JSON text");
            return Err(invalid(ErrorCode::InvalidMessages, &format!("{param}.function.arguments"), message));
        }
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&tools::call_text(&call.function.name, call.function.arguments.trim()));
    }
    Ok(text)
}

/// A tool's result as the text of the user turn that carries it back.
pub fn result_text(content: &str) -> String {
    tools::response_text(content)
}
