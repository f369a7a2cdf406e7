//! The served models as the OpenAI endpoints name them: finding the model
//! a request asks for, and the `/v1/models` list.

use std::cell::RefCell;
use std::sync::Arc;

use actix_web::web::Bytes;
use blaze_actors::router::{ModelHandle, ModelState, ServedModel};

use super::response::{Model, ModelDetails, ModelList};
use super::Pipeline;
use crate::error::ApiError;

/// The served model `id`: 404 when the catalog has no such model, 503 while
/// it is still loading or its load failed.
pub fn find_model(pipeline: &Pipeline, id: &str) -> Result<Arc<ServedModel>, ApiError> {
    match pipeline.models.get(id) {
        Some(model) => Ok(model),
        None => match pipeline.models.state(id) {
            ModelState::Unknown => Err(ApiError::model_not_found(id)),
            _ => Err(ApiError::model_not_ready(id)),
        },
    }
}

pub fn model_object(model: &ServedModel) -> Model<'_> {
    let blaze = match &model.handle {
        ModelHandle::Chat(pool) => {
            let engine = pool.model();
            ModelDetails {
                kind: "chat",
                state: "ready",
                context_length: Some(engine.context_length()),
                dimensions: None,
                max_input_tokens: None,
                quantization: engine.quantization(),
                parameters: Some(engine.parameters()),
                weights_bytes: Some(engine.weights_bytes()),
            }
        }
        ModelHandle::Embedding(pool) => ModelDetails {
            kind: "embedding",
            state: "ready",
            context_length: None,
            dimensions: Some(pool.tokenizer().dimensions()),
            max_input_tokens: Some(pool.tokenizer().max_tokens()),
            quantization: None,
            parameters: None,
            weights_bytes: None,
        },
    };
    Model { id: &model.id, object: "model", created: model.created, owned_by: "blaze", blaze }
}

thread_local! {
    /// This worker's serialized model list and the registry generation it
    /// shows: SDKs ask for the list often, and it changes only when a
    /// model is published.
    static MODEL_LIST: RefCell<Option<(u64, Bytes)>> = const { RefCell::new(None) };
}

/// The served models, as `GET /v1/models` lists them (serialized).
pub fn model_list(pipeline: &Pipeline) -> Bytes {
    let generation = pipeline.models.generation();
    MODEL_LIST.with_borrow_mut(|cached| match cached {
        Some((shown, body)) if *shown == generation => body.clone(),
        _ => {
            let (generation, models) = pipeline.models.all_with_generation();
            let list =
                ModelList { object: "list", data: models.iter().map(|model| model_object(model)).collect() };
            let body = Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
            *cached = Some((generation, body.clone()));
            body
        }
    })
}
