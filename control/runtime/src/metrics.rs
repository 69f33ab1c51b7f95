//! Prometheus metrics and the `/metrics` + `/healthz` endpoint.
//!
//! Every long-running component registers its metrics in one [`Registry`] and serves it with
//! [`serve`]. The endpoint speaks the Prometheus text exposition format and, like etcd's
//! `--listen-metrics-urls`, is meant to listen on loopback or a monitoring network: it exposes
//! counters only, never cluster data.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::Shutdown;

/// A cheap-clone handle on the process's metric registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<prometheus_client::registry::Registry>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `metric` as `flotilla_<name>` with `help`.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl EncodeMetric + std::fmt::Debug + Send + Sync + 'static,
    ) {
        let mut reg = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        reg.register(format!("flotilla_{name}"), help, metric);
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let reg = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

/// Labels of one served request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The API or RPC called, e.g. `GET /api/v1/pods` or `etcdserverpb.KV/Range`.
    pub operation: String,
    /// The outcome: an HTTP status code or a gRPC code name.
    pub code: String,
}

/// Request counts and latencies of one server (HTTP or gRPC).
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
}

impl RequestMetrics {
    /// Registers `<server>_requests_total` and `<server>_request_duration_seconds`.
    pub fn register(registry: &Registry, server: &str) -> RequestMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        // 0.5 ms to ~16 s in powers of two.
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            &format!("{server}_requests"),
            &format!("Requests served by the {server}, by operation and outcome"),
            requests.clone(),
        );
        registry.register(
            &format!("{server}_request_duration_seconds"),
            &format!("Latency of requests served by the {server}"),
            latency.clone(),
        );
        RequestMetrics { requests, latency }
    }

    /// Records one request.
    pub fn observe(&self, operation: &str, code: &str, elapsed: Duration) {
        let labels = RequestLabels {
            operation: operation.to_string(),
            code: code.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// Whether the component is healthy: `Ok` or a sentence saying what is wrong.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct EndpointState {
    registry: Registry,
    health: HealthCheck,
}

async fn metrics(State(st): State<EndpointState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.registry.encode(),
    )
}

async fn healthz(State(st): State<EndpointState>) -> impl IntoResponse {
    match (st.health)() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    }
}

/// Binds `addr` for the metrics endpoint. Separate from [`serve`] so that a caller learns of a
/// busy port at start-up and can report the bound address (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    health: HealthCheck,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(EndpointState { registry, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_metrics_appear_in_the_text_format() {
        let registry = Registry::new();
        let m = RequestMetrics::register(&registry, "apiserver");
        m.observe("GET /api/v1/pods", "200", Duration::from_millis(3));
        m.observe("GET /api/v1/pods", "200", Duration::from_millis(5));
        let text = registry.encode();
        assert!(
            text.contains(
                "flotilla_apiserver_requests_total{operation=\"GET /api/v1/pods\",code=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("flotilla_apiserver_request_duration_seconds_bucket"));
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_and_health_then_stops() {
        let registry = Registry::new();
        let counter = Counter::<u64>::default();
        counter.inc();
        registry.register("things", "Things seen", counter);
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let unhealthy: HealthCheck = Arc::new(|| Err("no quorum".to_string()));
        let server = tokio::spawn(serve(listener, registry, unhealthy, shutdown.clone()));

        let body = http_get(addr, "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("flotilla_things_total 1"), "{body}");
        let body = http_get(addr, "/healthz").await;
        assert!(body.starts_with("HTTP/1.1 503"), "{body}");
        assert!(body.contains("unhealthy: no quorum"), "{body}");

        shutdown.trigger();
        server.await.unwrap().unwrap();
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
