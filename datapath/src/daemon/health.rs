//! The daemon's health server, on flanneld's `--healthz-ip`/`--healthz-port`:
//!
//! - `/healthz`: 200 while the daemon runs (flannel's "flanneld is running");
//! - `/readyz`: 200 once the node holds a lease, has written subnet.env and brought its
//!   backend up (the shell publishes the lease only after all three), else 503;
//! - `/metrics`: the node's status in the Prometheus text format (`prometheus-client`):
//!   whether a lease is held and for how long, the node's events (renewals and their
//!   failures...), store errors by kind, store operation latency by operation, watch
//!   reconnects and re-lists, routes, and per backend its packets by path, drops by
//!   reason, errors, peers, and its device's bytes and packets as the kernel counts them.
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
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;

use weft_stores::{Latency, LATENCY_BUCKETS};

use super::status::NodeStatus;
use crate::DatapathError;

/// Labels of the datapath's metrics: the backend, and what the value is of.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Backend {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Path {
    backend: String,
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    backend: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Device {
    backend: String,
    device: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Event {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: String,
}

/// The store operations' latency histograms, one per operation, as the driver measured
/// them: the counts are the driver's, so the histogram is encoded from them rather
/// than observed again.
#[derive(Debug)]
struct Latencies(Vec<(Op, Latency)>);

impl EncodeMetric for Latencies {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (op, latency) in &self.0 {
            let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(latency.buckets.iter().copied()).collect();
            // Microseconds to seconds; exact for any sum below 2^53 µs (285 years).
            let sum = latency.sum_micros as f64 / 1e6;
            encoder.encode_family(op)?.encode_histogram::<NoLabelSet>(
                sum,
                latency.count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }

    /// No operation yet: no family (an empty one is not valid OpenMetrics).
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The Prometheus exposition of `status`, `now_ms` being the wall clock (for the
/// seconds left on the lease).
pub fn metrics(status: &NodeStatus) -> String {
    metrics_at(status, weft_stores::clock::wall_now().as_millis())
}

/// A count as a gauge's value (saturating: gauges are signed).
fn level(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn gauge(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(level(value));
    g
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn counters<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug>(
    values: impl IntoIterator<Item = (L, u64)>,
) -> Family<L, Counter> {
    let family = Family::<L, Counter>::default();
    for (labels, n) in values {
        family.get_or_create(&labels).inc_by(n);
    }
    family
}

fn metrics_at(status: &NodeStatus, now_ms: u64) -> String {
    let mut registry = Registry::with_prefix("weft");
    registry.register(
        "lease_held",
        "Whether the node holds its subnet lease",
        gauge(u64::from(status.holds_lease())),
    );
    registry.register(
        "routes",
        "Routes to peers' subnets",
        gauge(status.routes.len() as u64),
    );
    if let (true, Some(at)) = (status.holds_lease(), status.lease_expires_at_ms) {
        registry.register_with_unit(
            "lease_expiry",
            "Seconds until the held lease expires unless renewed",
            Unit::Seconds,
            gauge(at.saturating_sub(now_ms) / 1000),
        );
    }
    registry.register(
        "node_events",
        "What the node reported: acquired, acquire_failed, renewed, renew_failed, lost, synced (listings), store_failed",
        counters(status.events.iter().map(|(e, n)| (Event { event: e.clone() }, *n))),
    );
    registry.register(
        "store_errors",
        "Store errors the node saw, by kind",
        counters(
            status
                .store_errors
                .iter()
                .map(|(k, n)| (Kind { kind: k.clone() }, *n)),
        ),
    );
    registry.register(
        "skipped_leases",
        "Entries under the subnets prefix that are not valid leases",
        counter(status.skipped_leases),
    );
    store_metrics(&mut registry, status);
    if let Some(backend) = &status.backend {
        datapath_metrics(&mut registry, status, backend);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// The driver's view of the store: latencies, failures, watches, re-lists.
fn store_metrics(registry: &mut Registry, status: &NodeStatus) {
    let store = &status.store;
    let ops = || store.ops.iter().filter(|(_, l)| l.count > 0);
    // Named with its unit but registered without a UNIT line, which OpenMetrics parsers
    // refuse on histograms.
    registry.register(
        "store_operation_duration_seconds",
        "How long store operations took, by operation (list, create, renew)",
        Latencies(
            ops()
                .map(|(op, l)| (Op { op: op.clone() }, l.clone()))
                .collect(),
        ),
    );
    registry.register(
        "store_operations_failed",
        "Store operations that failed, by operation",
        counters(ops().map(|(op, l)| (Op { op: op.clone() }, l.errors))),
    );
    registry.register(
        "watch_reconnects",
        "Watches started after the first: after a watch failed or a re-list",
        counter(store.watches_started.saturating_sub(1)),
    );
    registry.register(
        "watch_events",
        "Lease changes the watch delivered",
        counter(store.watch_events),
    );
    let listings = status.events.get("synced").copied().unwrap_or(0);
    registry.register(
        "relists",
        "Listings of every lease after the first (after compaction or a lost watch)",
        counter(listings.saturating_sub(1)),
    );
}

/// The backend's counters and its device's, labelled with the backend.
fn datapath_metrics(registry: &mut Registry, status: &NodeStatus, backend: &str) {
    let backend = backend.to_string();
    let labels = || Backend {
        backend: backend.clone(),
    };
    if !status.packets.is_empty() {
        registry.register(
            "datapath_packets",
            "Packets the backend moved, by path (tun_rx: read from the TUN device, udp_tx: sent to peers, udp_rx, tun_tx, icmp_tx: unreachables sent back)",
            counters(status.packets.iter().map(|(path, n)| {
                let path = path.clone();
                (Path { backend: backend.clone(), path }, *n)
            })),
        );
    }
    registry.register(
        "packets_dropped",
        "Packets dropped, by reason",
        counters(status.drops.iter().map(|(reason, n)| {
            let reason = reason.clone();
            (
                Reason {
                    backend: backend.clone(),
                    reason,
                },
                *n,
            )
        })),
    );
    for (name, value) in &status.totals {
        let family = counters([(labels(), *value)]);
        registry.register(
            format!("datapath_{name}"),
            format!("The backend's {name}"),
            family,
        );
    }
    for (name, value) in &status.levels {
        let family = Family::<Backend, Gauge>::default();
        family.get_or_create(&labels()).set(level(*value));
        registry.register(
            format!("datapath_{name}"),
            format!("The backend's {name}"),
            family,
        );
    }
    if let Some(device) = &status.device {
        let s = &device.stats;
        let by_direction = |rx: u64, tx: u64| {
            counters([("rx", rx), ("tx", tx)].map(|(direction, n)| {
                let device = device.name.clone();
                (
                    Device {
                        backend: backend.clone(),
                        device,
                        direction,
                    },
                    n,
                )
            }))
        };
        registry.register_with_unit(
            "device",
            "Bytes through the backend's device, as the kernel counts them",
            Unit::Bytes,
            by_direction(s.rx_bytes, s.tx_bytes),
        );
        registry.register(
            "device_packets",
            "Packets through the backend's device, as the kernel counts them",
            by_direction(s.rx_packets, s.tx_packets),
        );
        registry.register(
            "device_dropped",
            "Packets the kernel dropped on the backend's device",
            by_direction(s.rx_dropped, s.tx_dropped),
        );
    }
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
        let mut status = NodeStatus {
            backend: Some("udp".into()),
            ..NodeStatus::default()
        };
        status.packets.insert("udp_tx".into(), 7);
        status.drops.insert("spoofed_source".into(), 2);
        status.totals.insert("errors".into(), 1);
        status.levels.insert("peers".into(), 4);
        status.device = Some(super::super::status::DeviceStatus {
            name: "weft0".into(),
            stats: crate::netlink::LinkStats {
                rx_bytes: 1500,
                tx_bytes: 3000,
                ..Default::default()
            },
        });
        status.events.insert("renewed".into(), 3);
        status.events.insert("synced".into(), 3);
        status.store_errors.insert("timeout".into(), 1);
        let renew = status.store.ops.entry("renew".into()).or_default();
        // 2 ms, 2 ms and 20 s: buckets 2.5 ms and +Inf.
        renew.buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        renew.buckets[1] = 2;
        renew.buckets[LATENCY_BUCKETS.len()] = 1;
        (renew.count, renew.sum_micros, renew.errors) = (3, 20_004_000, 1);
        status.store.watches_started = 3;
        status.store.watch_events = 9;
        let text = metrics_at(&status, 0);
        for line in [
            r#"weft_node_events_total{event="renewed"} 3"#,
            r#"weft_store_errors_total{kind="timeout"} 1"#,
            "weft_lease_held 0",
            r#"weft_datapath_packets_total{backend="udp",path="udp_tx"} 7"#,
            r#"weft_packets_dropped_total{backend="udp",reason="spoofed_source"} 2"#,
            r#"weft_datapath_errors_total{backend="udp"} 1"#,
            r#"weft_datapath_peers{backend="udp"} 4"#,
            r#"weft_device_bytes_total{backend="udp",device="weft0",direction="tx"} 3000"#,
            r#"weft_store_operation_duration_seconds_sum{op="renew"} 20.004"#,
            r#"weft_store_operation_duration_seconds_count{op="renew"} 3"#,
            r#"weft_store_operation_duration_seconds_bucket{le="0.001",op="renew"} 0"#,
            r#"weft_store_operation_duration_seconds_bucket{le="0.0025",op="renew"} 2"#,
            r#"weft_store_operation_duration_seconds_bucket{le="10.0",op="renew"} 2"#,
            r#"weft_store_operation_duration_seconds_bucket{le="+Inf",op="renew"} 3"#,
            r#"weft_store_operations_failed_total{op="renew"} 1"#,
            "weft_watch_reconnects_total 2",
            "weft_watch_events_total 9",
            "weft_relists_total 2",
            "# TYPE weft_store_operation_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(
            !text.contains("lease_expiry"),
            "no lease, no expiry: {text}"
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
