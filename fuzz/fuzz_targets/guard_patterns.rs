//! The guard's pattern compiler: an arbitrary regex (the first line) as a
//! configured pattern, including the rewrite for squeezed text, then
//! scanned against the rest. A pattern is compiled or refused by name;
//! never a panic, and size limits hold.

#![no_main]

use blaze_actors::guard::{
    findings_of, Action, CategorySpec, GuardConfig, PatternSpec, Rules, ScoreSettings,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(data) = std::str::from_utf8(data) else { return };
    let (regex, text) = data.split_once('\n').unwrap_or((data, ""));
    let category = CategorySpec {
        action: Action::Redact,
        patterns: vec![PatternSpec {
            name: "fuzzed".to_owned(),
            regex: regex.to_owned(),
            check: Default::default(),
        }],
        applies_to: Default::default(),
    };
    let config = GuardConfig {
        enabled: true,
        scan_output: true,
        output_holdback_bytes: 64,
        scores: ScoreSettings {
            block_points: 0.0,
            threshold: 1.0,
            half_life_s: 60,
            cool_down_s: 60,
            max_clients: 16,
        },
        categories: [("fuzz".to_owned(), category)].into_iter().collect(),
    };
    match Rules::compile(config) {
        Ok(rules) => {
            for finding in findings_of(&rules, text) {
                assert!(finding.start <= finding.end && finding.end <= text.len(), "{finding:?}");
                assert!(text.is_char_boundary(finding.start) && text.is_char_boundary(finding.end));
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains("fuzz.fuzzed"), "the refusal does not name the pattern: {message}")
        }
    }
});
