//! The Guard on the HTTP surface: whose request it is (for the client
//! score), the cool-down refusal, the 400 content_blocked that names the
//! category and the field, and the log line of what was redacted or
//! flagged (categories only).

use super::exchange::Origin;
use super::AppState;
use crate::error::ApiError;

/// Screens the texts of a request bound for a model, redacting them in
/// place. `field` names the text at an index, for the 400.
pub fn screen_input<'a>(
    state: &AppState,
    origin: &Origin,
    texts: impl IntoIterator<Item = &'a mut String>,
    field: impl Fn(usize) -> String,
) -> Result<(), ApiError> {
    let guard = &state.guard;
    if !guard.enabled() {
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
