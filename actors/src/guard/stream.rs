//! Screening a streamed answer: the last `output_holdback_bytes` are held
//! back until more text (or the end) shows whether a match runs through
//! them, so a secret split across chunks is still redacted whole. The cut
//! never falls inside a match.

use std::sync::Arc;

use super::core::{apply, Blocked, Direction, Rules, Screening};
use super::scan::{scan, Scratch};

#[derive(Debug)]
pub struct OutputFilter {
    rules: Arc<Rules>,
    pending: String,
    scratch: Scratch,
    screening: Screening,
}

impl OutputFilter {
    pub fn new(rules: Arc<Rules>) -> Self {
        Self { rules, pending: String::new(), scratch: Scratch::default(), screening: Screening::default() }
    }

    /// Takes the next piece; returns what can be sent now (maybe nothing).
    pub fn push(&mut self, piece: &str) -> Result<String, Blocked> {
        self.pending.push_str(piece);
        let holdback = self.rules.config.output_holdback_bytes;
        if self.pending.len() <= holdback {
            return Ok(String::new());
        }
        self.release(self.pending.len() - holdback)
    }

    /// The end of the answer: everything left, screened.
    pub fn finish(&mut self) -> Result<String, Blocked> {
        self.release(self.pending.len())
    }

    /// The categories redacted and flagged so far.
    pub fn screening(&self) -> &Screening {
        &self.screening
    }

    fn release(&mut self, wanted: usize) -> Result<String, Blocked> {
        let mut findings = Vec::new();
        scan(&self.rules.set, &self.pending, &mut self.scratch, &mut findings);
        let mut cut = wanted;
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        // A match running through the cut waits whole for the next push.
        if let Some(through) = findings.iter().find(|finding| finding.start < cut && finding.end > cut) {
            cut = through.start;
        }
        findings.retain(|finding| finding.end <= cut);
        let rest = self.pending.split_off(cut);
        let mut out = std::mem::replace(&mut self.pending, rest);
        apply(&self.rules, Direction::Output, &mut out, &findings, &mut self.screening)?;
        Ok(out)
    }
}
