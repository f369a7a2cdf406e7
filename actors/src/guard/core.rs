//! The Guard handlers call: the current pattern set (swapped whole on a
//! reload), screening of request texts and model output with each
//! category's action, client scores, and the guard's metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::patterns::{Action, AppliesTo, Categories, PatternError, PatternSet};
use super::scan::{scan, Finding, Scratch};
use super::scores::{ScoreSettings, Scores};

/// The guard's part of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Off: nothing is scanned.
    pub enabled: bool,
    /// Also screen what the models answer (redact and flag; block ends the
    /// answer with an error).
    pub scan_output: bool,
    /// A stream's output is held back this many bytes, so a match split
    /// across chunks is redacted whole.
    pub output_holdback_bytes: usize,
    pub scores: ScoreSettings,
    pub categories: Categories,
}

/// Which way a text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Input,
    Output,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

/// A text refused: the category that blocked it (never the match), and
/// which of the texts screened together it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub category: String,
    pub index: usize,
}

/// What screening found, besides a block: the categories redacted and
/// flagged, for the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Screening {
    pub redacted: Vec<String>,
    pub flagged: Vec<String>,
}

impl Screening {
    fn note(list: &mut Vec<String>, category: &str) {
        if !list.iter().any(|known| known == category) {
            list.push(category.to_owned());
        }
    }
}

/// The compiled patterns and the settings that came with them: swapped
/// together.
#[derive(Debug)]
pub struct Rules {
    pub set: PatternSet,
    pub config: GuardConfig,
}

impl Rules {
    pub fn compile(config: GuardConfig) -> Result<Self, PatternError> {
        Ok(Self { set: PatternSet::compile(&config.categories)?, config })
    }
}

#[derive(Debug)]
pub struct Guard {
    rules: ArcSwap<Rules>,
    scores: Scores,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Scratch, Vec<Finding>)> = std::cell::RefCell::default();
}

impl Guard {
    pub fn new(config: GuardConfig) -> Result<Arc<Self>, PatternError> {
        let rules = Rules::compile(config)?;
        let scores = Scores::new(rules.config.scores.clone());
        Ok(Arc::new(Self { rules: ArcSwap::from_pointee(rules), scores }))
    }

    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    pub fn enabled(&self) -> bool {
        self.rules.load().config.enabled
    }

    /// Replaces the patterns and settings at once; requests already
    /// screening finish with the old ones.
    pub fn replace(&self, rules: Rules) {
        self.scores.configure(rules.config.scores.clone());
        self.rules.store(Arc::new(rules));
    }

    pub fn scores(&self) -> &Scores {
        &self.scores
    }

    /// Screens texts bound for a model, redacting in place. A block stops
    /// at the first blocked category and raises the client's score.
    pub fn screen_input<'a>(
        &self,
        subject: &str,
        texts: impl IntoIterator<Item = &'a mut String>,
    ) -> Result<Screening, Blocked> {
        let rules = self.rules.load();
        if !rules.config.enabled {
            return Ok(Screening::default());
        }
        let started = Instant::now();
        let outcome = screen_all(&rules, Direction::Input, texts);
        metrics::histogram!("blaze_guard_scan_seconds", "direction" => "input")
            .record(started.elapsed().as_secs_f64());
        if outcome.is_err() {
            self.scores.penalize(subject);
        }
        outcome
    }

    /// Screens a model's whole answer, redacting in place.
    pub fn screen_output(&self, text: &mut String) -> Result<Screening, Blocked> {
        let rules = self.rules.load();
        if !rules.config.enabled || !rules.config.scan_output {
            return Ok(Screening::default());
        }
        let started = Instant::now();
        let outcome = screen_all(&rules, Direction::Output, [text]);
        metrics::histogram!("blaze_guard_scan_seconds", "direction" => "output")
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Whether model output is screened: streams then go through an
    /// [`super::OutputFilter`].
    pub fn screens_output(&self) -> bool {
        let rules = self.rules.load();
        rules.config.enabled && rules.config.scan_output
    }

    /// How long the client must still wait, if it is cooling down.
    pub fn cooling_down(&self, subject: &str) -> Option<Duration> {
        self.scores.cooling_down(subject)
    }
}

fn screen_all<'a>(
    rules: &Rules,
    direction: Direction,
    texts: impl IntoIterator<Item = &'a mut String>,
) -> Result<Screening, Blocked> {
    SCRATCH.with(|cell| {
        let mut borrowed = cell.borrow_mut();
        let (scratch, findings) = &mut *borrowed;
        let mut screening = Screening::default();
        for (index, text) in texts.into_iter().enumerate() {
            findings.clear();
            scan(&rules.set, text, scratch, findings);
            if findings.is_empty() {
                continue;
            }
            apply(rules, direction, text, findings, &mut screening)
                .map_err(|blocked| Blocked { index, ..blocked })?;
        }
        Ok(screening)
    })
}

/// Counts the findings and carries out their categories' actions on
/// `text` (whose findings these are).
pub(super) fn apply(
    rules: &Rules,
    direction: Direction,
    text: &mut String,
    findings: &[Finding],
    screening: &mut Screening,
) -> Result<(), Blocked> {
    let mut redactions = Vec::new();
    for finding in findings {
        let applies = match (rules.set.applies_to[finding.category], direction) {
            (AppliesTo::Both, _)
            | (AppliesTo::Input, Direction::Input)
            | (AppliesTo::Output, Direction::Output) => true,
            (AppliesTo::Input, Direction::Output) | (AppliesTo::Output, Direction::Input) => false,
        };
        if !applies {
            continue;
        }
        let (category, action) = &rules.set.categories[finding.category];
        metrics::counter!(
            "blaze_guard_matches_total",
            "category" => category.clone(),
            "action" => action.name(),
            "direction" => direction.name()
        )
        .increment(1);
        match action {
            Action::Block => return Err(Blocked { category: category.clone(), index: 0 }),
            Action::Redact => {
                Screening::note(&mut screening.redacted, category);
                redactions.push(finding);
            }
            Action::Flag => Screening::note(&mut screening.flagged, category),
        }
    }
    if !redactions.is_empty() {
        *text = redact(
            text,
            redactions
                .iter()
                .map(|finding| (finding.start, finding.end, rules.set.category_name(finding.category))),
        );
    }
    Ok(())
}

/// The text with each (ordered, non-overlapping) span replaced by
/// `[REDACTED:<category>]`.
pub(super) fn redact<'a>(text: &str, spans: impl Iterator<Item = (usize, usize, &'a str)>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, category) in spans {
        if start < at {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str("[REDACTED:");
        out.push_str(category);
        out.push(']');
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// Findings of one text, outside any request (tests, the benchmark).
pub fn findings_of(rules: &Rules, text: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    scan(&rules.set, text, &mut Scratch::default(), &mut findings);
    findings
}
