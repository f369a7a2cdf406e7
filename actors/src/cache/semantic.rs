//! The semantic cache's index: the embedded final turns of answered
//! requests, grouped by the fingerprint of everything else that makes an
//! answer (route, caller's scope, parameters, earlier turns), searched by
//! an exact scan of the group (cosine of unit vectors), bounded in entries
//! (the oldest go first). A near text is refused when it differs from the
//! cached one in what an embedding blurs: numbers, negation, names.
//!
//! An exact scan, not a graph index (HNSW): a group holds the paraphrases
//! of one route, parameters and scope, and `benches/semantic.rs` measures
//! the scan of 10,000 384-dimension vectors at well under a millisecond.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

/// One answered request as the index keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticEntry {
    pub fingerprint: u64,
    /// The final turn's text.
    pub text: Arc<str>,
    /// Its embedding, unit length.
    pub vector: Vec<f32>,
}

/// The nearest entry within the threshold that no veto refused.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticHit {
    pub text: Arc<str>,
    pub similarity: f32,
}

#[derive(Default)]
struct Group {
    ids: Vec<u64>,
    texts: Vec<Arc<str>>,
    /// Every vector of the group, one after another.
    vectors: Vec<f32>,
}

#[derive(Default)]
struct Entries {
    groups: HashMap<u64, Group>,
    /// (fingerprint, id) oldest first.
    order: VecDeque<(u64, u64)>,
    next_id: u64,
}

pub struct SemanticIndex {
    entries: RwLock<Entries>,
    max_entries: usize,
    /// The size of every vector: the first one's.
    dimensions: OnceLock<usize>,
}

/// Entries compared by the veto at most, best first: past them the
/// request is a miss.
const VETO_CANDIDATES: usize = 4;

impl SemanticIndex {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: RwLock::new(Entries::default()),
            max_entries: max_entries.max(1),
            dimensions: OnceLock::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an entry (replacing one of the same text in its group); the
    /// oldest entries go past the bound. Vectors of another size than
    /// the first are ignored.
    pub fn insert(&self, entry: SemanticEntry) {
        let dimensions = *self.dimensions.get_or_init(|| entry.vector.len());
        if entry.vector.len() != dimensions || dimensions == 0 {
            return;
        }
        let mut entries = self.entries.write();
        let id = entries.next_id;
        entries.next_id += 1;
        let group = entries.groups.entry(entry.fingerprint).or_default();
        if let Some(position) = group.texts.iter().position(|text| *text == entry.text) {
            let start = position * dimensions;
            group.vectors[start..start + dimensions].copy_from_slice(&entry.vector);
            return;
        }
        group.ids.push(id);
        group.texts.push(entry.text);
        group.vectors.extend_from_slice(&entry.vector);
        entries.order.push_back((entry.fingerprint, id));
        while entries.order.len() > self.max_entries {
            let Some((fingerprint, oldest)) = entries.order.pop_front() else { break };
            entries.remove(fingerprint, oldest, dimensions);
        }
    }

    /// The nearest entry of the group `fingerprint` whose similarity to
    /// `vector` is at least `threshold` and that `text` differs from in
    /// nothing a veto looks at.
    pub fn nearest(
        &self,
        fingerprint: u64,
        vector: &[f32],
        text: &str,
        threshold: f32,
    ) -> Option<SemanticHit> {
        let dimensions = *self.dimensions.get()?;
        if vector.len() != dimensions {
            return None;
        }
        let entries = self.entries.read();
        let group = entries.groups.get(&fingerprint)?;
        let mut candidates: Vec<(f32, usize)> = group
            .vectors
            .chunks_exact(dimensions)
            .map(|cached| dot(cached, vector))
            .enumerate()
            .filter(|(_, similarity)| *similarity >= threshold)
            .map(|(index, similarity)| (similarity, index))
            .collect();
        candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        candidates.into_iter().take(VETO_CANDIDATES).find_map(|(similarity, index)| {
            let cached = &group.texts[index];
            (!vetoed(cached, text))
                .then(|| SemanticHit { text: cached.clone(), similarity: similarity.min(1.0) })
        })
    }

    /// Drops every entry.
    pub fn clear(&self) {
        *self.entries.write() = Entries::default();
    }
}

