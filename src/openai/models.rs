//! The catalog's models as the OpenAI endpoints name them: finding the
//! model a request asks for (loading it again when it was unloaded for
//! being idle), and the `/v1/models` list with each model's state.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::web::Bytes;
use blaze_actors::router::{ModelHandle, ModelKind, ModelState, ServedModel, Unavailable, Unloader};

use super::response::{unix_seconds, Model, ModelDetails, ModelList};
use super::Pipeline;
use crate::error::ApiError;

/// The served model `id`: 404 when the catalog has no such model, 503
/// while it loads, after its load failed, or after an admin unloaded it.
pub async fn find_model(pipeline: &Pipeline, id: &str) -> Result<Arc<ServedModel>, ApiError> {
    find_model_waited(pipeline, id).await.map(|(model, _)| model)
}

/// As [`find_model`], with how long the request waited for the model to
/// load again (its time to first token counts it).
pub async fn find_model_waited(
    pipeline: &Pipeline,
    id: &str,
) -> Result<(Arc<ServedModel>, Option<Duration>), ApiError> {
    match pipeline.models.serving(id).await {
        Ok(serving) => {
            if let Some(waited) = serving.waited {
                metrics::histogram!("blaze_model_load_wait_seconds", "model" => id.to_owned())
                    .record(waited.as_secs_f64());
            }
            Ok((serving.model, serving.waited))
        }
        Err(Unavailable::Unknown) => Err(ApiError::model_not_found(id)),
        Err(Unavailable::Loading) => Err(ApiError::model_loading(id)),
        Err(Unavailable::Failed(_)) => Err(ApiError::model_load_failed(id)),
        Err(Unavailable::Unloaded) => Err(ApiError::model_unloaded(id)),
    }
}

fn kind_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Chat => "chat",
        ModelKind::Embedding => "embedding",
    }
}

/// The details of a served model: its shape and the memory it holds.
fn served_details(model: &ServedModel) -> ModelDetails {
    let mut details = ModelDetails::new(kind_name(model.kind), "ready");
    details.memory_bytes = model.handle.memory_bytes();
    match &model.handle {
        ModelHandle::Chat(pool) => {
            let engine = pool.model();
            details.context_length = Some(engine.context_length());
            details.quantization = engine.quantization();
            details.parameters = Some(engine.parameters());
            details.weights_bytes = Some(engine.weights_bytes());
        }
        ModelHandle::Embedding(pool) => {
            details.dimensions = Some(pool.tokenizer().dimensions());
            details.max_input_tokens = Some(pool.tokenizer().max_tokens());
        }
    }
    details
}

/// Unix seconds when this process started: the `created` of the models
/// it does not serve now.
fn process_started() -> u64 {
    static STARTED: OnceLock<u64> = OnceLock::new();
    *STARTED.get_or_init(unix_seconds)
}

/// A catalog model as `/v1/models` shows it.
fn model_object<'a>(
    pipeline: &Pipeline,
    id: &'a str,
    state: &ModelState,
    served: Option<&ServedModel>,
) -> Model<'a> {
    let kind = pipeline.models.spec(id).map_or("unknown", |spec| kind_name(spec.kind));
    let (created, blaze) = match (served, state) {
        (Some(model), _) => (model.created, served_details(model)),
        (None, ModelState::Unloaded(by)) => {
            let mut details = ModelDetails::new(kind, "unloaded");
            details.unloaded_by = Some(match by {
                Unloader::Admin => "admin",
                Unloader::Idle => "idle",
            });
            (process_started(), details)
        }
        (None, ModelState::Failed(_)) => (process_started(), ModelDetails::new(kind, "failed")),
        (None, _) => (process_started(), ModelDetails::new(kind, "loading")),
    };
    Model { id, object: "model", created, owned_by: "blaze", blaze }
}

/// `GET /v1/models/{id}`: any catalog model, in whatever state (serialized).
pub fn describe_model(pipeline: &Pipeline, id: &str) -> Result<Bytes, ApiError> {
    if let Some(object) = routed_model(pipeline, id) {
        return Ok(Bytes::from(serde_json::to_vec(&object).unwrap_or_default()));
    }
    let registry = pipeline.models.registry();
    let state = registry.state(id);
    if state == ModelState::Unknown {
        return Err(ApiError::model_not_found(id));
    }
    let served = registry.get(id);
    let object = model_object(pipeline, id, &state, served.as_deref());
    Ok(Bytes::from(serde_json::to_vec(&object).unwrap_or_default()))
}

/// A gateway route (or an upstream asked for by its id) as `/v1/models`
/// shows it: kind `route` or `upstream`, ready while any target is in.
fn routed_model<'a>(pipeline: &Pipeline, id: &'a str) -> Option<Model<'a>> {
    let route = pipeline.gateway.route(id)?;
    let upstream = route.targets.len() == 1 && route.targets[0].0.id == id;
    let kind = if upstream { "upstream" } else { "route" };
    let any_in = route
        .targets
        .iter()
        .map(|(target, _)| target)
        .chain(&route.fallbacks)
        .any(|target| target.health.is_in());
    let details = ModelDetails::new(kind, if any_in { "ready" } else { "unavailable" });
    Some(Model { id, object: "model", created: process_started(), owned_by: "blaze", blaze: details })
}

/// What a serialized model list showed: the registry's generation, the
/// memory its models held, and its routes' states.
type Shown = (u64, u64, u64);

thread_local! {
    /// This worker's serialized model list, with the registry generation
    /// and the memory it shows: SDKs ask for the list often, and it
    /// changes only when a model's state or memory does.
    static MODEL_LIST: RefCell<Option<(Shown, Bytes)>> = const { RefCell::new(None) };
}

/// The catalog's models and their states, as `GET /v1/models` lists them
/// (serialized).
pub fn model_list(pipeline: &Pipeline) -> Bytes {
    let (generation, models) = pipeline.models.registry().catalog_with_generation();
    let memory: u64 = models
        .iter()
        .filter_map(|model| model.served.as_ref())
        .map(|model| model.handle.memory_bytes())
        .sum();
    // Routes change state without the registry: their targets' health.
    let routes_ready = pipeline
        .gateway
        .route_ids()
        .into_iter()
        .map(|id| routed_model(pipeline, id).is_some_and(|model| model.blaze.state == "ready"))
        .fold(0u64, |hash, ready| hash.wrapping_mul(31).wrapping_add(u64::from(ready) + 1));
    let shows = (generation, memory, routes_ready);
    MODEL_LIST.with_borrow_mut(|cached| match cached {
        Some((shown, body)) if *shown == shows => body.clone(),
        _ => {
            let data = models
                .iter()
                .map(|model| model_object(pipeline, &model.id, &model.state, model.served.as_deref()))
                .chain(pipeline.gateway.route_ids().into_iter().filter_map(|id| routed_model(pipeline, id)))
                .collect();
            let body =
                Bytes::from(serde_json::to_vec(&ModelList { object: "list", data }).unwrap_or_default());
            *cached = Some((shows, body.clone()));
            body
        }
    })
}
