//! The text the patterns see: NFKC, with default-ignorable characters
//! (zero-width, bidi controls, variation selectors, soft hyphens) removed,
//! non-ASCII letters lower-cased and folded to the ASCII letter they are
//! confusable with (UTS #39 skeletons: Cyrillic "і" reads as "i"), and
//! combining marks dropped. ASCII is already in that form (the patterns
//! match case-insensitively), so runs of it are copied as they are, and the
//! map back to the original text only records where the two differ: a
//! match in the view becomes a span of the original, to redact.

use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// One run of non-ASCII text and what it became in the view.
#[derive(Debug, Clone, Copy)]
struct Folded {
    view_start: usize,
    view_end: usize,
    original_start: usize,
    original_end: usize,
}

/// The normalized view of a text, and the way back to the text.
#[derive(Debug, Default)]
pub struct View {
    pub text: String,
    folded: Vec<Folded>,
}

impl View {
    pub fn clear(&mut self) {
        self.text.clear();
        self.folded.clear();
    }

    /// Fills the view from `original`, replacing what it held.
    pub fn fill(&mut self, original: &str) {
        FOLDED.with(|memo| self.fill_with(original, &mut memo.borrow_mut()));
    }

    fn fill_with(&mut self, original: &str, memo: &mut foldhash::HashMap<char, Box<str>>) {
        self.clear();
        self.text.reserve(original.len());
        let bytes = original.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let ascii_run = bytes[at..].iter().position(|byte| !byte.is_ascii()).unwrap_or(bytes.len() - at);
            self.text.push_str(&original[at..at + ascii_run]);
            at += ascii_run;
            if at == bytes.len() {
                break;
            }
            // The non-ASCII run, up to the next ASCII character: NFKC works on
            // it whole, since composition never crosses into ASCII letters
            // that follow a starter of their own.
            let run_end = bytes[at..].iter().position(u8::is_ascii).map_or(bytes.len(), |offset| at + offset);
            let view_start = self.text.len();
            fold_into(&original[at..run_end], &mut self.text, memo);
            self.folded.push(Folded {
                view_start,
                view_end: self.text.len(),
                original_start: at,
                original_end: run_end,
            });
            at = run_end;
        }
    }

    /// Whether the view is the original itself (nothing was folded).
    pub fn is_identity(&self) -> bool {
        self.folded.is_empty()
    }

    /// The original span a match of the view covers: widened to whole
    /// folded runs where it starts or ends inside one.
    pub fn original_span(&self, start: usize, end: usize) -> (usize, usize) {
        (self.original_offset(start, false), self.original_offset(end, true))
    }

    fn original_offset(&self, offset: usize, is_end: bool) -> usize {
        // The last folded run before the offset: one starting at a match's
        // start is in it, one starting at its (exclusive) end is not.
        let index = self.folded.partition_point(|folded| folded.view_start < offset + usize::from(!is_end));
        let Some(folded) = index.checked_sub(1).map(|index| self.folded[index]) else {
            return offset;
        };
        if offset >= folded.view_end {
            // In the ASCII after the run: same distance from its end.
            return folded.original_end + (offset - folded.view_end);
        }
        if is_end {
            folded.original_end
        } else {
            folded.original_start
        }
    }
}

/// Folded characters already worked out, per thread: text repeats the same
/// few non-ASCII characters (accents, quotes, dashes), and a skeleton costs
/// a decomposition and a table search each time. Bounded: cleared when full.
const FOLD_MEMO_ENTRIES: usize = 4096;

thread_local! {
    static FOLDED: std::cell::RefCell<foldhash::HashMap<char, Box<str>>> =
        std::cell::RefCell::new(foldhash::HashMap::default());
}

