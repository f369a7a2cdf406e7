//! The GGUF's chat template, rendered as Hugging Face renders it.

use crate::inference::engine::EngineError;

/// The GGUF's chat template, a Jinja template run the way Hugging Face's
/// `apply_chat_template` runs it (blocks trimmed, Python string methods),
/// so the prompt is exactly the one the model was trained on: llama.cpp's
/// built-in approximations drop parts such as a default system message.
pub(super) struct ChatTemplate {
    environment: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
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
        environment.add_template_owned("chat", source).map_err(|error| {
            EngineError::Load(format!("the GGUF's chat template does not parse: {error}"))
        })?;
        Ok(Self { environment, bos_token, eos_token })
    }

    pub(super) fn render(&self, messages: &[(String, String)]) -> Result<String, EngineError> {
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
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|error| EngineError::Input(format!("cannot apply the chat template: {error}")))
    }
}
