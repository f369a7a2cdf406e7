//! The usage ledger's view of one request to a model endpoint: a [`Meter`]
//! the transport starts with the caller and the route, which the pipeline
//! tells the model, the tokens, the cache tier and the first token's time
//! as it learns them, and the transport the status. The record goes to the
//! ledger when the last holder lets go: the response for a JSON answer, the
//! stream for a streamed one, so a stream's row has its whole duration.
//! The access log line takes the model and the tokens from it too
//! ([`Noted`]), ledger or not.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use blaze_actors::auth::{now_ms, Principal};
use blaze_actors::usage::{GovernanceStore, Ledger, Quotas, UsageRecord};

use crate::telemetry;

/// What the pipeline records usage and quotas with.
pub struct Governance {
    /// `None` when `usage.enabled` is false.
    pub ledger: Option<Arc<Ledger>>,
    pub quotas: Arc<Quotas>,
    pub store: Arc<dyn GovernanceStore>,
    pub currency: String,
}

/// One request's record in the making, and its span in the trace (the
/// GenAI attributes are set on it as they are learnt); cheap to clone.
#[derive(Clone)]
pub struct Meter {
    draft: Option<Rc<Draft>>,
    span: tracing::Span,
    noted: Option<Rc<Noted>>,
}

impl Default for Meter {
    fn default() -> Self {
        Self { draft: None, span: tracing::Span::none(), noted: None }
    }
}

/// The model and the tokens of a request, for its access log line. The
/// line is written when the response starts: a stream's tokens are
/// known only at its end, so a request whose line went out without them
/// gets a `usage` line of its own (target `blaze::access`) when the last
/// holder lets go; so does each WebSocket generation, which has no
/// access line.
pub struct Noted {
    request_id: String,
    model: RefCell<String>,
    tokens: Cell<Option<(u64, u64)>>,
    logged: Cell<bool>,
}

impl Noted {
    pub fn model(&self) -> Option<String> {
        let model = self.model.borrow();
        (!model.is_empty()).then(|| model.clone())
    }

    /// (input, output) tokens, once known.
    pub fn tokens(&self) -> Option<(u64, u64)> {
        self.tokens.get()
    }

    /// The access line said the tokens (or nothing is left to say).
    pub fn logged(&self) {
        self.logged.set(true);
    }
}

impl Drop for Noted {
    fn drop(&mut self) {
        let Some((input_tokens, output_tokens)) = self.tokens.get().filter(|_| !self.logged.get()) else {
            return;
        };
        let model = self.model.get_mut();
        tracing::info!(target: "blaze::access", request_id = self.request_id.as_str(), model = model.as_str(), input_tokens, output_tokens, "usage");
    }
}

pub struct Draft {
    ledger: Arc<Ledger>,
    quotas: Arc<Quotas>,
    started: Instant,
    record: RefCell<UsageRecord>,
    first_token: RefCell<Option<Instant>>,
}

impl Meter {
    /// A meter for `principal`'s request on `endpoint`; a meter that
    /// records nothing when the ledger is off.
    pub fn start(governance: &Governance, principal: &Principal, request_id: &str, endpoint: &str) -> Self {
        let span = if telemetry::enabled() { tracing::Span::current() } else { tracing::Span::none() };
        telemetry::attribute(&span, "gen_ai.operation.name", operation(endpoint));
        let noted = Some(Rc::new(Noted {
            request_id: request_id.to_owned(),
            model: RefCell::default(),
            tokens: Cell::new(None),
            logged: Cell::new(false),
        }));
        let Some(ledger) = &governance.ledger else { return Self { draft: None, span, noted } };
        let record = UsageRecord {
            at: now_ms(),
            request_id: request_id.to_owned(),
            key_id: principal.key_id().map(str::to_owned),
            key_lineage: principal.lineage.clone(),
            user_id: principal.user_id.clone(),
            team: principal.team.clone(),
            model: String::new(),
            endpoint: endpoint.to_owned(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: 0,
            cache: "none".to_owned(),
            // Unless told otherwise: the request ended with no answer sent
            // (its client went away, or its time ran out).
            status: 499,
            latency_ms: 0,
            first_token_ms: None,
            cost_micros: 0,
        };
        let draft = Rc::new(Draft {
            ledger: ledger.clone(),
            quotas: governance.quotas.clone(),
            started: Instant::now(),
            record: RefCell::new(record),
            first_token: RefCell::new(None),
        });
        Self { draft: Some(draft), span, noted }
    }

    /// What the access log line says of this request.
    pub fn noted(&self) -> Option<Rc<Noted>> {
        self.noted.clone()
    }

    /// The request's span (disabled with traces off).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn with(&self, change: impl FnOnce(&mut UsageRecord)) {
        if let Some(draft) = &self.draft {
            change(&mut draft.record.borrow_mut());
        }
    }

    pub fn model(&self, model: &str) {
        telemetry::attribute(&self.span, "gen_ai.request.model", model.to_owned());
        if let Some(noted) = &self.noted {
            let mut noted = noted.model.borrow_mut();
            if *noted != model {
                model.clone_into(&mut noted);
            }
        }
        self.with(|record| {
            if record.model != model {
                record.model = model.to_owned();
            }
        });
    }

    pub fn tokens(&self, prompt: u64, completion: u64, cached: u64) {
        telemetry::attribute(&self.span, "gen_ai.usage.input_tokens", prompt as i64);
        telemetry::attribute(&self.span, "gen_ai.usage.output_tokens", completion as i64);
        if let Some(noted) = &self.noted {
            noted.tokens.set(Some((prompt, completion)));
        }
        self.with(|record| {
            record.prompt_tokens = prompt;
            record.completion_tokens = completion;
            record.cached_tokens = cached;
        });
    }

    /// The cache's verdict, as the `x-blaze-cache` header says it.
    pub fn cache(&self, verdict: &str) {
        telemetry::attribute(&self.span, "blaze.cache", verdict.to_owned());
        self.with(|record| {
            let tier = verdict.strip_prefix("hit-").unwrap_or(verdict);
            if record.cache != tier {
                record.cache = tier.to_owned();
            }
        });
    }

    pub fn status(&self, status: u16) {
        self.with(|record| record.status = status);
    }

    /// The first token went out (once; later calls change nothing).
    pub fn first_token(&self) {
        if let Some(draft) = &self.draft {
            draft.first_token.borrow_mut().get_or_insert_with(Instant::now);
        }
    }
}

/// `gen_ai.operation.name` of a model route.
fn operation(endpoint: &str) -> &'static str {
    match endpoint {
        "/v1/chat/completions" => "chat",
        "/v1/completions" => "text_completion",
        "/v1/embeddings" => "embeddings",
        "/v1/responses" => "chat",
        _ => "other",
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        let mut record = std::mem::take(self.record.get_mut());
        record.latency_ms = self.started.elapsed().as_millis() as u64;
        record.first_token_ms =
            self.first_token.get_mut().map(|at| at.duration_since(self.started).as_millis() as u64);
        record.cost_micros =
            self.quotas.cost_micros(&record.model, record.prompt_tokens, record.completion_tokens);
        self.ledger.record(record);
    }
}
