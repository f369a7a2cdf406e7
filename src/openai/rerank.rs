//! `POST /v1/rerank` (Cohere's and Jina's shape, as vLLM and TEI serve it)
//! and `POST /v1/score` (vLLM's), read top to bottom: the texts checked
//! and screened, tokenized, the request admitted with its exact token
//! count, each text's vector looked up in the cache or computed on an
//! embedding model's pool (the same cache entries `/v1/embeddings` makes),
//! and each pair scored by the cosine similarity of its two vectors.
//!
//! These run on an embedding model (a bi-encoder), not on a cross-encoder:
//! no package on the Python index ships a small cross-encoder's weights
//! (README, "Models"). A cosine is in [-1, 1]; it orders documents as the
//! model's embeddings relate them, which is what a retrieval pipeline
//! built on the same model already ranks by.

use std::fmt;
use std::sync::Arc;

use blaze_actors::inference::EmbeddingPool;
use blaze_actors::router::ModelHandle;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::admit::{Charge, Settlement};
use super::answer::{Answer, Body};
use super::caching::Caching;
use super::embeddings::{answer, tokenize, truncation, TextNames};
use super::origin::Origin;
use super::request::{parse, EmbeddingInput, TruncationDirection};
use super::response::unix_seconds;
use super::screen::screen_input;
use super::validate::{check_count, check_text, invalid};
use super::{find_model, Pipeline};
use crate::error::{ApiError, ErrorCode};

/// `POST /v1/rerank`.
#[derive(Debug, Deserialize)]
pub struct RerankRequest {
    pub model: String,
    pub query: String,
    pub documents: Vec<Document>,
    /// The best this many (all when unset or 0, as vLLM reads 0).
    #[serde(default)]
    pub top_n: Option<usize>,
    /// Each result with its document's text (default true, as Jina and
    /// vLLM answer).
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// As `/v1/embeddings`: a text longer than the model takes is cut.
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: Option<TruncationDirection>,
    #[allow(dead_code)]
    user: Option<String>,
}

/// A document: a string, or an object with a `text` (Jina's shape; its
/// other fields are skipped). Any other shape is `Invalid`, refused by
/// name.
#[derive(Debug)]
pub enum Document {
    Text(String),
    Invalid,
}

/// `POST /v1/score`: `text_1` against each of `text_2` (one to one, one to
/// many, or pairwise between two lists of the same length).
#[derive(Debug, Deserialize)]
pub struct ScoreRequest {
    pub model: String,
    pub text_1: EmbeddingInput,
    pub text_2: EmbeddingInput,
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: Option<TruncationDirection>,
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Serialize)]
struct Reranked<'a> {
    id: String,
    model: &'a str,
    results: Vec<RerankResult>,
    usage: RankUsage,
}

#[derive(Serialize)]
struct RerankResult {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<DocumentText>,
}

#[derive(Serialize)]
struct DocumentText {
    text: String,
}

#[derive(Serialize)]
struct RankUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
struct Scores<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    data: Vec<Score>,
    usage: RankUsage,
}

#[derive(Serialize)]
struct Score {
    index: usize,
    object: &'static str,
    score: f32,
}

/// A rerank body, from either transport.
pub async fn rerank_from_bytes(
    pipeline: &Pipeline,
    origin: &Origin,
    bytes: &[u8],
) -> Result<Answer, ApiError> {
    rerank(pipeline, origin, parse(bytes)?).await
}

/// A score body, from either transport.
pub async fn score_from_bytes(
    pipeline: &Pipeline,
    origin: &Origin,
    bytes: &[u8],
) -> Result<Answer, ApiError> {
    score(pipeline, origin, parse(bytes)?).await
}

