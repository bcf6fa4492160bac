//! The admin HTTP port every service serves beside its gRPC port: liveness, readiness and
//! Prometheus metrics. Probes and scrapers use it; it carries no tenant data.
//!
//! - `GET /healthz` — 200 `ok` while the process serves HTTP at all (liveness).
//! - `GET /readyz` — 200 `ready` while the service says it is ready (dependencies
//!   connected, model loaded, not draining), else 503 `not ready: <reason>` naming the
//!   dependency that is missing.
//! - `GET /metrics` — 200, [`crate::metrics::render`] as Prometheus text 0.0.4.

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A service's readiness: `Ok`, or why not (`NATS disconnected`).
pub type Readiness = Result<(), String>;

/// Readiness before the first check.
pub fn starting() -> Readiness {
    Err("starting".into())
}

/// Serves the admin routes on `listener` until `shutdown` resolves; in-flight requests
/// finish first. `ready` is the service's readiness: flip it to `false` at the start of a
/// drain so load balancers stop sending new streams before the gRPC server stops.
pub async fn serve_admin(
    listener: TcpListener,
    ready: watch::Receiver<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(ready))
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(ready: watch::Receiver<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ready)
}

async fn readyz(State(ready): State<watch::Receiver<Readiness>>) -> impl IntoResponse {
    match &*ready.borrow() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(),
    )
}

/// Readiness from a probe polled every 500 ms (dependencies connected, and so on).
/// A change is logged: at WARN when the service stops being ready, with the reason.
pub fn poll_readiness<F, Fut>(probe: F) -> watch::Receiver<Readiness>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Readiness> + Send,
{
    let (ready_tx, ready_rx) = watch::channel(starting());
    tokio::spawn(async move {
        loop {
            let now = probe().await;
            if now != *ready_tx.borrow() {
                match &now {
                    Ok(()) => tracing::info!("ready"),
                    Err(why) => tracing::warn!(why, "not ready"),
                }
            }
            if ready_tx.send(now).is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });
    ready_rx
}

/// Ready while PostgreSQL answers, NATS is connected and `consumer` (the service's
/// durable consumer, if it has one) is not stuck retrying a message: the account, audit
/// and storage services' readiness.
pub fn db_and_nats_readiness(
    db: crate::db::Db,
    nats: async_nats::Client,
    consumer: Option<&'static str>,
) -> watch::Receiver<Readiness> {
    poll_readiness(move || {
        let (db, nats) = (db.clone(), nats.clone());
        async move {
            db.record_pool_metrics();
            nats_ready(&nats)?;
            if !db.is_ready().await {
                return Err("the database does not answer".into());
            }
            match consumer.and_then(crate::nats::consumer_stuck) {
                Some(why) => Err(why),
                None => Ok(()),
            }
        }
    })
}

/// `Ok` while `nats` is connected.
pub fn nats_ready(nats: &async_nats::Client) -> Readiness {
    if nats.connection_state() == async_nats::connection::State::Connected {
        Ok(())
    } else {
        Err("NATS disconnected".into())
    }
}

/// Whether a gRPC port serves server reflection (the schema of every Kiroku API): on for
/// the internal services, off by default on the public gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reflection {
    On,
    Off,
}

/// How every Kiroku gRPC service runs: `routes` (reported as serving under
/// `service_name`) plus gRPC health (and server reflection when asked) on `grpc`, the
/// admin routes on `admin`, both until `shutdown` resolves.
#[allow(clippy::too_many_arguments)]
pub async fn serve_grpc(
    service_name: &'static str,
    routes: tonic::service::Routes,
    mut server: tonic::transport::Server,
    grpc: TcpListener,
    admin: TcpListener,
    ready: watch::Receiver<Readiness>,
    reflection: Reflection,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(service_name, tonic_health::ServingStatus::Serving)
        .await;
    let mut routes = routes.add_service(health_service);
    if reflection == Reflection::On {
        routes = routes.add_service(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(kiroku_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .context("building the reflection service")?,
        );
    }
    // Every call served is counted and timed (RED metrics).
    let routes = tonic::service::Routes::from(routes.into_axum_router().layer(
        crate::grpc_metrics::GrpcMetricsLayer::new(crate::grpc_metrics::Side::Server),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_task = tokio::spawn(serve_admin(admin, ready, wait_stop(stop_rx.clone())));
    // TCP_NODELAY on every accepted connection: tonic applies its own `tcp_nodelay`
    // only to listeners it binds itself. With Nagle on, a small response (an audio ack,
    // a caption) that follows another unacknowledged one waits for the client's delayed
    // ACK, about 40 ms on Linux: that was the plumbing benchmark's p99.
    let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
    server
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, wait_stop(stop_rx))
        .await
        .context("gRPC server")?;
    admin_task.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::oneshot;

    use super::*;

    /// One `GET` over a fresh connection; the raw response (status line, headers, body).
    async fn get(address: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect to the admin port");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read the response");
        response
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }

    #[tokio::test]
    async fn admin_routes_answer_over_tcp_and_follow_readiness() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the admin port");
        let address = listener.local_addr().expect("admin address");
        let (ready_tx, ready_rx) = watch::channel(starting());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_admin(listener, ready_rx, async move {
            let _ = stop_rx.await;
        }));

        let healthz = get(address, "/healthz").await;
        assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
        assert_eq!(body(&healthz), "ok");

        let not_ready = get(address, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert_eq!(body(&not_ready), "not ready: starting");
        ready_tx
            .send(Ok(()))
            .expect("the server holds the receiver");
        let ready = get(address, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
        assert_eq!(body(&ready), "ready");

        crate::metrics::metrics().finals.inc();
        let metrics = get(address, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics
                .to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{metrics}"
        );
        assert!(body(&metrics).contains("# TYPE kiroku_finals_total counter"));

        let missing = get(address, "/nope").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        stop_tx.send(()).expect("the server is running");
        server
            .await
            .expect("the server task does not panic")
            .expect("the server stops cleanly");
    }
}
