//! The network side of the metrics: the plain-HTTP `/metrics` endpoint
//! and the tower layer that counts every gRPC call by method and code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;

use super::{AuthMetrics, CONTENT_TYPE};

/// Serves `metrics` as Prometheus text at `/metrics` on `listener` (plain
/// HTTP/1.1) until `shutdown` completes.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<AuthMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let scrape = move || {
        let text = metrics.encode();
        async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text) }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(scrape));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The names of the gRPC status codes, by number (`grpc-status`).
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A tower layer on the public gRPC server that counts each call by method
/// and code and times it to its response headers. The code is the
/// `grpc-status` header when the answer carries one there (tonic puts an
/// error of a unary call there); otherwise the call is counted OK. A path
/// answered UNIMPLEMENTED is counted as method "unknown", so that a client
/// cannot grow the label set.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer(pub Arc<AuthMetrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<AuthMetrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let path = req.uri().path().to_owned();
        let since = Instant::now();
        Box::pin(async move {
            let answer = inner.call(req).await;
            let code = match &answer {
                Ok(res) => res
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok())
                    .map_or("OK", |c| CODES.get(c).copied().unwrap_or("UNKNOWN")),
                Err(_) => "UNKNOWN",
            };
            let method = if code == "UNIMPLEMENTED" {
                "unknown".to_owned()
            } else {
                path
            };
            metrics.grpc_answered(method, code, since);
            answer
        })
    }
}
