use serde_json::json;

use super::*;

#[test]
fn regular_expressions_become_whole_text_grammars() {
    let grammar = Grammar::from_regex(r"^(yes|no)-[0-9]{2,3}$").unwrap();
    assert_eq!(grammar.gbnf(), "root ::= (((\"yes\" | \"no\")) \"-\" ([0-9]){2,3})\n");
    let grammar = Grammar::from_regex(r"a+\.b*c?").unwrap();
    assert_eq!(grammar.gbnf(), "root ::= ((\"a\")+ \".\" (\"b\")* (\"c\")?)\n");
    // Classes spell every character that could read as syntax by its code.
    let grammar = Grammar::from_regex(r#"[\]\\"^-]"#).unwrap();
    assert_eq!(grammar.gbnf(), "root ::= [\\x22\\x2D\\x5C-\\x5E]\n");
    let grammar = Grammar::from_regex("[é😀]").unwrap();
    assert_eq!(grammar.gbnf(), "root ::= [\\xE9\\U0001F600]\n");
}

#[test]
fn regular_expressions_without_a_grammar_are_refused() {
    for pattern in [r"a\bb", r"a^b", r"(?m)a$b"] {
        assert!(matches!(Grammar::from_regex(pattern), Err(GrammarError::UnsupportedRegex(_))), "{pattern}");
    }
    assert!(matches!(Grammar::from_regex("a{0,5000}"), Err(GrammarError::UnsupportedRegex(_))));
    assert!(matches!(Grammar::from_regex("(a"), Err(GrammarError::InvalidRegex(_))));
    let deep = format!("{}a{}", "(".repeat(40), ")".repeat(40));
    assert!(matches!(Grammar::from_regex(&deep), Err(GrammarError::InvalidRegex(_))));
    // Nested counts multiply.
    assert_eq!(Grammar::from_regex("((a{1000}){1000}){1000}"), Err(GrammarError::TooLarge));
}

#[test]
fn choices_are_literal_alternatives() {
    let grammar = Grammar::from_choices(&["red".into(), "say \"hi\"\n".into()]).unwrap();
    assert_eq!(grammar.gbnf(), "root ::= \"red\" | \"say \\\"hi\\\"\\n\"\n");
    assert_eq!(Grammar::from_choices(&[]), Err(GrammarError::InvalidChoices));
    assert_eq!(Grammar::from_choices(&["".into()]), Err(GrammarError::InvalidChoices));
}

#[test]
fn gbnf_is_bounded_in_depth_and_expansion() {
    assert!(Grammar::from_gbnf("root ::= \"a\" [b-c]* (x | y){2,4}\nx ::= \"x\"\ny ::= \"y\"").is_ok());
    let deep = format!("root ::= {}\"a\"{}", "(".repeat(40), ")".repeat(40));
    assert_eq!(Grammar::from_gbnf(&deep), Err(GrammarError::TooDeep("the grammar")));
    assert_eq!(Grammar::from_gbnf("root ::= ((\"a\"{1000}){1000})"), Err(GrammarError::TooLarge));
    // Parentheses and braces inside literals, classes and comments are text.
    assert!(Grammar::from_gbnf("root ::= \"(((({9999}\" [(] # ((((\n").is_ok());
    assert!(matches!(Grammar::from_gbnf("item ::= \"a\""), Err(GrammarError::InvalidGrammar(_))));
    assert!(matches!(Grammar::from_gbnf("root ::= \"a\")"), Err(GrammarError::InvalidGrammar(_))));
}

#[test]
fn schemas_convert_and_strict_ones_name_what_is_not_enforced() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
            "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "when": {"type": "string", "format": "date"},
        },
        "required": ["name", "age"],
        "additionalProperties": false,
        "title": "Person",
    });
    let grammar = Grammar::from_json_schema(&schema, true).unwrap();
    assert!(grammar.gbnf().contains("root ::="), "{}", grammar.gbnf());
    let refused = [
        (json!({"type": "number", "minimum": 0}), "minimum"),
        (json!({"type": "integer", "multipleOf": 5}), "multipleOf"),
        (json!({"type": "string", "format": "email"}), "format"),
        (json!({"type": "string", "pattern": "[a-z]+"}), "pattern"),
        (json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true}), "uniqueItems"),
        (json!({"properties": {"x": {"not": {"type": "null"}}}}), "not"),
    ];
    for (schema, keyword) in refused {
        match Grammar::from_json_schema(&schema, true) {
            Err(GrammarError::UnsupportedKeyword { keyword: named, .. }) => assert_eq!(named, keyword),
            other => panic!("{schema}: {other:?}"),
        }
        assert!(Grammar::from_json_schema(&schema, false).is_ok(), "guidance without strict: {schema}");
    }
    match Grammar::from_json_schema(&json!({"properties": {"x": {"not": {}}}}), true) {
        Err(GrammarError::UnsupportedKeyword { at, .. }) => assert_eq!(at, "#/properties/x"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_or_oversized_schemas_are_invalid() {
    for schema in [
        json!({"$ref": "#/$defs/missing"}),
        json!({"type": "string", "maxLength": 1_000_000}),
        json!({"type": "martian"}),
        json!(5),
    ] {
        assert!(
            matches!(Grammar::from_json_schema(&schema, true), Err(GrammarError::InvalidSchema { .. })),
            "{schema}"
        );
    }
    let mut deep = json!({"type": "string"});
    for _ in 0..40 {
        deep = json!({"type": "array", "items": deep});
    }
    assert_eq!(Grammar::from_json_schema(&deep, false), Err(GrammarError::TooDeep("the JSON Schema")));
}

#[test]
fn the_json_object_grammar_passes_its_own_bounds() {
    let object = Grammar::json_object();
    assert_eq!(Grammar::from_gbnf(object.gbnf()), Ok(object));
}
