//! Choosing a sequence's next token and the text it may send: the sampler
//! chain, the greedy argmax read in place, the grammar of a constrained
//! completion, whole UTF-8 characters only, and stop strings held back
//! until they can no longer match.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use super::decoder::{Decoder, Sequence};
use super::model::ChatModel;
use crate::inference::chat::completion::{Alternative, FinishReason, Progress, SamplingParams, TokenLogprob};
use crate::inference::chat::grammar::Grammar;
use crate::inference::engine::EngineError;

impl ChatModel {
    /// The sampler chain of a completion's parameters.
    pub(super) fn sampler(&self, params: &SamplingParams) -> LlamaSampler {
        let mut chain = Vec::new();
        if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
            let vocabulary = self.model.n_vocab();
            chain.push(LlamaSampler::penalties(
                vocabulary,
                -1,
                1.0,
                params.frequency_penalty,
                params.presence_penalty,
            ));
        }
        if params.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            chain.push(LlamaSampler::top_p(params.top_p, 1));
            chain.push(LlamaSampler::temp(params.temperature));
            chain.push(LlamaSampler::dist(params.seed));
        }
        LlamaSampler::chain_simple(chain)
    }

    /// Whether `grammar` parses as llama.cpp's GBNF.
    pub fn check_grammar(&self, grammar: &Grammar) -> Result<(), EngineError> {
        self.grammar_sampler(grammar).map(drop)
    }

    /// llama.cpp's grammar sampler for `grammar` (a lazy one waits for its
    /// trigger): an error if the GBNF does not parse (llama.cpp logs where).
    pub(super) fn grammar_sampler(&self, grammar: &Grammar) -> Result<LlamaSampler, EngineError> {
        let sampler = match grammar.trigger() {
            None => LlamaSampler::grammar(&self.model, grammar.gbnf(), "root"),
            Some(trigger) => LlamaSampler::grammar_lazy(&self.model, grammar.gbnf(), "root", [trigger], &[]),
        };
        sampler.map_err(|_| {
            EngineError::Input(
                "the grammar does not parse as llama.cpp's GBNF (each rule defined once as `name ::= ...`, every rule it names defined, no left recursion)".to_owned(),
            )
        })
    }
}

impl Decoder<'_> {
    /// Samples a sequence's next token from its logits at `index`.
    pub(super) fn decide(&mut self, sequence: &mut Sequence, index: i32) -> Progress {
        let vocabulary = self.model.model.vocab();
        let token = match sequence.grammar.as_mut() {
            Some(grammar) => {
                let logits = self.context.get_logits_ith(index);
                match constrained(logits, sequence.argmax, &mut sequence.sampler, grammar) {
                    Some(token) => token,
                    // No token of the vocabulary continues the grammar
                    // (a hand-written grammar can ask for that).
                    None => return stopped(sequence),
                }
            }
            None if sequence.argmax => first_argmax(self.context.get_logits_ith(index)),
            // Also records the token in the sampler (for the penalties).
            None => sequence.sampler.sample(&self.context, index),
        };
        if vocabulary.is_eog(token) {
            return stopped(sequence);
        }
        if let Some(grammar) = sequence.grammar.as_mut() {
            // It allowed the token a moment ago; a refusal now would be
            // llama.cpp's failure, and ends the completion where it is.
            if grammar.try_accept(token).is_err() {
                return stopped(sequence);
            }
        }
        if let Some(top) = sequence.top_logprobs {
            let logits = self.context.get_logits_ith(index);
            let piece = |id: LlamaToken| vocabulary.token_to_piece(id, false, None);
            sequence.logprobs.push(token_logprob(logits, token, top, piece));
        }
        sequence.tokens.push(token);
        sequence.utf8.extend(vocabulary.token_to_piece(token, false, None));
        let complete = complete_utf8(&mut sequence.utf8);
        let completion_tokens = sequence.completion_tokens();
        match sequence.text.push(&complete) {
            Scan::Stopped(text) => Progress::Finished { text, reason: FinishReason::Stop, completion_tokens },
            Scan::Continue(mut text) if completion_tokens >= sequence.max_tokens => {
                text.push_str(&String::from_utf8_lossy(&std::mem::take(&mut sequence.utf8)));
                text.push_str(&sequence.text.finish());
                Progress::Finished { text, reason: FinishReason::Length, completion_tokens }
            }
            Scan::Continue(text) => Progress::Text(text),
        }
    }
}