/// `POST /v1/rerank`.
pub async fn rerank(
    pipeline: &Pipeline,
    origin: &Origin,
    request: RerankRequest,
) -> Result<Answer, ApiError> {
    let limits = &pipeline.validation;
    check_text(&request.query, || "query".to_owned(), limits)?;
    if request.documents.is_empty() {
        return Err(invalid(
            ErrorCode::InvalidInput,
            "documents",
            "`documents` must not be empty".to_owned(),
        ));
    }
    check_count(request.documents.len(), limits.max_embedding_inputs, "documents")?;
    let mut texts = Vec::with_capacity(request.documents.len() + 1);
    texts.push(request.query);
    for (index, document) in request.documents.into_iter().enumerate() {
        let Document::Text(text) = document else {
            let message = format!("documents[{index}] must be a string or an object with a string `text`");
            return Err(invalid(ErrorCode::InvalidInput, "documents", message));
        };
        check_text(&text, || format!("documents[{index}]"), limits)?;
        texts.push(text);
    }
    let pool = embedding_pool(pipeline, &request.model).await?;
    origin.meter.model(&request.model);
    screen_input(pipeline, origin, texts.iter_mut(), rerank_name)?;
    let truncation = truncation(request.truncate, request.truncation_direction, &pool);
    let return_documents = request.return_documents.unwrap_or(true);
    let documents = return_documents.then(|| texts[1..].to_vec());
    let tokens = tokenize(&pool, EmbeddingInput::Texts(texts), truncation, Arc::new(rerank_name)).await?;
    let (vectors, lookup, prompt_tokens) = vectors(pipeline, origin, &pool, &request.model, tokens).await?;
    let (query, documents_vectors) = vectors.split_first().ok_or_else(no_vectors)?;
    let mut results: Vec<RerankResult> = documents_vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| RerankResult { index, relevance_score: cosine(query, vector), document: None })
        .collect();
    // Best first; equal scores keep the documents' order.
    results.sort_by(|a, b| b.relevance_score.total_cmp(&a.relevance_score).then(a.index.cmp(&b.index)));
    if let Some(top_n) = request.top_n.filter(|&top_n| top_n > 0) {
        results.truncate(top_n);
    }
    if let Some(mut documents) = documents {
        for result in &mut results {
            result.document = Some(DocumentText { text: std::mem::take(&mut documents[result.index]) });
        }
    }
    let body = Reranked {
        id: format!("rerank-{}", origin.request_id.as_str()),
        model: &request.model,
        results,
        usage: RankUsage { prompt_tokens, total_tokens: prompt_tokens },
    };
    json_answer(&body, lookup)
}

/// `POST /v1/score`.
pub async fn score(pipeline: &Pipeline, origin: &Origin, request: ScoreRequest) -> Result<Answer, ApiError> {
    let limits = &pipeline.validation;
    let first = score_texts(request.text_1, "text_1", limits)?;
    let second = score_texts(request.text_2, "text_2", limits)?;
    let pairs = match (first.len(), second.len()) {
        (1, count) => count,
        (count, other) if count == other => count,
        (count, other) => {
            let message = format!(
                "`text_1` has {count} texts and `text_2` {other}: give one text_1 for any number of \
                 text_2, or two lists of the same length"
            );
            return Err(invalid(ErrorCode::InvalidInput, "text_2", message));
        }
    };
    let pool = embedding_pool(pipeline, &request.model).await?;
    origin.meter.model(&request.model);
    let split = first.len();
    let mut texts = first;
    texts.extend(second);
    let names: TextNames = Arc::new(move |index| score_name(split, index));
    screen_input(pipeline, origin, texts.iter_mut(), |index| names(index))?;
    let truncation = truncation(request.truncate, request.truncation_direction, &pool);
    let tokens = tokenize(&pool, EmbeddingInput::Texts(texts), truncation, names).await?;
    let (vectors, lookup, prompt_tokens) = vectors(pipeline, origin, &pool, &request.model, tokens).await?;
    let (left, right) = vectors.split_at(split);
    let data = (0..pairs)
        .map(|index| Score {
            index,
            object: "score",
            score: cosine(&left[if split == 1 { 0 } else { index }], &right[index]),
        })
        .collect();
    let body = Scores {
        id: format!("score-{}", origin.request_id.as_str()),
        object: "list",
        created: unix_seconds(),
        model: &request.model,
        data,
        usage: RankUsage { prompt_tokens, total_tokens: prompt_tokens },
    };
    json_answer(&body, lookup)
}

/// The texts of `text_1` or `text_2`: a string or a non-empty array of
/// strings, each within the limits.
fn score_texts(
    input: EmbeddingInput,
    field: &str,
    limits: &crate::settings::ValidationSettings,
) -> Result<Vec<String>, ApiError> {
    let texts = match input {
        EmbeddingInput::Text(text) => vec![text],
        EmbeddingInput::Texts(texts) if !texts.is_empty() => texts,
        _ => {
            let message = format!("`{field}` must be a string or a non-empty array of strings");
            return Err(invalid(ErrorCode::InvalidInput, field, message));
        }
    };
    check_count(texts.len(), limits.max_embedding_inputs, field)?;
    for (index, text) in texts.iter().enumerate() {
        check_text(text, || format!("{field}[{index}]"), limits)?;
    }
    Ok(texts)
}