impl Entries {
    fn remove(&mut self, fingerprint: u64, id: u64, dimensions: usize) {
        let Some(group) = self.groups.get_mut(&fingerprint) else { return };
        if let Some(position) = group.ids.iter().position(|candidate| *candidate == id) {
            group.ids.swap_remove(position);
            group.texts.swap_remove(position);
            let last = group.ids.len() * dimensions;
            let start = position * dimensions;
            if start != last {
                group.vectors.copy_within(last..last + dimensions, start);
            }
            group.vectors.truncate(last);
        }
        if group.ids.is_empty() {
            self.groups.remove(&fingerprint);
        }
    }
}

/// The dot product, in eight lanes the compiler keeps in vector registers.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (a, b) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            lanes[lane] += a[lane] * b[lane];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum();
    lanes.iter().sum::<f32>() + rest
}

/// Whether two near texts may still ask different things: they differ in
/// their numbers, in being negated, in the names they mention, or one has
/// a word the other has with a negating prefix (advantages and
/// disadvantages, safe and unsafe).
pub fn vetoed(cached: &str, asked: &str) -> bool {
    let (cached, asked) = (Features::of(cached), Features::of(asked));
    cached.numbers != asked.numbers
        || cached.negated != asked.negated
        || cached.names != asked.names
        || opposed(&cached.words, &asked.words)
        || opposed(&asked.words, &cached.words)
}

const NEGATING_PREFIXES: &[&str] = &["dis", "un", "in", "im", "il", "ir", "non"];

/// Whether a word of `one` is a word of `other` with a negating prefix
/// (and `one` lacks the plain word).
fn opposed(one: &[String], other: &[String]) -> bool {
    one.iter().any(|word| {
        NEGATING_PREFIXES.iter().any(|prefix| {
            word.strip_prefix(prefix).is_some_and(|plain| {
                plain.len() >= 3
                    && other.iter().any(|candidate| candidate == plain)
                    && !one.iter().any(|own| own == plain)
            })
        })
    })
}

/// What an embedding blurs, read off a text.
struct Features {
    /// Numbers, digits or words, as digits, sorted.
    numbers: Vec<String>,
    negated: bool,
    /// Capitalized words not starting a sentence, lowercased, sorted.
    names: Vec<String>,
    /// Every word, lowercased.
    words: Vec<String>,
}

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot", "nowhere",
    "ne", "pas", "nicht", "kein", "nunca",
];

