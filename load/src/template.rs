//! Request templates (`{{name}}` slots in paths, headers and bodies) and
//! the variables that fill them: sentences from the bundled corpus (with a
//! pool and a repeat ratio, so a scenario sets its cache hit ratio), numbers,
//! choices, fixed values, environment variables, and values captured from
//! earlier answers of the same virtual user.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

/// The bundled corpus: one plain sentence a line.
pub const CORPUS: &str = include_str!("../corpus/sentences.txt");

pub fn corpus() -> Vec<&'static str> {
    CORPUS.lines().map(str::trim).filter(|line| !line.is_empty()).collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableSpec {
    /// `sentences`: a sentence of the bundled corpus.
    #[serde(default)]
    corpus: Option<String>,
    /// Draw from the first N sentences only.
    #[serde(default)]
    pool: Option<usize>,
    /// The share of draws from the pool; the rest are sentences never sent
    /// before (cache misses). Default 1.
    #[serde(default)]
    repeat: Option<f64>,
    /// A whole number in [min, max].
    #[serde(default)]
    number: Option<[i64; 2]>,
    #[serde(default)]
    choice: Option<Vec<String>>,
    #[serde(default)]
    value: Option<String>,
    /// An environment variable's value, else `default`.
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    default: Option<String>,
}

#[derive(Debug)]
enum Source {
    Corpus {
        sentences: Vec<&'static str>,
        pool: usize,
        repeat: f64,
    },
    Number {
        min: i64,
        max: i64,
    },
    Choice(Vec<String>),
    Fixed(String),
    /// An environment variable that is not set: the scenario checks, and
    /// a run refuses to start.
    Unset(String),
}

#[derive(Debug)]
pub struct Variable {
    pub name: String,
    source: Source,
}

/// Why a scenario's variable is refused, or cannot be filled.
#[derive(Debug, thiserror::Error)]
pub enum VariableError {
    #[error("variables.{name}: names are letters, digits and _")]
    Name { name: String },
    #[error("variables.{name}: give exactly one of corpus, number, choice, value, env")]
    Kinds { name: String },
    #[error("variables.{name}.corpus: only `sentences` is bundled")]
    Corpus { name: String, corpus: String },
    #[error("variables.{name}.pool: {pool} is not within 1..={sentences}")]
    Pool { name: String, pool: usize, sentences: usize },
    #[error("variables.{name}.repeat: {repeat} is not within 0..=1")]
    Repeat { name: String, repeat: f64 },
    #[error("variables.{name}.number: {min} > {max}")]
    NumberRange { name: String, min: i64, max: i64 },
    #[error("variables.{name}.choice: empty")]
    EmptyChoice { name: String },
    /// Found when a run starts, not when the scenario is checked: a
    /// scenario is valid on a machine that lacks the environment variable.
    #[error(
        "variables.{name}: ${environment_variable} is not set and there is no default (give --var {name}=...)"
    )]
    Unset { name: String, environment_variable: String },
}

/// Why a template's text is refused.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("`{text}`: a {{{{ without }}}}")]
    Unclosed { text: String },
    #[error("`{{{{{name}}}}}` is not a variable of the scenario nor captured before it")]
    UnknownVariable { name: String },
}

/// Numbers the sentences never sent before, across the whole run.
static FRESH: AtomicU64 = AtomicU64::new(0);

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

impl Variable {
    pub fn fixed(name: &str, value: &str) -> Self {
        Self { name: name.to_owned(), source: Source::Fixed(value.to_owned()) }
    }

    pub fn compile(name: &str, spec: VariableSpec) -> Result<Self, VariableError> {
        if !valid_name(name) {
            return Err(VariableError::Name { name: name.to_owned() });
        }
        let kinds = [
            spec.corpus.is_some(),
            spec.number.is_some(),
            spec.choice.is_some(),
            spec.value.is_some(),
            spec.env.is_some(),
        ];
        if kinds.iter().filter(|kind| **kind).count() != 1 {
            return Err(VariableError::Kinds { name: name.to_owned() });
        }
        let source = if let Some(corpus) = spec.corpus {
            if corpus != "sentences" {
                return Err(VariableError::Corpus { name: name.to_owned(), corpus });
            }
            let sentences = self::corpus();
            let pool = spec.pool.unwrap_or(sentences.len());
            if pool == 0 || pool > sentences.len() {
                return Err(VariableError::Pool { name: name.to_owned(), pool, sentences: sentences.len() });
            }
            let repeat = spec.repeat.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&repeat) {
                return Err(VariableError::Repeat { name: name.to_owned(), repeat });
            }
            Source::Corpus { sentences, pool, repeat }
        } else if let Some([min, max]) = spec.number {
            if min > max {
                return Err(VariableError::NumberRange { name: name.to_owned(), min, max });
            }
            Source::Number { min, max }
        } else if let Some(choice) = spec.choice {
            if choice.is_empty() {
                return Err(VariableError::EmptyChoice { name: name.to_owned() });
            }
            Source::Choice(choice)
        } else if let Some(value) = spec.value {
            Source::Fixed(value)
        } else {
            let variable = spec.env.unwrap_or_default();
            match (std::env::var(&variable), spec.default) {
                (Ok(value), _) => Source::Fixed(value),
                (Err(_), Some(value)) => Source::Fixed(value),
                (Err(_), None) => Source::Unset(variable),
            }
        };
        Ok(Self { name: name.to_owned(), source })
    }

    /// Why a run cannot fill this variable, if it cannot.
    pub fn unset(&self) -> Option<VariableError> {
        match &self.source {
            Source::Unset(variable) => {
                Some(VariableError::Unset { name: self.name.clone(), environment_variable: variable.clone() })
            }
            _ => None,
        }
    }

    fn draw(&self, random: &mut fastrand::Rng, out: &mut String) {
        match &self.source {
            Source::Corpus { sentences, pool, repeat } => {
                if *repeat >= 1.0 || random.f64() < *repeat {
                    out.push_str(sentences[random.usize(..*pool)]);
                } else {
                    let fresh = FRESH.fetch_add(1, Ordering::Relaxed);
                    out.push_str(sentences[random.usize(..sentences.len())]);
                    let _ = write!(out, " (variant {fresh} of run {:x})", crate::run_id());
                }
            }
            Source::Number { min, max } => {
                let _ = write!(out, "{}", random.i64(*min..=*max));
            }
            Source::Choice(choices) => out.push_str(&choices[random.usize(..choices.len())]),
            Source::Fixed(value) => out.push_str(value),
            Source::Unset(_) => {}
        }
    }
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Slot(String),
}