/// A sequence's end where it is, with the text it held back.
fn stopped(sequence: &mut Sequence) -> Progress {
    let text = sequence.text.finish();
    Progress::Finished { text, reason: FinishReason::Stop, completion_tokens: sequence.completion_tokens() }
}

/// The next token among those `grammar` allows (recorded in the `chain`
/// unless `argmax`; the caller records it in the grammar); `None` if it
/// allows none. The unconstrained
/// choice is tried first, as llama.cpp's own sampler does: checking one
/// token against the grammar costs far less than masking the vocabulary,
/// and the model mostly chooses an allowed token. An end-of-generation
/// token is never recorded in the grammar (llama.cpp aborts on one it
/// does not allow), and one is allowed only where the grammar is complete.
fn constrained(
    logits: &[f32],
    argmax: bool,
    chain: &mut LlamaSampler,
    grammar: &mut LlamaSampler,
) -> Option<LlamaToken> {
    let candidates = || {
        LlamaTokenDataArray::from_iter(
            logits
                .iter()
                .enumerate()
                .map(|(id, &logit)| LlamaTokenData::new(LlamaToken(id as i32), logit, 0.0)),
            false,
        )
    };
    let chosen = if argmax {
        first_argmax(logits)
    } else {
        let mut all = candidates();
        chain.apply(&mut all);
        all.selected_token()?
    };
    let logit = logits.get(chosen.0 as usize).copied().unwrap_or(f32::NEG_INFINITY);
    let mut single = LlamaTokenDataArray::new(vec![LlamaTokenData::new(chosen, logit, 0.0)], false);
    grammar.apply(&mut single);
    let token = if single.data.first().is_some_and(|data| data.logit().is_finite()) {
        chosen
    } else {
        let mut all = candidates();
        grammar.apply(&mut all);
        if !all.data.iter().any(|data| data.logit().is_finite()) {
            return None;
        }
        if argmax {
            let mut best = all.data.first()?;
            for data in &all.data {
                if data.logit() > best.logit() {
                    best = data;
                }
            }
            best.id()
        } else {
            chain.apply(&mut all);
            all.selected_token()?
        }
    };
    if !argmax {
        chain.accept(token);
    }
    Some(token)
}

/// `token`'s log probability under the softmax of `logits`, and the `top`
/// most likely tokens' (on a tie, the lower id first). The sum runs in f64
/// from the largest logit down, so a vocabulary of 50k terms loses nothing.
pub(super) fn token_logprob(
    logits: &[f32],
    token: LlamaToken,
    top: usize,
    piece: impl Fn(LlamaToken) -> Vec<u8>,
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&logit| f64::from(logit - max).exp()).sum();
    let log_total = f64::from(max) + sum.ln();
    let logprob = |id: usize| {
        let logit = logits.get(id).copied().unwrap_or(f32::NEG_INFINITY);
        (f64::from(logit) - log_total) as f32
    };
    // The `top` best ids so far, best first.
    let mut best: Vec<usize> = Vec::with_capacity(top + 1);
    for (id, &logit) in logits.iter().enumerate().take(if top == 0 { 0 } else { logits.len() }) {
        if best.len() == top && best.last().is_some_and(|&worst| logit <= logits[worst]) {
            continue;
        }
        let at = best.partition_point(|&other| logits[other] >= logit);
        best.insert(at, id);
        best.truncate(top);
    }
    TokenLogprob {
        bytes: piece(token),
        logprob: logprob(token.0 as usize),
        top: best
            .into_iter()
            .map(|id| Alternative { bytes: piece(LlamaToken(id as i32)), logprob: logprob(id) })
            .collect(),
    }
}

