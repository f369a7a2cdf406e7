//! The Guard: screens every text bound for a model (and, by config, what
//! the models answer) in one linear-time pass. Pattern categories from the
//! configuration (prompt injection, jailbreak, PII, secrets, or any other)
//! are compiled once into one multi-pattern automaton and matched against
//! a normalized view of the text (NFKC, invisible characters removed,
//! look-alike letters folded, case-insensitive), so trivial obfuscation
//! does not pass; base64 and letter-spaced runs get a second look,
//! decoded. Each category blocks, redacts or flags. Blocks raise the
//! client's score; a client over the threshold cools down. The actor
//! reloads the patterns when the configuration file changes.

mod actor;
mod core;
mod normalize;
mod patterns;
mod scan;
mod scores;
mod stream;
#[cfg(test)]
mod tests;

pub use self::actor::{reload_now, GuardActor, LoadConfig, Reload};
pub use self::core::{findings_of, Blocked, Direction, Guard, GuardConfig, Rules, Screening};
pub use self::patterns::{
    Action, AppliesTo, Categories, CategorySpec, Check, PatternError, PatternSet, PatternSpec,
};
pub use self::scan::Finding;
pub use self::scores::{ScoreSettings, Scores};
pub use self::stream::OutputFilter;
