//! `POST /v1/rerank` and `POST /v1/score` over real HTTP and the WebSocket
//! on the real embedding model: scores are the cosines of the vectors
//! `/v1/embeddings` gives, ordered best first; the two endpoints agree;
//! vectors come from the same cache entries; bad bodies, models,
//! credentials and scopes are refused with the field at fault.

use crate::common::websocket::Socket;
use crate::common::{
    anonymous_client, client, client_with_key, expect_error, new_user_key_with, Server, ADMIN_KEY,
};
use serde_json::{json, Value};

const EMBEDDING: &str = "all-minilm-l6-v2";
const CHAT: &str = "smollm2-135m-instruct";
const QUERY: &str = "What is the capital of France?";
const DOCUMENTS: [&str; 4] = [
    "The cat sat on the mat all afternoon.",
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "Bread is made from flour, water and yeast.",
];

async fn post(server: &Server, path: &str, body: &Value) -> reqwest::Response {
    client().post(server.url(path)).json(body).send().await.unwrap()
}

async fn json_of(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn vector(server: &Server, text: &str) -> (Vec<f64>, u64) {
    let body = json!({"model": EMBEDDING, "input": text});
    let answer = json_of(post(server, "/v1/embeddings", &body).await).await;
    let vector =
        answer["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    (vector, answer["usage"]["prompt_tokens"].as_u64().unwrap())
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[tokio::test]
async fn rerank_orders_documents_by_the_cosine_of_their_embeddings() {
    let server = Server::start(&[], &[]).await;
    let (query, mut tokens) = vector(&server, QUERY).await;
    let mut expected = Vec::new();
    for (index, document) in DOCUMENTS.iter().enumerate() {
        let (vector, count) = vector(&server, document).await;
        tokens += count;
        expected.push((index, cosine(&query, &vector)));
    }
    expected.sort_by(|a, b| b.1.total_cmp(&a.1));
    assert_eq!(expected[0].0, 1, "the model ranks the Paris sentence first: {expected:?}");

    let body = json!({"model": EMBEDDING, "query": QUERY, "documents": DOCUMENTS});
    let response = post(&server, "/v1/rerank", &body).await;
    // Every vector was made by /v1/embeddings above: all from the cache.
    assert_eq!(response.headers()["x-blaze-cache"], "hit-memory");
    let answer = json_of(response).await;
    assert_eq!(answer["model"], EMBEDDING);
    assert!(answer["id"].as_str().unwrap().starts_with("rerank-"), "{answer}");
    assert_eq!(answer["usage"]["prompt_tokens"], tokens);
    assert_eq!(answer["usage"]["total_tokens"], tokens);
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), DOCUMENTS.len());
    for (result, (index, score)) in results.iter().zip(&expected) {
        assert_eq!(result["index"], *index as u64, "{answer}");
        let relevance = result["relevance_score"].as_f64().unwrap();
        assert!((relevance - score).abs() < 1e-5, "{relevance} against {score}");
        assert_eq!(result["document"]["text"], DOCUMENTS[*index]);
    }

    // top_n, no documents, and documents as Jina's objects.
    let objects: Vec<Value> = DOCUMENTS.iter().map(|text| json!({"text": text, "title": "t"})).collect();
    let body = json!({"model": EMBEDDING, "query": QUERY, "documents": objects, "top_n": 2,
        "return_documents": false});
    let answer = json_of(post(&server, "/v1/rerank", &body).await).await;
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["index"], 1);
    assert!(results[0].get("document").is_none(), "{answer}");

    // /v1/score: the query against each document gives the same scores,
    // in the documents' order.
    let body = json!({"model": EMBEDDING, "text_1": QUERY, "text_2": DOCUMENTS});
    let answer = json_of(post(&server, "/v1/score", &body).await).await;
    assert_eq!(answer["object"], "list");
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), DOCUMENTS.len());
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["index"], index as u64);
        assert_eq!(item["object"], "score");
        let score = expected.iter().find(|(at, _)| *at == index).unwrap().1;
        assert!((item["score"].as_f64().unwrap() - score).abs() < 1e-5, "{answer}");
    }
    assert_eq!(answer["usage"]["prompt_tokens"], tokens);

    // Pairwise: two lists of the same length; a text with itself is 1.
    let body = json!({"model": EMBEDDING, "text_1": [QUERY, DOCUMENTS[2]], "text_2": [QUERY, DOCUMENTS[1]]});
    let answer = json_of(post(&server, "/v1/score", &body).await).await;
    let scores: Vec<f64> =
        answer["data"].as_array().unwrap().iter().map(|d| d["score"].as_f64().unwrap()).collect();
    assert!((scores[0] - 1.0).abs() < 1e-5, "{scores:?}");
    assert!(scores[1] > 0.3 && scores[1] < 0.99, "Berlin against Paris: {scores:?}");

    // The same over the WebSocket.
    let mut socket = Socket::connect(&server, Some(ADMIN_KEY)).await;
    socket
        .send(json!({"id": "r", "type": "rerank", "body": {"model": EMBEDDING, "query": QUERY,
            "documents": DOCUMENTS, "top_n": 1}}))
        .await;
    socket
        .send(json!({"id": "s", "type": "score", "body": {"model": EMBEDDING, "text_1": QUERY,
            "text_2": DOCUMENTS[1]}}))
        .await;
    let frames = socket.until_ended(&["r", "s"]).await;
    assert_eq!(frames["r"][0]["data"]["results"][0]["index"], 1, "{frames:?}");
    let score = frames["s"][0]["data"]["data"][0]["score"].as_f64().unwrap();
    assert!((score - expected[0].1).abs() < 1e-5, "{frames:?}");
}