/// A text with `{{name}}` slots. Where it came from a JSON body, slot
/// values are JSON-escaped (they sit inside JSON strings).
#[derive(Debug, Clone)]
pub struct Template {
    segments: Vec<Segment>,
    json_strings: bool,
}

/// What fills the slots of one request.
pub struct Context<'a> {
    pub variables: &'a [Variable],
    pub captured: &'a [(String, String)],
    pub random: &'a mut fastrand::Rng,
}

impl Template {
    pub fn parse(text: &str, known: &[String], json_strings: bool) -> Result<Self, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let end =
                rest[start..].find("}}").ok_or_else(|| TemplateError::Unclosed { text: text.to_owned() })?
                    + start;
            let name = rest[start + 2..end].trim();
            if !known.iter().any(|known| known == name) {
                return Err(TemplateError::UnknownVariable { name: name.to_owned() });
            }
            if start > 0 {
                segments.push(Segment::Literal(rest[..start].to_owned()));
            }
            segments.push(Segment::Slot(name.to_owned()));
            rest = &rest[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_owned()));
        }
        Ok(Self { segments, json_strings })
    }

    /// The text when it has no slots.
    pub fn as_static(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [] => Some(""),
            [Segment::Literal(text)] => Some(text),
            _ => None,
        }
    }

    pub fn literal_len(&self) -> usize {
        self.segments
            .iter()
            .map(|segment| if let Segment::Literal(text) = segment { text.len() } else { 0 })
            .sum()
    }

    pub fn render(&self, context: &mut Context<'_>, out: &mut String) {
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Slot(name) => {
                    let mut value = String::new();
                    if let Some((_, captured)) =
                        context.captured.iter().find(|(captured, _)| captured == name)
                    {
                        value.push_str(captured);
                    } else if let Some(variable) =
                        context.variables.iter().find(|variable| &variable.name == name)
                    {
                        variable.draw(context.random, &mut value);
                    }
                    if self.json_strings {
                        let quoted = serde_json::Value::String(value).to_string();
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    } else {
                        out.push_str(&value);
                    }
                }
            }
        }
    }

    pub fn render_string(&self, context: &mut Context<'_>) -> String {
        let mut out = String::new();
        self.render(context, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_in_json_bodies_are_escaped_and_unknown_ones_refused() {
        let known = vec!["prompt".to_owned()];
        let template = Template::parse(r#"{"content":"{{prompt}}"}"#, &known, true).unwrap();
        let variables = vec![Variable::fixed("prompt", "say \"hi\"\n")];
        let mut random = fastrand::Rng::with_seed(1);
        let mut context = Context { variables: &variables, captured: &[], random: &mut random };
        let text = template.render_string(&mut context);
        assert_eq!(text, r#"{"content":"say \"hi\"\n"}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
        let unknown = Template::parse("{{nope}}", &known, false).unwrap_err().to_string();
        assert_eq!(unknown, "`{{nope}}` is not a variable of the scenario nor captured before it");
        let unclosed = Template::parse("{{prompt", &known, false).unwrap_err().to_string();
        assert_eq!(unclosed, "`{{prompt`: a {{ without }}");
    }

    #[test]
    fn the_repeat_ratio_sets_the_share_of_pooled_sentences() {
        let spec: VariableSpec =
            serde_json::from_value(serde_json::json!({"corpus": "sentences", "pool": 4, "repeat": 0.75}))
                .unwrap();
        let variable = Variable::compile("prompt", spec).unwrap();
        let pool: Vec<&str> = corpus().into_iter().take(4).collect();
        let mut random = fastrand::Rng::with_seed(7);
        let draws = 4000;
        let pooled = (0..draws)
            .filter(|_| {
                let mut out = String::new();
                variable.draw(&mut random, &mut out);
                pool.contains(&out.as_str())
            })
            .count();
        let share = pooled as f64 / draws as f64;
        assert!((0.72..0.78).contains(&share), "share of pooled sentences {share}");
    }
}
