//! Blaze's integration tests, in one binary so the suite links once: the
//! real `blaze` binary started on random ports (`common`), the engines
//! against their committed fixtures, the load suite, the deployment files,
//! and the real PostgreSQL and Redis of the machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A test's tasks end with its runtime, at the end of the test.
#![allow(clippy::disallowed_methods)]

mod common;

mod auth_admin;
mod auth_tokens;
mod bench_report;
mod cache_api;
mod chat_api;
mod chat_engine;
mod choices;
mod cli;
mod deployment_files;
mod deployment_setup;
mod embedding_fidelity;
mod embeddings_api;
mod gateway;
mod governance;
mod guard_api;
mod guard_corpus;
mod http_surface;
mod lifecycle;
mod load_suite;
mod log_shipping;
mod logprobs_api;
mod model_loading;
mod models_add;
mod multi_replica;
mod oidc;
mod prefix_reuse;
mod profiling;
mod quotas;
mod rate_limits;
mod rerank_api;
mod responses_api;
mod sdk;
mod security;
mod structured_outputs;
mod tokenize_api;
mod tool_calls;
mod traces;
mod websocket_api;
