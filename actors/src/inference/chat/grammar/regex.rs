//! Regular expressions as GBNF, through regex-syntax's syntax tree: the
//! completion's whole text must match, so anchors at the pattern's ends
//! are implied and dropped; an anchor or a word boundary inside it has no
//! grammar equivalent and is refused.

use regex_syntax::hir::{Class, Hir, HirKind, Look};

use super::gbnf::literal;
use super::{GrammarError, MOST_NESTING, MOST_REPETITION};

/// The GBNF expression matching what `pattern` matches, whole.
pub fn convert(pattern: &str) -> Result<String, GrammarError> {
    let hir = regex_syntax::ParserBuilder::new()
        .nest_limit(MOST_NESTING as u32)
        .build()
        .parse(pattern)
        .map_err(|error| GrammarError::InvalidRegex(error.to_string()))?;
    let mut out = String::new();
    expression(&without_end_anchors(hir), &mut out)?;
    Ok(out)
}

/// `^…$` means what the whole-text match already means.
fn without_end_anchors(hir: Hir) -> Hir {
    let is_start = |hir: &Hir| matches!(hir.kind(), HirKind::Look(Look::Start | Look::StartLF));
    let is_end = |hir: &Hir| matches!(hir.kind(), HirKind::Look(Look::End | Look::EndLF));
    match hir.kind() {
        HirKind::Concat(items) => {
            let mut items = items.clone();
            if items.first().is_some_and(is_start) {
                items.remove(0);
            }
            if items.last().is_some_and(is_end) {
                items.pop();
            }
            Hir::concat(items)
        }
        _ if is_start(&hir) || is_end(&hir) => Hir::empty(),
        _ => hir,
    }
}

fn expression(hir: &Hir, out: &mut String) -> Result<(), GrammarError> {
    match hir.kind() {
        HirKind::Empty => out.push_str("\"\""),
        HirKind::Literal(text) => {
            let text = std::str::from_utf8(&text.0).map_err(|_| {
                GrammarError::UnsupportedRegex("it matches bytes that are not UTF-8".to_owned())
            })?;
            out.push_str(&literal(text));
        }
        HirKind::Class(Class::Unicode(class)) => {
            let ranges: Vec<(char, char)> =
                class.ranges().iter().map(|range| (range.start(), range.end())).collect();
            character_class(&ranges, out)?;
        }
        HirKind::Class(Class::Bytes(class)) => {
            let ranges: Option<Vec<(char, char)>> = class
                .ranges()
                .iter()
                .map(|range| (range.end() < 0x80).then(|| (range.start() as char, range.end() as char)))
                .collect();
            let ranges = ranges.ok_or_else(|| {
                GrammarError::UnsupportedRegex("it matches bytes that are not UTF-8".to_owned())
            })?;
            character_class(&ranges, out)?;
        }
        HirKind::Look(_) => {
            return Err(GrammarError::UnsupportedRegex(
                "anchors and word boundaries are supported only at the ends of the pattern".to_owned(),
            ))
        }
        HirKind::Repetition(repetition) => {
            if u64::from(repetition.max.unwrap_or(repetition.min)) > MOST_REPETITION {
                return Err(GrammarError::UnsupportedRegex(format!(
                    "repetition counts above {MOST_REPETITION}"
                )));
            }
            out.push('(');
            expression(&repetition.sub, out)?;
            out.push(')');
            match (repetition.min, repetition.max) {
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (0, Some(1)) => out.push('?'),
                (least, None) => out.push_str(&format!("{{{least},}}")),
                (least, Some(most)) if least == most => out.push_str(&format!("{{{least}}}")),
                (least, Some(most)) => out.push_str(&format!("{{{least},{most}}}")),
            }
        }
        HirKind::Capture(capture) => {
            out.push('(');
            expression(&capture.sub, out)?;
            out.push(')');
        }
        HirKind::Concat(items) => sequence(items, " ", out)?,
        HirKind::Alternation(items) => sequence(items, " | ", out)?,
    }
    Ok(())
}

fn sequence(items: &[Hir], separator: &str, out: &mut String) -> Result<(), GrammarError> {
    out.push('(');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push_str(separator);
        }
        expression(item, out)?;
    }
    out.push(')');
    Ok(())
}

fn character_class(ranges: &[(char, char)], out: &mut String) -> Result<(), GrammarError> {
    if ranges.is_empty() {
        return Err(GrammarError::UnsupportedRegex("it has a class that matches no character".to_owned()));
    }
    out.push('[');
    for &(start, end) in ranges {
        class_character(start, out);
        if end != start {
            out.push('-');
            class_character(end, out);
        }
    }
    out.push(']');
    Ok(())
}

/// A character inside a GBNF class: ASCII letters and digits as they are,
/// everything else by its code point, so nothing reads as syntax.
fn class_character(character: char, out: &mut String) {
    let code = character as u32;
    if character.is_ascii_alphanumeric() || character == ' ' {
        out.push(character);
    } else if code <= 0xFF {
        out.push_str(&format!("\\x{code:02X}"));
    } else if code <= 0xFFFF {
        out.push_str(&format!("\\u{code:04X}"));
    } else {
        out.push_str(&format!("\\U{code:08X}"));
    }
}
