//! OTLP receivers for the trace tests: the real protocol, decoded with the
//! opentelemetry-proto types. Over HTTP, protobuf bodies posted to
//! `/v1/traces` (or an answer that never comes, to fill the exporter's
//! queue); over gRPC, tonic's `TraceService`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::gateway::stub::{read_request, respond};

/// A span as received, with its resource's service name.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn name(&self) -> &str {
        &self.span.name
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// An attribute's value as text (strings, integers, doubles, booleans).
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|attribute| attribute.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        AnyValue::StringValue(text) => text.clone(),
        AnyValue::IntValue(number) => number.to_string(),
        AnyValue::DoubleValue(number) => number.to_string(),
        AnyValue::BoolValue(flag) => flag.to_string(),
        other => format!("{other:?}"),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Received>>>);

impl Spans {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource in request.resource_spans {
            let attributes = resource.resource.map(|resource| resource.attributes).unwrap_or_default();
            let service = attribute(&attributes, "service.name").unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received { service: service.clone(), span });
                }
            }
        }
    }
}

pub struct Receiver {
    pub endpoint: String,
    spans: Spans,
    /// Export requests that were not valid OTLP protobuf, or not a POST
    /// to /v1/traces with its content type.
    pub malformed: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// OTLP over HTTP: protobuf posted to `<endpoint>/v1/traces`.
    pub async fn http() -> Self {
        Self::http_answering(true).await
    }

    /// Takes export requests and never answers them: the exporter waits
    /// out its timeout and spans pile up in its queue.
    pub async fn silent() -> Self {
        Self::http_answering(false).await
    }

    async fn http_answering(answers: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Spans::default();
        let malformed = Arc::new(Mutex::new(Vec::new()));
        let (sink, bad) = (spans.clone(), malformed.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (sink, bad) = (sink.clone(), bad.clone());
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut socket).await else { return };
                    if !answers {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                    let request_line = head.lines().next().unwrap_or_default().to_owned();
                    let protobuf = head.to_ascii_lowercase().contains("content-type: application/x-protobuf");
                    match ExportTraceServiceRequest::decode(body.as_slice()) {
                        Ok(request) if request_line.starts_with("POST /v1/traces ") && protobuf => {
                            sink.add(request);
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                answer.len()
                            );
                            let _ = socket.write_all(head.as_bytes()).await;
                            let _ = socket.write_all(&answer).await;
                            let _ = socket.shutdown().await;
                        }
                        _ => {
                            bad.lock().unwrap().push(request_line);
                            respond(&mut socket, "400 Bad Request", "text/plain", "not OTLP").await;
                        }
                    }
                });
            }
        });
        Self { endpoint, spans, malformed, task }
    }

    /// OTLP over gRPC: tonic's TraceService.
    pub async fn grpc() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Spans::default();
        let service = TraceServiceServer::new(Collector(spans.clone()));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ =
                tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        Self { endpoint, spans, malformed: Arc::default(), task }
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.0.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until the spans received satisfy `done`.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "no {what} within 20 s; received: {:#?}", names(&spans));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn names(spans: &[Received]) -> Vec<(String, String, String)> {
    spans.iter().map(|span| (span.name().to_owned(), span.trace_id(), span.parent_span_id())).collect()
}

struct Collector(Spans);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}
