//! The guard's stages of the pipeline: the input screen (the client's
//! cool-down, the 400 content_blocked that names the category and the
//! field, the log line of what was redacted or flagged: categories only),
//! and the output screen of a whole answer.

use blaze_actors::guard::Guard;

use super::origin::Origin;
use super::Pipeline;
use crate::error::ApiError;

/// OpenAI's finish reason for an answer its content filter stopped.
pub const CONTENT_FILTER: &str = "content_filter";

/// Screens the texts of a request bound for a model, redacting them in
/// place. `field` names the text at an index, for the 400.
#[tracing::instrument(target = "blaze::trace", name = "guard.input", level = "info", skip_all)]
pub fn screen_input<'a>(
    pipeline: &Pipeline,
    origin: &Origin,
    texts: impl IntoIterator<Item = &'a mut String>,
    field: impl Fn(usize) -> String,
) -> Result<(), ApiError> {
    let guard = &pipeline.guard;
    if !guard.enabled() || origin.screened {
        return Ok(());
    }
    if let Some(left) = guard.cooling_down(&origin.subject) {
        return Err(ApiError::guard_cool_down(left.as_secs().max(1)));
    }
    let request_id = origin.request_id.as_str();
    match guard.screen_input(&origin.subject, texts) {
        Ok(screening) => {
            if !screening.redacted.is_empty() || !screening.flagged.is_empty() {
                tracing::info!(
                    request_id,
                    redacted = screening.redacted.join(","),
                    flagged = screening.flagged.join(","),
                    "guard: input screened"
                );
            }
            Ok(())
        }
        Err(blocked) => {
            tracing::warn!(request_id, category = blocked.category, "guard: input blocked");
            Err(ApiError::content_blocked(&blocked.category, &field(blocked.index)))
        }
    }
}

/// A warming request is screened as a client's would be (no client score),
/// so that its cache key is the one a client's redacted request computes.
pub fn screen_warm<'a>(
    guard: &Guard,
    texts: impl IntoIterator<Item = &'a mut String>,
    field: &str,
) -> Result<(), ApiError> {
    guard
        .screen_input("warm", texts)
        .map(drop)
        .map_err(|blocked| ApiError::content_blocked(&blocked.category, field))
}

/// A whole answer's text as the client may see it: `None` when the output
/// screen blocks it. The cache keeps answers unscreened, so a change of the
/// patterns applies to them too.
#[tracing::instrument(target = "blaze::trace", name = "guard.output", level = "info", skip_all)]
pub fn screen_output(guard: &Guard, mut text: String) -> Option<String> {
    match guard.screen_output(&mut text) {
        Ok(_) => Some(text),
        Err(_) => None,
    }
}