/// Appends the view of a non-ASCII run.
fn fold_into(run: &str, out: &mut String, memo: &mut foldhash::HashMap<char, Box<str>>) {
    // Most runs (an accent, a quote, a dash) are NFKC already: a quick
    // check spares the normalizer's buffers.
    if is_nfkc_quick(run.chars()) == IsNormalized::Yes {
        for character in run.chars() {
            push_folded(character, out, memo);
        }
    } else {
        for character in run.nfkc() {
            push_folded(character, out, memo);
        }
    }
}

fn push_folded(character: char, out: &mut String, memo: &mut foldhash::HashMap<char, Box<str>>) {
    if character.is_ascii() {
        out.push(character);
        return;
    }
    if let Some(folded) = memo.get(&character) {
        out.push_str(folded);
        return;
    }
    let folded = fold_char(character);
    out.push_str(&folded);
    if memo.len() >= FOLD_MEMO_ENTRIES {
        memo.clear();
    }
    memo.insert(character, folded.into_boxed_str());
}

/// The view of one non-ASCII character (after NFKC): lower-cased, then its
/// UTS #39 prototype without combining marks when that is ASCII, else the
/// character's own letters; nothing for default-ignorable characters.
fn fold_char(character: char) -> String {
    let mut buffer = [0u8; 4];
    let mut out = String::new();
    for lower in character.to_lowercase() {
        let mut folded = String::new();
        for part in unicode_security::skeleton(lower.encode_utf8(&mut buffer)) {
            if canonical_combining_class(part) == 0 {
                folded.push(part);
            }
        }
        if folded.is_empty() {
            // Default-ignorable, or a lone combining mark: nothing.
            continue;
        }
        if folded.is_ascii() {
            folded.make_ascii_lowercase();
            out.push_str(&folded);
        } else if canonical_combining_class(lower) == 0 {
            // A letter with no ASCII look-alike (CJK, Arabic, ...): itself,
            // accents dropped when its skeleton has them apart.
            out.push_str(&folded);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::View;

    fn view(text: &str) -> String {
        let mut view = View::default();
        view.fill(text);
        view.text
    }

    #[test]
    fn folds_the_usual_obfuscations() {
        assert_eq!(view("ignore previous"), "ignore previous");
        assert_eq!(view("ig\u{200b}no\u{200d}re pre\u{202e}vious"), "ignore previous");
        assert_eq!(view("\u{0456}gn\u{043e}re"), "ignore", "Cyrillic look-alikes");
        assert_eq!(view("\u{0406}GNORE"), "iGNORE", "a Cyrillic capital, lower-cased then folded");
        assert_eq!(view("\u{ff49}\u{ff47}\u{ff4e}\u{ff4f}\u{ff52}\u{ff45}"), "ignore", "fullwidth");
        assert_eq!(view("pr\u{e9}vious e\u{301}"), "previous e", "accents, composed or not");
        assert_eq!(view("\u{1d422}\u{1d420}\u{1d427}"), "ign", "mathematical letters");
        assert_eq!(view("caf\u{e9} \u{65e5}\u{672c}"), "cafe \u{65e5}\u{672c}");
    }

    #[test]
    fn spans_map_back_to_the_original() {
        let original = "say \u{0456}gn\u{043e}re now";
        let mut view = View::default();
        view.fill(original);
        assert_eq!(view.text, "say ignore now");
        let start = view.text.find("ignore").unwrap();
        let (from, to) = view.original_span(start, start + "ignore".len());
        assert_eq!(&original[from..to], "\u{0456}gn\u{043e}re");
        let now = view.text.find("now").unwrap();
        let (from, to) = view.original_span(now, now + 3);
        assert_eq!(&original[from..to], "now");
        let (from, to) = view.original_span(0, 3);
        assert_eq!(&original[from..to], "say");
    }

    #[test]
    fn a_pure_ascii_text_is_its_own_view() {
        let mut view = View::default();
        view.fill("Plain text, 100% ASCII.");
        assert!(view.is_identity());
        assert_eq!(view.original_span(6, 10), (6, 10));
    }
}