const NUMBER_WORDS: &[(&str, &str)] = &[
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("thirteen", "13"),
    ("fourteen", "14"),
    ("fifteen", "15"),
    ("sixteen", "16"),
    ("seventeen", "17"),
    ("eighteen", "18"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("sixty", "60"),
    ("seventy", "70"),
    ("eighty", "80"),
    ("ninety", "90"),
    ("hundred", "100"),
    ("thousand", "1000"),
    ("million", "1000000"),
    ("billion", "1000000000"),
    ("first", "1st"),
    ("second", "2nd"),
    ("third", "3rd"),
    ("fourth", "4th"),
    ("fifth", "5th"),
    ("half", "1/2"),
    ("double", "x2"),
    ("twice", "x2"),
    ("triple", "x3"),
    ("dozen", "12"),
];

impl Features {
    fn of(text: &str) -> Self {
        let mut numbers = Vec::new();
        let mut names = Vec::new();
        let mut words = Vec::new();
        let mut negated = false;
        let mut sentence_start = true;
        for raw in text.split(|character: char| {
            character.is_whitespace() || matches!(character, '(' | ')' | '"' | '“' | '”' | '[' | ']')
        }) {
            if raw.is_empty() {
                continue;
            }
            let ends_sentence = raw.ends_with(['.', '?', '!', ':', ';']);
            let word = raw.trim_matches(|character: char| !character.is_alphanumeric());
            let word = word.strip_suffix("'s").or_else(|| word.strip_suffix("’s")).unwrap_or(word);
            if !word.is_empty() {
                let lower = word.to_lowercase();
                words.push(lower.clone());
                if lower.ends_with("n't") || lower.ends_with("n’t") || NEGATIONS.contains(&lower.as_str()) {
                    negated = true;
                }
                if word.chars().any(|character| character.is_ascii_digit()) {
                    let digits: String = word
                        .chars()
                        .filter(|character| character.is_alphanumeric() || *character == '.')
                        .collect();
                    numbers.push(digits.to_lowercase());
                } else if let Some((_, digits)) = NUMBER_WORDS.iter().find(|(name, _)| *name == lower) {
                    numbers.push((*digits).to_owned());
                } else if !sentence_start
                    && word.chars().next().is_some_and(char::is_uppercase)
                    && word != "I"
                {
                    names.push(lower);
                }
            }
            sentence_start = ends_sentence;
        }
        numbers.sort_unstable();
        names.sort_unstable();
        names.dedup();
        Self { numbers, negated, names, words }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Vec<f32> {
        let norm = values.iter().map(|value| value * value).sum::<f32>().sqrt();
        values.iter().map(|value| value / norm).collect()
    }

    #[test]
    fn the_nearest_entry_of_the_group_within_the_threshold() {
        let index = SemanticIndex::new(10);
        let entry = |fingerprint, text: &str, vector: &[f32]| SemanticEntry {
            fingerprint,
            text: text.into(),
            vector: unit(vector),
        };
        index.insert(entry(1, "what is rust", &[1.0, 0.0, 0.0]));
        index.insert(entry(1, "how do I bake bread", &[0.0, 1.0, 0.0]));
        index.insert(entry(2, "what is rust", &[1.0, 0.1, 0.0]));
        let hit = index.nearest(1, &unit(&[0.9, 0.1, 0.0]), "tell me what rust is", 0.9).expect("a hit");
        assert_eq!(&*hit.text, "what is rust");
        assert!(hit.similarity > 0.99);
        assert!(index.nearest(1, &unit(&[0.5, 0.5, 0.0]), "tell me", 0.9).is_none(), "below the threshold");
        assert!(index.nearest(3, &unit(&[1.0, 0.0, 0.0]), "what is rust", 0.5).is_none(), "another group");
        assert!(index.nearest(1, &[1.0, 0.0], "what is rust", 0.5).is_none(), "another size");
    }

    #[test]
    fn the_oldest_entries_go_past_the_bound() {
        let index = SemanticIndex::new(3);
        for number in 0..5 {
            let text = format!("text {number}");
            index.insert(SemanticEntry {
                fingerprint: number % 2,
                text: text.into(),
                vector: unit(&[1.0, number as f32]),
            });
        }
        assert_eq!(index.len(), 3);
        assert!(index.nearest(0, &unit(&[1.0, 0.0]), "text 0", 0.9999).is_none(), "the oldest is gone");
        let hit = index.nearest(0, &unit(&[1.0, 4.0]), "text 4", 0.9999).expect("the newest stays");
        assert_eq!(&*hit.text, "text 4");
        // The same text again replaces its entry rather than adding one.
        index.insert(SemanticEntry { fingerprint: 0, text: "text 4".into(), vector: unit(&[1.0, 4.0]) });
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn numbers_negation_and_names_veto_a_near_text() {
        assert!(vetoed("What is 15% of 80?", "What is 20% of 80?"));
        assert!(vetoed("List three fruits", "List five fruits"));
        assert!(!vetoed("List three fruits", "Name 3 fruits"));
        assert!(vetoed("Is coffee bad for you?", "Is coffee not bad for you?"));
        assert!(vetoed("Why can birds fly?", "Why can't birds fly?"));
        assert!(!vetoed("Why isn't the sky green?", "Why is the sky not green?"));
        assert!(vetoed("What is the capital of France?", "What is the capital of Germany?"));
        assert!(!vetoed("What is the capital of France?", "Tell me France's capital city."));
        assert!(!vetoed("How do I sort a list in Python?", "How can I sort a list in Python?"));
        assert!(!vetoed("Explain recursion simply.", "Explain recursion in simple terms."));
        assert!(vetoed(
            "What are the advantages of remote work?",
            "What are the disadvantages of remote work?"
        ));
        assert!(vetoed("Is this plan possible?", "Is this plan impossible?"));
        assert!(!vetoed("How do I install Python?", "How can I install Python?"), "install is not in+stall");
    }

    #[test]
    fn the_dot_product_matches_the_plain_sum() {
        let a: Vec<f32> = (0..384).map(|index| (index as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..384).map(|index| (index as f32 * 0.11).cos()).collect();
        let plain: f32 = a.iter().zip(&b).map(|(a, b)| a * b).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
    }
}
