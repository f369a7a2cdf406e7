//! Tool calls as the model writes and reads them: each call is
//! `<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>`, the
//! format of the Hermes and Qwen templates (what most small open models
//! were trained on). A template that renders tools itself in this format
//! is given them; any other model is told about them in a system message
//! written the same way, so one grammar (`Grammar::tool_calls`) and one
//! parser serve every model. Earlier calls and their results are written
//! back into the conversation in the same format.

use serde_json::Value;

/// What opens and closes one call in the model's text.
pub const CALL_OPEN: &str = "<tool_call>";
pub const CALL_CLOSE: &str = "</tool_call>";

/// The text between a call's opening and its name, and between its name
/// and its arguments, exactly as the grammar lays them out.
pub const BEFORE_NAME: &str = "\n{\"name\": \"";
pub const BEFORE_ARGUMENTS: &str = "\", \"arguments\": ";
/// What follows a call's arguments: the call object's brace, then its close.
pub const AFTER_ARGUMENTS: &str = "}\n</tool_call>";

/// One call as the model writes it; `arguments` is JSON text (an earlier
/// call's arguments, written back into a conversation).
pub fn call_text(name: &str, arguments: &str) -> String {
    let name = Value::String(name.to_owned()).to_string();
    let name = name.trim_matches('"');
    format!("{CALL_OPEN}{BEFORE_NAME}{name}{BEFORE_ARGUMENTS}{arguments}{AFTER_ARGUMENTS}")
}

/// A tool's result, as the user turn that carries it back to the model.
pub fn response_text(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

/// The system text that tells a model whose template does not render
/// tools what it may call and how: each tool's definition as the client
/// sent it (`{"type": "function", "function": {...}}`), one per line.
pub fn system_text(tools: &[Value]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        text.push('\n');
        text.push_str(&tool.to_string());
    }
    text.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments \
         within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \
         \"arguments\": <args-json-object>}\n</tool_call>",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_written_as_the_grammar_lays_it_out() {
        let text = call_text("get_weather", r#"{"city": "Paris"}"#);
        assert_eq!(
            text,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
        );
        let inner = text.strip_prefix(CALL_OPEN).unwrap().strip_suffix(CALL_CLOSE).unwrap();
        let call: Value = serde_json::from_str(inner).unwrap();
        assert_eq!(call["arguments"]["city"], "Paris");
        // A name is escaped as a JSON string would be.
        assert!(call_text("a\"b", "{}").contains(r#""name": "a\"b""#));
    }

    #[test]
    fn the_system_text_lists_each_tool_on_its_line() {
        let tools = [serde_json::json!({"type": "function", "function": {"name": "f"}})];
        let text = system_text(&tools);
        let listed = text.split("<tools>\n").nth(1).unwrap().split("\n</tools>").next().unwrap();
        assert_eq!(serde_json::from_str::<Value>(listed).unwrap(), tools[0], "{text}");
        assert!(text.ends_with("</tool_call>"));
    }
}
