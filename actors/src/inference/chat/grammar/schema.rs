//! JSON Schemas as grammars. llama.cpp's converter turns a schema into
//! GBNF but passes over what it cannot express (number bounds, `not`,
//! `uniqueItems`, most string formats, patterns beyond its regex subset)
//! without a word, so a strict schema is first read here, keyword by
//! keyword, and one the grammar would not enforce is refused by name.

use serde_json::{Map, Value};

use super::{GrammarError, MOST_NESTING, MOST_REPETITION};

/// JSON Schema's validation keywords that the converter passes over.
const NOT_ENFORCED: &[&str] = &[
    "multipleOf",
    "not",
    "if",
    "then",
    "else",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "minProperties",
    "maxProperties",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
    "$dynamicRef",
    "$recursiveRef",
];

/// The string formats the converter has grammars for.
const FORMATS: &[&str] = &["date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"];

/// Checks `schema` before it is converted: nesting, counts, and (with
/// `strict`) every keyword the grammar would not enforce.
pub fn audit(schema: &Value, strict: bool) -> Result<(), GrammarError> {
    audit_node(schema, strict, "#", 0)
}

fn audit_node(schema: &Value, strict: bool, at: &str, depth: usize) -> Result<(), GrammarError> {
    if depth > MOST_NESTING {
        return Err(GrammarError::TooDeep("the JSON Schema"));
    }
    let node = match schema {
        Value::Object(node) => node,
        // `true` and `false` are schemas too (anything, nothing).
        Value::Bool(_) => return Ok(()),
        _ => return Err(invalid(at, "a schema must be an object or a boolean")),
    };
    for (keyword, value) in node {
        if strict && NOT_ENFORCED.contains(&keyword.as_str()) {
            return Err(unsupported(keyword, at));
        }
        if matches!(keyword.as_str(), "minItems" | "maxItems" | "minLength" | "maxLength") {
            match value.as_u64() {
                Some(count) if count <= MOST_REPETITION => {}
                _ => {
                    return Err(invalid(
                        at,
                        &format!("{keyword} must be an integer from 0 to {MOST_REPETITION}"),
                    ))
                }
            }
        }
    }
    if strict {
        audit_strict_keywords(node, at)?;
    }
    for (child_at, child) in children(node, at) {
        audit_node(child, strict, &child_at, depth + 1)?;
    }
    Ok(())
}

/// The keywords the converter enforces on some types or values only.
fn audit_strict_keywords(node: &Map<String, Value>, at: &str) -> Result<(), GrammarError> {
    let types: Vec<&str> = match node.get("type") {
        Some(Value::String(kind)) => vec![kind.as_str()],
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    // Bounds hold on integers only: the grammar of a bounded decimal
    // number is not built.
    for bound in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
        if node.contains_key(bound)
            && (types.is_empty() || types.iter().any(|kind| *kind != "integer" && *kind != "null"))
        {
            return Err(unsupported(bound, at));
        }
    }
    if let Some(format) = node.get("format") {
        if !format.as_str().is_some_and(|format| FORMATS.contains(&format)) {
            return Err(unsupported("format", at));
        }
    }
    if let Some(pattern) = node.get("pattern") {
        let pattern = pattern.as_str().ok_or_else(|| invalid(at, "pattern must be a string"))?;
        check_pattern(pattern, at)?;
    }
    Ok(())
}

/// A pattern outside llama.cpp's regex subset (it must be anchored with `^`
/// and `$`; no lookaround, backreferences or word boundaries) is converted
/// to any string: its schema's grammar then names the converter's `string`
/// primitive rule, which a supported pattern's grammar does not use.
fn check_pattern(pattern: &str, at: &str) -> Result<(), GrammarError> {
    let grammar = convert(&serde_json::json!({"type": "string", "pattern": pattern}))
        .map_err(|_| invalid(at, &format!("the pattern {pattern:?} is not a regular expression")))?;
    if grammar.lines().any(|line| line.starts_with("string ::=")) {
        return Err(unsupported("pattern", at));
    }
    Ok(())
}

/// The subschemas of a schema, with where each one is.
fn children<'a>(node: &'a Map<String, Value>, at: &str) -> Vec<(String, &'a Value)> {
    let mut found = Vec::new();
    for (keyword, value) in node {
        match (keyword.as_str(), value) {
            (
                "properties" | "$defs" | "definitions" | "patternProperties" | "dependentSchemas",
                Value::Object(map),
            ) => {
                for (name, child) in map {
                    found.push((format!("{at}/{keyword}/{name}"), child));
                }
            }
            ("items" | "additionalProperties" | "not" | "if" | "then" | "else" | "contains", child) => {
                if let Value::Array(items) = child {
                    for (index, item) in items.iter().enumerate() {
                        found.push((format!("{at}/{keyword}/{index}"), item));
                    }
                } else {
                    found.push((format!("{at}/{keyword}"), child));
                }
            }
            ("prefixItems" | "anyOf" | "oneOf" | "allOf", Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    found.push((format!("{at}/{keyword}/{index}"), item));
                }
            }
            _ => {}
        }
    }
    found
}

/// llama.cpp's GBNF for `schema`.
pub fn convert(schema: &Value) -> Result<String, GrammarError> {
    llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|_| {
        // llama.cpp's message stays inside it; the audit has named what it
        // could, so this is a schema it finds malformed.
        invalid(
            "#",
            "llama.cpp's converter refused it (a `$ref` outside this document or to nothing, an empty `enum` or `anyOf`, a type it does not know, or a count that is not a non-negative integer)",
        )
    })
}

fn unsupported(keyword: &str, at: &str) -> GrammarError {
    GrammarError::UnsupportedKeyword { keyword: keyword.to_owned(), at: at.to_owned() }
}

fn invalid(at: &str, reason: &str) -> GrammarError {
    GrammarError::InvalidSchema { at: at.to_owned(), reason: reason.to_owned() }
}
