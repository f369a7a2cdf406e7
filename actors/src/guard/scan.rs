//! One pass of the compiled patterns over a text: its normalized view, in
//! windows (so a text of any size costs a bounded buffer), leftmost-first
//! matches mapped back to the original, and a second look at base64 and
//! letter-spaced runs, decoded.

use base64::Engine;
use regex_automata::meta::Regex;
use regex_automata::Input;

use super::normalize::View;
use super::patterns::{passes, Meaning, PatternSet};

/// Text scanned per window; the view never holds more than this and the
/// overlap.
const WINDOW: usize = 256 << 10;
/// A match is taken to be at most this long: windows overlap by it, so
/// one that starts in a window is found whole.
const OVERLAP: usize = 8 << 10;
/// Decoded text must be mostly printable to be looked at (not a picture).
const PRINTABLE_SHARE: f64 = 0.9;

/// One match: the category and pattern, and the span of the original
/// text it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub category: usize,
    pub pattern: usize,
    pub start: usize,
    pub end: usize,
}

/// Buffers a scan reuses.
#[derive(Debug, Default)]
pub struct Scratch {
    view: View,
    decoded_view: View,
    decoded: String,
}

fn floor_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Every finding in `text`, in order, none overlapping.
pub fn scan(set: &PatternSet, text: &str, scratch: &mut Scratch, findings: &mut Vec<Finding>) {
    if set.empty {
        return;
    }
    let mut covered = 0;
    let mut window_start = 0;
    while window_start < text.len() {
        let region_end = floor_boundary(text, window_start + WINDOW);
        let last = region_end == text.len();
        let haystack_end = floor_boundary(text, region_end + OVERLAP);
        let haystack = &text[window_start..haystack_end];
        let view_text = if haystack.is_ascii() {
            scratch.view.clear();
            haystack
        } else {
            scratch.view.fill(haystack);
            scratch.view.text.as_str()
        };
        for found in set.first_look.find_iter(Input::new(view_text)) {
            let (start, end) = if scratch.view.is_identity() {
                (found.start(), found.end())
            } else {
                scratch.view.original_span(found.start(), found.end())
            };
            let (start, end) = (window_start + start, window_start + end);
            if start < covered {
                continue;
            }
            if start >= region_end && !last {
                break;
            }
            let matched = &view_text[found.start()..found.end()];
            let before = findings.len();
            match set.meanings[found.pattern().as_usize()] {
                Meaning::Pattern { category, check } => {
                    if passes(check, matched) {
                        findings.push(Finding { category, pattern: found.pattern().as_usize(), start, end });
                    }
                }
                Meaning::Base64 => {
                    if decode_base64(matched, &mut scratch.decoded) {
                        second_look(set, &mut scratch.decoded_view, &scratch.decoded, (start, end), findings);
                    }
                }
                Meaning::Spaced => {
                    scratch.decoded.clear();
                    scratch.decoded.extend(matched.chars().filter(char::is_ascii_alphanumeric));
                    look_with(
                        set,
                        &set.squeezed,
                        &mut scratch.decoded_view,
                        &scratch.decoded,
                        (start, end),
                        findings,
                    );
                }
            }
            if findings.len() == before
                && !matches!(set.meanings[found.pattern().as_usize()], Meaning::Pattern { .. })
            {
                // The candidate hid nothing once decoded; it may still hold a
                // pattern it shadowed from the first look (a key in a long run).
                second_look(set, &mut scratch.decoded_view, matched, (start, end), findings);
            }
            if findings.len() > before {
                covered = end;
            }
        }
        window_start = region_end;
    }
}

/// Findings in decoded text cover the whole encoded span.
fn second_look(
    set: &PatternSet,
    view: &mut View,
    decoded: &str,
    span: (usize, usize),
    findings: &mut Vec<Finding>,
) {
    look_with(set, &set.second_look, view, decoded, span, findings);
}

fn look_with(
    set: &PatternSet,
    regex: &Regex,
    view: &mut View,
    decoded: &str,
    span: (usize, usize),
    findings: &mut Vec<Finding>,
) {
    view.fill(decoded);
    for found in regex.find_iter(Input::new(&view.text)).filter(|found| found.start() < found.end()) {
        let Meaning::Pattern { category, check } = set.meanings[found.pattern().as_usize()] else { continue };
        if passes(check, &view.text[found.start()..found.end()]) {
            findings.push(Finding {
                category,
                pattern: found.pattern().as_usize(),
                start: span.0,
                end: span.1,
            });
            // One finding per span: the span is redacted or blocked whole.
            return;
        }
    }
}

/// Decodes a base64 run into `out`; false unless it is mostly printable
/// UTF-8 text.
fn decode_base64(encoded: &str, out: &mut String) -> bool {
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    out.clear();
    // A run may come without its padding, or cut from longer text.
    let usable = encoded.trim_end_matches('=');
    // Unpadded base64 ends with 2 or 3 characters of a group, never 1.
    let usable = if usable.len() % 4 == 1 { &usable[..usable.len() - 1] } else { usable };
    let Ok(bytes) = ENGINE.decode(usable) else { return false };
    let Ok(text) = String::from_utf8(bytes) else { return false };
    let printable = text.chars().filter(|c| !c.is_control() || c.is_whitespace()).count();
    if (printable as f64) < PRINTABLE_SHARE * text.chars().count() as f64 {
        return false;
    }
    *out = text;
    true
}
