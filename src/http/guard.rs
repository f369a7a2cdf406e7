//! The Guard on the HTTP surface: whose request it is (for the client
//! score), the cool-down refusal, the 400 content_blocked that names the
//! category and the field, and the log line of what was redacted or
//! flagged (categories only).

use actix_web::{HttpMessage, HttpRequest};
use blaze_actors::auth::Principal;

use super::auth::subject_of;
use super::observe::RequestId;
use super::AppState;
use crate::error::ApiError;

/// Screens the texts of a request bound for a model, redacting them in
/// place. `field` names the text at an index, for the 400.
pub fn screen_input<'a>(
    state: &AppState,
    request: &HttpRequest,
    texts: impl IntoIterator<Item = &'a mut String>,
    field: impl Fn(usize) -> String,
) -> Result<(), ApiError> {
    let guard = &state.guard;
    if !guard.enabled() {
        return Ok(());
    }
    let subject = subject_of(request.extensions().get::<Principal>(), request).unwrap_or_default();
    if let Some(left) = guard.cooling_down(&subject) {
        return Err(ApiError::guard_cool_down(left.as_secs().max(1)));
    }
    let request_id =
        || request.extensions().get::<RequestId>().map(|id| id.as_str().to_owned()).unwrap_or_default();
    match guard.screen_input(&subject, texts) {
        Ok(screening) => {
            if !screening.redacted.is_empty() || !screening.flagged.is_empty() {
                tracing::info!(
                    request_id = request_id(),
                    redacted = screening.redacted.join(","),
                    flagged = screening.flagged.join(","),
                    "guard: input screened"
                );
            }
            Ok(())
        }
        Err(blocked) => {
            tracing::warn!(request_id = request_id(), category = blocked.category, "guard: input blocked");
            Err(ApiError::content_blocked(&blocked.category, &field(blocked.index)))
        }
    }
}
