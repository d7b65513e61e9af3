//! The HTTP endpoints: `/metrics`, `/healthz` (the process serves) and `/readyz` (the CRDs are
//! established and this replica holds the leader Lease, so it is the one reconciling).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::metrics::Metrics;

/// What readiness depends on.
#[derive(Default)]
pub struct Health {
    pub crds_established: AtomicBool,
    pub leading: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.crds_established.load(Ordering::Relaxed) && self.leading.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Metrics,
}

pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.health.ready() {
                    (StatusCode::OK, "ready")
                } else if !s.health.crds_established.load(Ordering::Relaxed) {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for the CRDs to be established",
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "standby: another replica holds the leader Lease",
                    )
                }
            }),
        )
        .with_state(AppState { health, metrics });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