#[tokio::test]
async fn long_documents_are_refused_by_name_or_cut_when_asked() {
    let server = Server::start(&[], &[]).await;
    let long = "word ".repeat(400);
    let body = json!({"model": EMBEDDING, "query": QUERY, "documents": ["short", long]});
    let error = expect_error(post(&server, "/v1/rerank", &body).await, 400, "context_length_exceeded").await;
    assert_eq!(error["param"], "documents");
    assert!(error["message"].as_str().unwrap().starts_with("documents[1] has"), "{error}");
    let body = json!({"model": EMBEDDING, "query": QUERY, "documents": ["short", long], "truncate": true});
    let answer = json_of(post(&server, "/v1/rerank", &body).await).await;
    let (_, query_tokens) = vector(&server, QUERY).await;
    let (_, short_tokens) = vector(&server, "short").await;
    assert_eq!(answer["usage"]["prompt_tokens"], query_tokens + short_tokens + 256, "{answer}");

    let body = json!({"model": EMBEDDING, "text_1": long, "text_2": "x"});
    let error = expect_error(post(&server, "/v1/score", &body).await, 400, "context_length_exceeded").await;
    assert_eq!(error["param"], "text_1");
}

#[tokio::test]
async fn bad_bodies_models_credentials_and_scopes_are_refused() {
    let server = Server::start(&[("BLAZE__VALIDATION__MAX_EMBEDDING_INPUTS", "8")], &[]).await;
    let rerank = |extra: Value| {
        let mut body = json!({"model": EMBEDDING, "query": QUERY, "documents": ["a", "b"]});
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let cases = [
        ("/v1/rerank", rerank(json!({"model": CHAT})), 400, "invalid_model", "model"),
        ("/v1/rerank", rerank(json!({"model": "gpt-4o"})), 404, "model_not_found", "model"),
        ("/v1/rerank", rerank(json!({"documents": []})), 400, "invalid_input", "documents"),
        (
            "/v1/rerank",
            rerank(json!({"documents": ["a", {"title": "b"}]})),
            400,
            "invalid_input",
            "documents",
        ),
        ("/v1/rerank", rerank(json!({"documents": ["a", [["b"]]]})), 400, "invalid_input", "documents"),
        ("/v1/rerank", rerank(json!({"documents": vec!["a"; 9]})), 400, "too_many_items", "documents"),
        (
            "/v1/rerank",
            rerank(json!({"documents": ["a", "b\u{1}"]})),
            400,
            "invalid_characters",
            "documents[1]",
        ),
        ("/v1/rerank", rerank(json!({"documents": ["a", ""]})), 400, "invalid_input", "documents"),
        ("/v1/rerank", rerank(json!({"query": ""})), 400, "invalid_input", "query"),
        ("/v1/rerank", rerank(json!({"top_n": -1})), 400, "invalid_request_body", "top_n"),
        ("/v1/rerank", rerank(json!({"rank_fields": ["x"]})), 400, "unknown_parameter", "rank_fields"),
        (
            "/v1/score",
            json!({"model": EMBEDDING, "text_1": ["a", "b"], "text_2": ["a", "b", "c"]}),
            400,
            "invalid_input",
            "text_2",
        ),
        (
            "/v1/score",
            json!({"model": EMBEDDING, "text_1": [], "text_2": "a"}),
            400,
            "invalid_input",
            "text_1",
        ),
        (
            "/v1/score",
            json!({"model": EMBEDDING, "text_1": "a", "text_2": [1, 2]}),
            400,
            "invalid_input",
            "text_2",
        ),
        ("/v1/score", json!({"model": CHAT, "text_1": "a", "text_2": "b"}), 400, "invalid_model", "model"),
    ];
    for (path, body, status, code, param) in cases {
        let error = expect_error(post(&server, path, &body).await, status, code).await;
        assert_eq!(error["param"], param, "{path} {body}: {error}");
    }
    let missing = json!({"model": EMBEDDING, "documents": ["a"]});
    let error = expect_error(post(&server, "/v1/rerank", &missing).await, 400, "invalid_request_body").await;
    assert!(error["message"].as_str().unwrap().contains("`query`"), "{error}");
    // Nesting deep enough to exhaust a recursive parser is skipped unread
    // (a 400 naming the document), and the server goes on.
    let deep = format!(
        r#"{{"model":"{EMBEDDING}","query":"q","documents":[{}1{}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let response = client()
        .post(server.url("/v1/rerank"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 400, "invalid_input").await;
    assert_eq!(error["param"], "documents");
    json_of(post(&server, "/v1/rerank", &rerank(json!({}))).await).await;

    let body = rerank(json!({}));
    let response = anonymous_client().post(server.url("/v1/rerank")).json(&body).send().await.unwrap();
    expect_error(response, 401, "invalid_api_key").await;
    let chat_only = new_user_key_with(&server, "rerank@example.com", json!({"scopes": ["chat"]})).await;
    for path in ["/v1/rerank", "/v1/score"] {
        let response = client_with_key(&chat_only).post(server.url(path)).json(&body).send().await.unwrap();
        let error = expect_error(response, 403, "insufficient_scope").await;
        assert!(error["message"].as_str().unwrap().contains("`embeddings`"), "{error}");
    }
    let embeddings_only =
        new_user_key_with(&server, "score@example.com", json!({"scopes": ["embeddings"]})).await;
    let response =
        client_with_key(&embeddings_only).post(server.url("/v1/rerank")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
