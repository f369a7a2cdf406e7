//! The guard's configuration (categories, their action, their patterns)
//! and its compiled form: every pattern of every category in one
//! regex-automata multi-pattern matcher (finite automata only: linear time
//! in the text, no backtracking), built under size limits.

use std::collections::BTreeMap;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_syntax::hir::{Capture, Class, Hir, HirKind, Look, Repetition};
use serde::{Deserialize, Serialize};

/// What happens to a text a category's pattern matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The request is refused (400 content_blocked).
    Block,
    /// The match is replaced with `[REDACTED:<category>]` before the model
    /// and the logs see it.
    Redact,
    /// Allowed; counted and logged. A category that names no action.
    #[default]
    Flag,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Redact => "redact",
            Action::Flag => "flag",
        }
    }
}

/// A check a match must also pass, for what a pattern alone cannot say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    #[default]
    None,
    /// Card numbers: the Luhn checksum.
    Luhn,
    /// International bank account numbers: ISO 13616's mod-97 checksum.
    Iban,
    /// US social security numbers: no area 000, 666 or 9xx, no group 00,
    /// no serial 0000.
    UsSsn,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternSpec {
    pub name: String,
    /// Matched case-insensitively against the normalized text.
    pub regex: String,
    #[serde(default)]
    pub check: Check,
}

/// Which texts a category screens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppliesTo {
    #[default]
    Both,
    /// What clients send.
    Input,
    /// What models answer (when guard.scan_output is on).
    Output,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategorySpec {
    /// Defaults make an overlay that changes one key (a category's action)
    /// keep the rest of the category.
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub patterns: Vec<PatternSpec>,
    #[serde(default)]
    pub applies_to: AppliesTo,
}

/// The pattern categories, by name.
pub type Categories = BTreeMap<String, CategorySpec>;

/// The automaton's size limits: a pattern set larger than this is refused
/// with the name of the pattern that crossed it.
const NFA_SIZE_LIMIT: usize = 16 << 20;
const DFA_CACHE_BYTES: usize = 8 << 20;

/// Candidates for a second look: text that may hide a pattern from the
/// first one. Last in the set, so at the same start a real pattern wins.
const BASE64_CANDIDATE: &str = r"[a-z0-9+/]{24,}={0,2}";
/// Letters one by one ("i g n o r e", "p.r.e.v.i.o.u.s"), and the rest of
/// the line: the words after the spaced ones are read with them.
const SPACED_CANDIDATE: &str = r"(?:[a-z][ \t._*-]{1,3}){3,}[a-z](?-u:\b)[^\n]{0,120}";

/// What a pattern id of the automaton stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    Pattern { category: usize, check: Check },
    Base64,
    Spaced,
}

pub struct PatternSet {
    /// The patterns, then the decoder candidates.
    pub first_look: Regex,
    /// The patterns only: for decoded text (one level deep).
    pub second_look: Regex,
    /// The patterns for letter-spaced text once squeezed ("ignoreall
    /// previousinstructions"): word boundaries dropped, separators
    /// optional.
    pub squeezed: Regex,
    pub meanings: Vec<Meaning>,
    /// Pattern names, by pattern id.
    pub names: Vec<String>,
    /// Category names and actions, by category index.
    pub categories: Vec<(String, Action)>,
    /// What each category screens, by category index.
    pub applies_to: Vec<AppliesTo>,
    /// Whether any pattern exists at all.
    pub empty: bool,
}

impl std::fmt::Debug for PatternSet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PatternSet")
            .field("patterns", &self.names.len())
            .field("categories", &self.categories)
            .finish_non_exhaustive()
    }
}

/// A build error with what the parser said, not only that it failed.
/// Why the patterns cannot compile: each names the category or pattern
/// at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("category {0:?}: names are letters, digits and _")]
    CategoryName(String),
    /// The regex engine refuses the pattern (`pattern` is
    /// `category.name`; `squeezed`: its separator-free form).
    #[error("{pattern}: {reason}")]
    Refused { pattern: String, reason: String },
    #[error("{0}: matches the empty text")]
    MatchesEmpty(String),
    /// Each compiles alone, but not all of them in one automaton
    /// (`squeezed`: in their separator-free forms).
    #[error("the patterns together ({patterns}){}: {reason}", if *.squeezed { ", squeezed" } else { "" })]
    Together { patterns: String, squeezed: bool, reason: String },
}

fn describe(name: &str, error: &meta::BuildError) -> PatternError {
    let reason = match error.syntax_error() {
        Some(syntax) => syntax.to_string(),
        None => error.to_string(),
    };
    PatternError::Refused { pattern: name.to_owned(), reason }
}