/// The token of the highest logit, the first one on a tie (as llama.cpp's
/// greedy sampler picks).
pub(super) fn first_argmax(logits: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (index, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = index;
        }
    }
    LlamaToken(best as i32)
}

/// Takes the longest valid UTF-8 prefix out of `bytes`, leaving a partial
/// character for the next token.
fn complete_utf8(bytes: &mut Vec<u8>) -> String {
    let valid = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(error) if error.error_len().is_none() => error.valid_up_to(),
        // Invalid bytes (not just incomplete): replace them rather than stall.
        Err(_) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            bytes.clear();
            return text;
        }
    };
    let rest = bytes.split_off(valid);
    String::from_utf8(std::mem::replace(bytes, rest)).unwrap_or_default()
}

enum Scan {
    /// Text safe to send now.
    Continue(String),
    /// A stop string was found; the text before it.
    Stopped(String),
}

/// Holds back the end of the text that could still become a stop string.
pub(super) struct StopScanner {
    stops: Vec<String>,
    pending: String,
}

impl StopScanner {
    pub(super) fn new(stops: Vec<String>) -> Self {
        Self { stops, pending: String::new() }
    }

    fn push(&mut self, piece: &str) -> Scan {
        self.pending.push_str(piece);
        let found = self.stops.iter().filter_map(|stop| self.pending.find(stop.as_str())).min();
        if let Some(at) = found {
            return Scan::Stopped(self.pending[..at].to_owned());
        }
        let keep =
            self.stops.iter().map(|stop| longest_suffix_prefix(&self.pending, stop)).max().unwrap_or(0);
        let cut = self.pending.len() - keep;
        let ready = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        Scan::Continue(ready)
    }

    pub(super) fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// The length of the longest end of `text` that is a start of `stop`, at a
/// character boundary.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&length| {
            text.is_char_boundary(text.len() - length) && stop.starts_with(&text[text.len() - length..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_held_back_across_pieces_and_cut() {
        let stops = vec!["END".to_owned()];
        let mut scanner = StopScanner::new(stops.clone());
        assert!(matches!(scanner.push("hello E"), Scan::Continue(text) if text == "hello "));
        assert!(matches!(scanner.push("N"), Scan::Continue(text) if text.is_empty()));
        assert!(matches!(scanner.push("Dgame"), Scan::Stopped(text) if text.is_empty()));
        let mut scanner = StopScanner::new(stops.clone());
        assert!(matches!(scanner.push("E"), Scan::Continue(text) if text.is_empty()));
        assert!(matches!(scanner.push("x"), Scan::Continue(text) if text == "Ex"));
        assert_eq!(scanner.finish(), "");
    }

    #[test]
    fn logprobs_are_the_log_softmax_of_the_logits_with_the_best_first() {
        let logits = [1.0_f32, 3.0, 2.0, 3.0];
        let piece = |id: LlamaToken| vec![b'a' + id.0 as u8];
        let total = (1.0_f64.exp() + 2.0 * 3.0_f64.exp() + 2.0_f64.exp()).ln();
        let chosen = token_logprob(&logits, LlamaToken(2), 3, piece);
        assert!((f64::from(chosen.logprob) - (2.0 - total)).abs() < 1e-6, "{chosen:?}");
        assert_eq!(chosen.bytes, b"c");
        let order: Vec<&[u8]> = chosen.top.iter().map(|alternative| alternative.bytes.as_slice()).collect();
        assert_eq!(order, [b"b", b"d", b"c"], "best first, the lower id first on a tie");
        assert!((f64::from(chosen.top[0].logprob) - (3.0 - total)).abs() < 1e-6);
        assert!(token_logprob(&logits, LlamaToken(0), 0, piece).top.is_empty());
    }

    #[test]
    fn partial_utf8_waits_for_the_rest_of_the_character() {
        let mut bytes = "é".as_bytes()[..1].to_vec();
        assert_eq!(complete_utf8(&mut bytes), "");
        bytes.extend(&"é".as_bytes()[1..]);
        assert_eq!(complete_utf8(&mut bytes), "é");
        assert!(bytes.is_empty());
    }
}
