//! The daemon's health server, on flanneld's `--healthz-ip`/`--healthz-port`:
//!
//! - `/healthz`: 200 while the daemon runs (flannel's "flanneld is running");
//! - `/readyz`: 200 once the node holds a lease, has written subnet.env and brought its
//!   backend up (the shell publishes the lease only after all three), else 503;
//! - `/metrics`: the node's status in the Prometheus text format (`prometheus-client`):
//!   whether a lease is held, routes, the backend's packet counters and drops by reason.
//!
//! Everything comes from the status the shell publishes; the server never touches the
//! node.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::status::NodeStatus;
use crate::DatapathError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Event {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

/// The Prometheus exposition of `status`, `now_ms` being the wall clock (for the
/// seconds left on the lease).
pub fn metrics(status: &NodeStatus) -> String {
    metrics_at(status, weft_stores::clock::wall_now().as_millis())
}

fn metrics_at(status: &NodeStatus, now_ms: u64) -> String {
    let mut registry = Registry::with_prefix("weft");
    let lease: Gauge = Gauge::default();
    lease.set(i64::from(status.holds_lease()));
    registry.register(
        "lease_held",
        "Whether the node holds its subnet lease",
        lease,
    );
    let routes: Gauge = Gauge::default();
    routes.set(i64::try_from(status.routes.len()).unwrap_or(i64::MAX));
    registry.register("routes", "Routes to peers' subnets", routes);
    if let (true, Some(at)) = (status.holds_lease(), status.lease_expires_at_ms) {
        let left: Gauge = Gauge::default();
        left.set(i64::try_from(at.saturating_sub(now_ms) / 1000).unwrap_or(i64::MAX));
        registry.register(
            "lease_expiry_seconds",
            "Seconds until the held lease expires unless renewed",
            left,
        );
    }
    let events = Family::<Event, Counter>::default();
    for (event, n) in &status.events {
        events
            .get_or_create(&Event {
                event: event.clone(),
            })
            .inc_by(*n);
    }
    registry.register(
        "node_events",
        "What the node reported: acquired, acquire_failed, renewed, renew_failed, lost, synced (listings), store_failed",
        events,
    );
    let errors = Family::<Kind, Counter>::default();
    for (kind, n) in &status.store_errors {
        errors
            .get_or_create(&Kind { kind: kind.clone() })
            .inc_by(*n);
    }
    registry.register("store_errors", "Store errors the node saw, by kind", errors);
    let skipped: Counter = Counter::default();
    skipped.inc_by(status.skipped_leases);
    registry.register(
        "skipped_leases",
        "Entries under the subnets prefix that are not valid leases",
        skipped,
    );
    for (name, value) in &status.forward {
        let c: Counter = Counter::default();
        c.inc_by(*value);
        registry.register(
            format!("datapath_{name}"),
            format!("The backend's {name} counter"),
            c,
        );
    }
    let drops = Family::<Reason, Counter>::default();
    for (reason, n) in &status.drops {
        drops
            .get_or_create(&Reason {
                reason: reason.clone(),
            })
            .inc_by(*n);
    }
    registry.register("packets_dropped", "Packets dropped, by reason", drops);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

fn answer(path: &str, status: &NodeStatus) -> (StatusCode, &'static str, String) {
    let text = "text/plain; charset=utf-8";
    match path {
        "/healthz" => (StatusCode::OK, text, "weft is running".into()),
        "/readyz" if status.holds_lease() => (StatusCode::OK, text, "weft is ready".into()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "weft is not ready yet".into(),
        ),
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics(status),
        ),
        _ => (StatusCode::NOT_FOUND, text, "not found".into()),
    }
}

/// Serves on `addr` until `shutdown` turns true. Binding is the only error: a port in
/// use is reported before the daemon goes on.
pub async fn serve(
    addr: SocketAddr,
    status: watch::Receiver<NodeStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, DatapathError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| DatapathError::io(format!("health server on {addr}"), e))?;
    tracing::info!(%addr, "health server: /healthz, /readyz, /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = shutdown.changed() => return,
            };
            let Ok((stream, _)) = conn else { continue };
            let status = status.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (code, kind, body) = answer(req.uri().path(), &status.borrow());
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = code;
                    if let Ok(v) = kind.parse() {
                        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                    }
                    async move { Ok::<_, Infallible>(resp) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_prometheus_naming_and_readyz_the_lease() {
        let mut status = NodeStatus::default();
        status.forward.insert("udp_tx".into(), 7);
        status.drops.insert("spoofed_source".into(), 2);
        status.events.insert("renewed".into(), 3);
        status.store_errors.insert("timeout".into(), 1);
        let text = metrics_at(&status, 0);
        assert!(
            text.contains(r#"weft_node_events_total{event="renewed"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_store_errors_total{kind="timeout"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains("lease_expiry"),
            "no lease, no expiry: {text}"
        );
        assert!(text.contains("weft_lease_held 0"), "{text}");
        assert!(text.contains("weft_datapath_udp_tx_total 7"), "{text}");
        assert!(
            text.contains(r#"weft_packets_dropped_total{reason="spoofed_source"} 2"#),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        assert_eq!(
            answer("/readyz", &status).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(answer("/healthz", &status).0, StatusCode::OK);
        assert_eq!(answer("/nope", &status).0, StatusCode::NOT_FOUND);
    }
}