fn rerank_name(index: usize) -> String {
    match index {
        0 => "query".to_owned(),
        index => format!("documents[{}]", index - 1),
    }
}

/// The name of the text at `index` of text_1's `split` texts followed by
/// text_2's.
fn score_name(split: usize, index: usize) -> String {
    if index < split {
        format!("text_1[{index}]")
    } else {
        format!("text_2[{}]", index - split)
    }
}

/// The embedding model `id`'s pool, or the 400 that says why not.
async fn embedding_pool(pipeline: &Pipeline, id: &str) -> Result<EmbeddingPool, ApiError> {
    let model = find_model(pipeline, id).await?;
    match &model.handle {
        ModelHandle::Embedding(pool) => Ok(pool.clone()),
        ModelHandle::Chat(_) => {
            let message = format!("{id} is a chat model; rerank and score take an embedding model");
            Err(ApiError::bad_request(ErrorCode::InvalidModel, message).with_param("model"))
        }
    }
}

/// Every text's vector, after the request is admitted with their tokens;
/// with what the cache did and the tokens embedded.
async fn vectors(
    pipeline: &Pipeline,
    origin: &Origin,
    pool: &EmbeddingPool,
    model: &str,
    tokens: Vec<Vec<u32>>,
) -> Result<(Vec<Vec<f32>>, blaze_actors::cache::Lookup, usize), ApiError> {
    let prompt_tokens = tokens.iter().map(Vec::len).sum();
    let charge = Charge { model, prompt_tokens: prompt_tokens as u64, completion_tokens: 0 };
    let _settled =
        Settlement::new(origin.gate.admit_charge(charge).await?, prompt_tokens, model, &origin.meter);
    let caching = Caching::of(pipeline, origin.cache_allowed, &origin.principal);
    let (vectors, lookup, _) = tokio::select! {
        answer = answer(pool, model, caching.as_ref(), tokens) => answer?,
        () = origin.hangup.wait() => return Err(ApiError::client_closed()),
    };
    Ok((vectors, lookup, prompt_tokens))
}

fn no_vectors() -> ApiError {
    ApiError::internal_failure("rerank", &"the model returned no vectors")
}

/// The cosine similarity of two vectors (0 when either is all zeros).
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut norm_a, mut norm_b) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        norm_a += x * x;
        norm_b += y * y;
    }
    let norms = (norm_a * norm_b).sqrt();
    if norms == 0.0 {
        0.0
    } else {
        (dot / norms).clamp(-1.0, 1.0) as f32
    }
}

fn json_answer(body: &impl Serialize, lookup: blaze_actors::cache::Lookup) -> Result<Answer, ApiError> {
    let body = serde_json::to_vec(body).map_err(|error| ApiError::internal_failure("answer", &error))?;
    Ok(Answer::cached(Body::Json(body.into()), lookup, None))
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string or an object with a text")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Document, E> {
        Ok(Document::Text(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Document, E> {
        Ok(Document::Text(text))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
        let mut document = Document::Invalid;
        while let Some(key) = map.next_key::<String>()? {
            if key == "text" {
                document = match map.next_value::<Option<String>>() {
                    Ok(Some(text)) => Document::Text(text),
                    _ => return Ok(Document::Invalid),
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(document)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Document, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Document::Invalid)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Document, E> {
        Ok(Document::Invalid)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Document, E> {
        Ok(Document::Invalid)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Document, E> {
        Ok(Document::Invalid)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Document, E> {
        Ok(Document::Invalid)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Document, E> {
        Ok(Document::Invalid)
    }
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DocumentVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_strings_or_objects_with_a_text() {
        let documents = |json: &str| {
            serde_json::from_str::<RerankRequest>(&format!(
                r#"{{"model":"m","query":"q","documents":{json}}}"#
            ))
            .unwrap()
            .documents
        };
        let read = documents(
            r#"["a", {"text": "b", "title": {"x": [1]}}, 5, {"title": "c"}, {"text": 3}, null, ["d"]]"#,
        );
        assert!(matches!(&read[0], Document::Text(text) if text == "a"));
        assert!(matches!(&read[1], Document::Text(text) if text == "b"));
        for invalid in &read[2..] {
            assert!(matches!(invalid, Document::Invalid), "{invalid:?}");
        }
    }

    #[test]
    fn cosine_is_the_normalized_dot_product() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-6);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