fn syntax_config() -> syntax::Config {
    syntax::Config::new().case_insensitive(true).nest_limit(64)
}

fn builder() -> meta::Builder {
    let mut builder = meta::Builder::new();
    builder.syntax(syntax_config()).configure(
        meta::Config::new()
            .match_kind(regex_automata::MatchKind::LeftmostFirst)
            .nfa_size_limit(Some(NFA_SIZE_LIMIT))
            .onepass_size_limit(Some(NFA_SIZE_LIMIT))
            .dfa_size_limit(Some(NFA_SIZE_LIMIT))
            .hybrid_cache_capacity(DFA_CACHE_BYTES),
    );
    builder
}

impl PatternSet {
    /// Compiles every category; an error names the category and pattern
    /// at fault.
    pub fn compile(categories: &Categories) -> Result<Self, PatternError> {
        let mut sources = Vec::new();
        let mut meanings = Vec::new();
        let mut names = Vec::new();
        let mut category_list = Vec::new();
        let mut applies_to = Vec::new();
        for (index, (category, spec)) in categories.iter().enumerate() {
            if category.is_empty() || !category.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(PatternError::CategoryName(category.clone()));
            }
            category_list.push((category.clone(), spec.action));
            applies_to.push(spec.applies_to);
            for pattern in &spec.patterns {
                let name = format!("{category}.{}", pattern.name);
                let alone = builder().build(&pattern.regex).map_err(|error| describe(&name, &error))?;
                if alone.is_match("") {
                    return Err(PatternError::MatchesEmpty(name));
                }
                sources.push(pattern.regex.clone());
                meanings.push(Meaning::Pattern { category: index, check: pattern.check });
                names.push(name);
            }
        }
        let empty = sources.is_empty();
        let second_look = builder().build_many(&sources).map_err(|error| match error.pattern() {
            Some(id) => describe(&names[id.as_usize()], &error),
            None => PatternError::Together {
                patterns: names.join(", "),
                squeezed: false,
                reason: error.to_string(),
            },
        })?;
        let squeezed_trees = sources
            .iter()
            .zip(&names)
            .map(|(source, name)| {
                syntax::parse_with(source, &syntax_config()).map(|tree| squeeze(&tree)).map_err(|error| {
                    PatternError::Refused { pattern: name.clone(), reason: error.to_string() }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let squeezed = builder().build_many_from_hir(&squeezed_trees).map_err(|error| {
            // Name the pattern whose squeezed form alone is refused, if one is.
            let alone = squeezed_trees.iter().zip(&names).find_map(|(tree, name)| {
                builder().build_from_hir(tree).err().map(|error| PatternError::Refused {
                    pattern: format!("{name}, squeezed"),
                    reason: error.to_string(),
                })
            });
            alone.unwrap_or_else(|| PatternError::Together {
                patterns: names.join(", "),
                squeezed: true,
                reason: error.to_string(),
            })
        })?;
        sources.push(BASE64_CANDIDATE.to_owned());
        meanings.push(Meaning::Base64);
        names.push("decoder.base64".to_owned());
        sources.push(SPACED_CANDIDATE.to_owned());
        meanings.push(Meaning::Spaced);
        names.push("decoder.spaced".to_owned());
        let first_look = builder().build_many(&sources).map_err(|error| PatternError::Together {
            patterns: names.join(", "),
            squeezed: false,
            reason: error.to_string(),
        })?;
        Ok(Self {
            first_look,
            second_look,
            squeezed,
            meanings,
            names,
            categories: category_list,
            applies_to,
            empty,
        })
    }

    pub fn category_name(&self, category: usize) -> &str {
        &self.categories[category].0
    }
}

/// A pattern for text whose separators are gone: word boundaries match
/// anywhere, and repeated separator classes may repeat zero times.
fn squeeze(tree: &Hir) -> Hir {
    match tree.kind() {
        HirKind::Look(
            Look::WordAscii
            | Look::WordUnicode
            | Look::WordAsciiNegate
            | Look::WordUnicodeNegate
            | Look::WordStartAscii
            | Look::WordEndAscii
            | Look::WordStartUnicode
            | Look::WordEndUnicode
            | Look::WordStartHalfAscii
            | Look::WordEndHalfAscii
            | Look::WordStartHalfUnicode
            | Look::WordEndHalfUnicode,
        ) => Hir::empty(),
        HirKind::Repetition(repetition) => {
            let min = if is_separator(&repetition.sub) { 0 } else { repetition.min };
            Hir::repetition(Repetition {
                min,
                max: repetition.max,
                greedy: repetition.greedy,
                sub: Box::new(squeeze(&repetition.sub)),
            })
        }
        HirKind::Capture(capture) => {
            Hir::capture(Capture { sub: Box::new(squeeze(&capture.sub)), ..capture.clone() })
        }
        HirKind::Concat(parts) => Hir::concat(parts.iter().map(squeeze).collect()),
        HirKind::Alternation(parts) => Hir::alternation(parts.iter().map(squeeze).collect()),
        _ => tree.clone(),
    }
}

/// A class with no ASCII letter or digit in it: what separates words.
fn is_separator(tree: &Hir) -> bool {
    let word = |start: u32, end: u32| {
        [(b'0', b'9'), (b'a', b'z'), (b'A', b'Z')]
            .iter()
            .any(|&(low, high)| start <= u32::from(high) && end >= u32::from(low))
    };
    match tree.kind() {
        HirKind::Class(Class::Unicode(class)) => {
            !class.ranges().iter().any(|range| word(range.start() as u32, range.end() as u32))
        }
        HirKind::Class(Class::Bytes(class)) => {
            !class.ranges().iter().any(|range| word(range.start().into(), range.end().into()))
        }
        _ => false,
    }
}

/// Whether a match passes its pattern's check.
pub fn passes(check: Check, text: &str) -> bool {
    match check {
        Check::None => true,
        Check::Luhn => luhn(text),
        Check::Iban => iban(text),
        Check::UsSsn => us_ssn(text),
    }
}

fn luhn(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(position, &digit)| match position % 2 {
            0 => digit,
            _ if digit * 2 > 9 => digit * 2 - 9,
            _ => digit * 2,
        })
        .sum();
    sum.is_multiple_of(10)
}

fn iban(text: &str) -> bool {
    let compact: Vec<u8> = text
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace())
        .map(|byte| byte.to_ascii_uppercase())
        .collect();
    if !(15..=34).contains(&compact.len())
        || !compact[..2].iter().all(u8::is_ascii_uppercase)
        || !compact[2..4].iter().all(u8::is_ascii_digit)
        || !compact.iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let mut remainder = 0u32;
    for &byte in compact[4..].iter().chain(&compact[..4]) {
        remainder = if byte.is_ascii_digit() {
            (remainder * 10 + u32::from(byte - b'0')) % 97
        } else {
            (remainder * 100 + u32::from(byte - b'A') + 10) % 97
        };
    }
    remainder == 1
}

fn us_ssn(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() != 9 {
        return false;
    }
    let number =
        |range: std::ops::Range<usize>| digits[range].iter().fold(0, |total, digit| total * 10 + digit);
    let (area, group, serial) = (number(0..3), number(3..5), number(5..9));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_tell_real_numbers_from_look_alikes() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(luhn("5500-0000-0000-0004"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(!luhn("1234"));
        assert!(iban("DE89 3704 0044 0532 0130 00"));
        assert!(iban("gb82west12345698765432"));
        assert!(!iban("DE89 3704 0044 0532 0130 01"));
        assert!(us_ssn("123-45-6789"));
        assert!(!us_ssn("666-45-6789") && !us_ssn("123-00-6789") && !us_ssn("923-45-6789"));
    }

    #[test]
    fn a_bad_pattern_is_refused_by_name() {
        let mut categories = Categories::new();
        categories.insert(
            "pii".to_owned(),
            CategorySpec {
                action: Action::Redact,
                patterns: vec![
                    PatternSpec { name: "fine".to_owned(), regex: "a+b".to_owned(), check: Check::None },
                    PatternSpec {
                        name: "broken".to_owned(),
                        regex: "(unclosed".to_owned(),
                        check: Check::None,
                    },
                ],
                applies_to: AppliesTo::Both,
            },
        );
        let error = PatternSet::compile(&categories).unwrap_err();
        assert!(
            matches!(&error, PatternError::Refused { pattern, .. } if pattern == "pii.broken"),
            "{error:?}"
        );
        assert!(error.to_string().starts_with("pii.broken:"), "{error}");
        categories.get_mut("pii").unwrap().patterns[1].regex = "x*".to_owned();
        let error = PatternSet::compile(&categories).unwrap_err();
        assert_eq!(error, PatternError::MatchesEmpty("pii.broken".to_owned()));
        assert_eq!(error.to_string(), "pii.broken: matches the empty text");
        categories.get_mut("pii").unwrap().patterns[1].regex = "(?:a{1000}){1000}".to_owned();
        let error = PatternSet::compile(&categories).unwrap_err();
        assert!(error.to_string().starts_with("pii.broken:"), "over the size limit: {error}");
    }
}
