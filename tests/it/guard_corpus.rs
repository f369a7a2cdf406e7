//! The curated default patterns (config/default.yaml) on the labelled
//! corpus (tests/guard/corpus.jsonl, made by tests/guard/make_corpus.py):
//! precision, recall and false-positive rate per category, printed and
//! held to floors; benign texts, including ones about security topics,
//! are caught at most 1% of the time.

use std::collections::{BTreeMap, BTreeSet};

use blaze::settings::{ConfigSources, Settings};
use blaze_actors::guard::{findings_of, Rules};

const CORPUS: &str = include_str!("../guard/corpus.jsonl");

/// Floors per category: (precision, recall).
const FLOORS: &[(&str, f64, f64)] = &[
    ("prompt_injection", 0.97, 0.95),
    ("jailbreak", 0.97, 0.95),
    ("pii", 0.97, 0.97),
    ("secrets", 0.97, 0.97),
];
const BENIGN_FALSE_POSITIVES_AT_MOST: f64 = 0.01;

fn default_rules() -> Rules {
    let settings = Settings::load(&ConfigSources::default()).expect("the default configuration loads");
    Rules::compile(settings.guard).expect("the default patterns compile")
}

#[derive(Default)]
struct Tally {
    true_positives: usize,
    false_positives: usize,
    false_negatives: usize,
    negatives: usize,
}

#[test]
fn the_default_patterns_meet_their_floors_on_the_labelled_corpus() {
    let rules = default_rules();
    let samples: Vec<serde_json::Value> =
        CORPUS.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    assert!(samples.len() >= 300, "the corpus has {} samples", samples.len());

    let mut tallies: BTreeMap<&str, Tally> =
        FLOORS.iter().map(|(name, ..)| (*name, Tally::default())).collect();
    let (mut benign, mut benign_caught) = (0, 0);
    let mut misses = Vec::new();
    for sample in &samples {
        let text = sample["text"].as_str().unwrap();
        let label = sample["label"].as_str().unwrap();
        let found: BTreeSet<&str> = findings_of(&rules, text)
            .iter()
            .map(|finding| rules.set.category_name(finding.category))
            .collect();
        if label == "benign" {
            benign += 1;
            if !found.is_empty() {
                benign_caught += 1;
                misses.push(format!("benign caught as {found:?}: {text:?}"));
            }
        }
        for (category, tally) in &mut tallies {
            match (label == *category, found.contains(category)) {
                (true, true) => tally.true_positives += 1,
                (true, false) => {
                    tally.false_negatives += 1;
                    misses.push(format!("{category} missed ({}): {text:?}", sample["variant"]));
                }
                (false, true) => {
                    tally.false_positives += 1;
                    tally.negatives += 1;
                    if label != "benign" {
                        // Malicious in another category too: reported, not a failure.
                        misses.push(format!("{label} also caught as {category}: {text:?}"));
                    }
                }
                (false, false) => tally.negatives += 1,
            }
        }
    }

    println!("{:<18} {:>9} {:>7} {:>7}", "category", "precision", "recall", "FPR");
    let mut failures = Vec::new();
    for (category, minimum_precision, minimum_recall) in FLOORS {
        let tally = &tallies[category];
        let caught = tally.true_positives + tally.false_positives;
        let precision = if caught == 0 { 0.0 } else { tally.true_positives as f64 / caught as f64 };
        let recall = tally.true_positives as f64 / (tally.true_positives + tally.false_negatives) as f64;
        let false_positive_rate = tally.false_positives as f64 / tally.negatives.max(1) as f64;
        println!("{category:<18} {precision:>9.3} {recall:>7.3} {false_positive_rate:>7.3}");
        if precision < *minimum_precision || recall < *minimum_recall {
            failures.push(format!(
                "{category}: precision {precision:.3} (floor {minimum_precision}), recall {recall:.3} (floor {minimum_recall})"
            ));
        }
    }
    let benign_rate = benign_caught as f64 / benign as f64;
    println!("benign caught: {benign_caught} of {benign} ({benign_rate:.3})");
    for miss in &misses {
        println!("  {miss}");
    }
    if benign_rate > BENIGN_FALSE_POSITIVES_AT_MOST {
        failures.push(format!("benign false positives {benign_rate:.3} > {BENIGN_FALSE_POSITIVES_AT_MOST}"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_default_set_redacts_what_it_finds_and_names_no_match() {
    let rules = default_rules();
    let text = "Mail me at jane@example.com with key AKIAIOSFODNN7EXAMPLE.";
    let categories: Vec<&str> =
        findings_of(&rules, text).iter().map(|finding| rules.set.category_name(finding.category)).collect();
    assert_eq!(categories, ["pii", "secrets"]);
}
