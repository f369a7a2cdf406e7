//! The GGUF's chat template, rendered as Hugging Face renders it.

use serde_json::Value;

use crate::inference::chat::tools;
use crate::inference::engine::EngineError;

/// The GGUF's chat template, a Jinja template run the way Hugging Face's
/// `apply_chat_template` runs it (blocks trimmed, Python string methods),
/// so the prompt is exactly the one the model was trained on: llama.cpp's
/// built-in approximations drop parts such as a default system message.
pub(super) struct ChatTemplate {
    environment: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// It renders a `tools` list itself, and in the format of
    /// [`crate::inference::chat::tools`].
    renders_tools: bool,
}

impl ChatTemplate {
    pub(super) fn new(source: String, bos_token: String, eos_token: String) -> Result<Self, EngineError> {
        let mut environment = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|error| EngineError::Load(format!("template syntax: {error}")))?;
        environment.set_syntax(syntax);
        environment.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        let renders_tools = source.contains("tools") && source.contains(tools::CALL_OPEN);
        environment.add_template_owned("chat", source).map_err(|error| {
            EngineError::Load(format!("the GGUF's chat template does not parse: {error}"))
        })?;
        Ok(Self { environment, bos_token, eos_token, renders_tools })
    }

    pub(super) fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    /// The prompt of `messages`, with the assistant's turn opened; `tools`
    /// (OpenAI's definitions) are given to a template that renders them.
    pub(super) fn render(
        &self,
        messages: &[(String, String)],
        tools: &[Value],
    ) -> Result<String, EngineError> {
        let messages: Vec<_> = messages
            .iter()
            .map(|(role, content)| minijinja::context! { role => role, content => content })
            .collect();
        let template = self
            .environment
            .get_template("chat")
            .map_err(|error| EngineError::Input(format!("cannot apply the chat template: {error}")))?;
        template
            .render(minijinja::context! {
                messages => messages,
                tools => (self.renders_tools && !tools.is_empty()).then(|| minijinja::Value::from(minijinja::value::Serde(tools))),
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|error| EngineError::Input(format!("cannot apply the chat template: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(source.to_owned(), "<s>".to_owned(), "</s>".to_owned()).unwrap()
    }

    #[test]
    fn a_template_that_writes_calls_as_ours_is_given_the_tools() {
        // As Qwen2.5's does it, cut down.
        let native = template(
            "{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n{{ tool.function.name }}{% endfor %}\n</tools>\nCall as <tool_call></tool_call><|im_end|>\n{% endif %}\
             {% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n",
        );
        assert!(native.renders_tools());
        let tools = [serde_json::json!({"type": "function", "function": {"name": "get_weather"}})];
        let turns = [("user".to_owned(), "Hi".to_owned())];
        let rendered = native.render(&turns, &tools).unwrap();
        // (Blocks are trimmed, as Hugging Face renders them.)
        assert!(
            rendered.starts_with("<|im_start|>system\n# Tools\n<tools>get_weather</tools>"),
            "{rendered}"
        );
        assert!(!native.render(&turns, &[]).unwrap().contains("<tools>"));
        // A template that does not mention calls renders no tools itself.
        let plain = template("{% for message in messages %}{{ message.content }}{% endfor %}");
        assert!(!plain.renders_tools());
        assert_eq!(plain.render(&turns, &tools).unwrap(), "Hi");
    }
}
