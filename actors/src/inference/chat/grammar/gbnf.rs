//! GBNF text read as far as its cost: how deep its groups nest and how
//! many elements it has once llama.cpp copies its repetitions out
//! (`x{0,1000}` is a thousand copies of `x`, and counts multiply through
//! groups). Its syntax is llama.cpp's to judge; this scan only bounds it.

use super::{GrammarError, MOST_ELEMENTS, MOST_NESTING};

/// `text` as a GBNF string literal.
pub fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            control if (control as u32) < 0x20 || control as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02X}", control as u32));
            }
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

/// Whether a rule named `root` is defined.
pub fn defines_root(text: &str) -> bool {
    text.lines().any(|line| {
        line.trim_start().strip_prefix("root").is_some_and(|rest| rest.trim_start().starts_with("::="))
    })
}

/// Refuses text that nests deeper than [`MOST_NESTING`] groups or expands
/// to more than [`MOST_ELEMENTS`] elements.
pub fn check_size(text: &str) -> Result<(), GrammarError> {
    let bytes = text.as_bytes();
    // The elements of each open group, and the size of its last element
    // (what a repetition after it copies).
    let mut groups: Vec<(u64, u64)> = vec![(0, 0)];
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        at += 1;
        let element = match byte {
            b'#' => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
                continue;
            }
            b'"' => {
                at = skip_quoted(bytes, at, b'"');
                1
            }
            b'[' => {
                at = skip_quoted(bytes, at, b']');
                1
            }
            b'(' => {
                if groups.len() > MOST_NESTING {
                    return Err(GrammarError::TooDeep("the grammar"));
                }
                groups.push((0, 0));
                continue;
            }
            b')' => {
                if groups.len() == 1 {
                    return Err(GrammarError::InvalidGrammar("a `)` closes no group".to_owned()));
                }
                let (inner, _) = groups.pop().unwrap_or_default();
                inner.max(1)
            }
            b'*' | b'+' | b'?' => repeated(&mut groups, 2)?,
            b'{' => {
                let end =
                    bytes[at..].iter().position(|&byte| byte == b'}').map_or(bytes.len(), |end| at + end);
                let copies = copies(&text[at..end])?;
                at = (end + 1).min(bytes.len());
                repeated(&mut groups, copies)?
            }
            byte if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' => {
                while at < bytes.len()
                    && (bytes[at].is_ascii_alphanumeric() || matches!(bytes[at], b'-' | b'_'))
                {
                    at += 1;
                }
                1
            }
            _ => continue,
        };
        let group = groups.last_mut().ok_or(GrammarError::TooLarge)?;
        group.0 = group.0.saturating_add(element);
        group.1 = element;
        if group.0 > MOST_ELEMENTS {
            return Err(GrammarError::TooLarge);
        }
    }
    let total: u64 = groups.iter().map(|(elements, _)| elements).sum();
    if total > MOST_ELEMENTS {
        return Err(GrammarError::TooLarge);
    }
    Ok(())
}

/// `text` with every rule name (where defined and where used) prefixed
/// by `prefix`, so grammars can be joined without their rules clashing.
/// Literals, character classes, repetition counts and comments are kept.
pub fn prefixed(text: &str, prefix: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() * 2);
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let byte = bytes[at];
        at += 1;
        match byte {
            b'#' => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
            }
            b'"' => at = skip_quoted(bytes, at, b'"'),
            b'[' => at = skip_quoted(bytes, at, b']'),
            b'{' => {
                at = bytes[at..].iter().position(|&byte| byte == b'}').map_or(bytes.len(), |end| at + end + 1)
            }
            byte if is_name_byte(byte) => {
                while at < bytes.len() && is_name_byte(bytes[at]) {
                    at += 1;
                }
                out.push_str(prefix);
            }
            _ => {
                while !text.is_char_boundary(at) {
                    at += 1;
                }
            }
        }
        out.push_str(text.get(start..at.min(bytes.len())).unwrap_or_default());
    }
    out
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_')
}

/// The position after a literal or class that started before `at`.
fn skip_quoted(bytes: &[u8], mut at: usize, close: u8) -> usize {
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            byte if byte == close => return at + 1,
            _ => at += 1,
        }
    }
    bytes.len()
}

/// Replaces the last element of the open group by `copies` of it; the
/// element's size is returned as 0 since it was already counted once.
fn repeated(groups: &mut [(u64, u64)], copies: u64) -> Result<u64, GrammarError> {
    let group = groups.last_mut().ok_or(GrammarError::TooLarge)?;
    let last = group.1;
    group.0 = group.0.saturating_add(last.saturating_mul(copies.saturating_sub(1)));
    group.1 = last.saturating_mul(copies);
    if group.0 > MOST_ELEMENTS {
        return Err(GrammarError::TooLarge);
    }
    Ok(0)
}

/// How many copies `{m}`, `{m,}` or `{m,n}` makes of what it follows.
fn copies(counts: &str) -> Result<u64, GrammarError> {
    let number = |text: &str| {
        text.trim()
            .parse::<u64>()
            .map_err(|_| GrammarError::InvalidGrammar(format!("`{{{counts}}}` is not a repetition count")))
    };
    match counts.split_once(',') {
        None => number(counts),
        Some((least, most)) if most.trim().is_empty() => Ok(number(least)?.saturating_add(1)),
        Some((least, most)) => Ok(number(least)?.max(number(most)?)),
    }
}
