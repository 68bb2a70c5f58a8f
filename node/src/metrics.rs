//! The peer daemon's Prometheus metrics: [`Metrics`], our own series, kept
//! in one `prometheus_client` [`Registry`] with libp2p's (the swarm adds
//! its bandwidth counters and, when metrics are served, every behaviour's
//! `libp2p_` series), and [`serve`], which answers `GET /metrics` over
//! plain HTTP (`vmail node run --metrics ADDR`, `[metrics] listen`).
//!
//! The registry is built completely at start (`Peer::start`) and then
//! only read, so scrapes share it behind an `Arc` without a lock; the
//! series themselves are atomics. [`Metrics`] is handed to the IO layers
//! that record (the swarm's event loop, the holder's blob service, repair,
//! the peer's leave and fetch); pure modules record nothing. Labels take
//! values from fixed sets only: never a peer id, a username or an id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// A label set of one fixed-vocabulary label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabel {
    side: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets of every duration histogram: 1 ms to about 33 s, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Which way a holder's blob body moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A store: the body came in.
    In,
    /// A fetch: the body went out.
    Out,
}

/// Where a heartbeat went missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This peer's heartbeat (or attach) to its supernode went unanswered.
    Peer,
    /// A peer attached to this supernode fell silent and was dropped.
    Supernode,
}

/// Where one leave's or fetch's time went, seconds per phase (the phases
/// of the overlay bench and `peer::Timings`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes {
    /// Key derivation, encryption or decryption, hashing.
    pub crypto: Duration,
    /// Routing-table reads and DHT lookups.
    pub dht: Duration,
    /// Blob transfers.
    pub transfer: Duration,
    /// Calls to the auth group, storage grants and deposit proofs included.
    pub auth: Duration,
}

/// What the holder's gauges read at each scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HolderGauges {
    /// Objects held for others.
    pub objects: u64,
    /// Bytes charged for them.
    pub bytes: u64,
    /// The holder quota, bytes.
    pub quota: u64,
}

/// Reads the holder's gauges; called on every scrape.
pub type HolderSource = Box<dyn Fn() -> HolderGauges + Send + Sync>;

/// The holder's gauges, read from its store at each scrape.
struct HolderCollector(HolderSource);

impl std::fmt::Debug for HolderCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HolderCollector")
    }
}

impl Collector for HolderCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = (self.0)();
        for (name, help, value) in [
            (
                "vmail_holder_objects",
                "Objects held for others.",
                g.objects,
            ),
            (
                "vmail_holder_bytes",
                "Bytes charged for the objects held (bodies, headers, 4 KiB minimums).",
                g.bytes,
            ),
            (
                "vmail_holder_quota_bytes",
                "The holder quota, bytes.",
                g.quota,
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Our own series. Cheap to record (atomics); shared as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    stores_accepted: Counter,
    stores_refused: Family<Reason, Counter>,
    fetches_served: Counter,
    transfer_seconds: Histograms<DirectionLabel>,
    transfer_bytes: Family<DirectionLabel, Counter>,
    repair_checks: Counter,
    repair_lost: Counter,
    repair_regenerated: Counter,
    repair_backoffs: Counter,
    sn_role: Gauge,
    sn_attached: Gauge,
    sn_reattaches: Counter,
    sn_missed: Family<SideLabel, Counter>,
    leave_phase: Histograms<PhaseLabel>,
    fetch_phase: Histograms<PhaseLabel>,
}

impl Metrics {
    /// Our series, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            stores_accepted: Counter::default(),
            stores_refused: Family::default(),
            fetches_served: Counter::default(),
            transfer_seconds: Family::new_with_constructor(seconds),
            transfer_bytes: Family::default(),
            repair_checks: Counter::default(),
            repair_lost: Counter::default(),
            repair_regenerated: Counter::default(),
            repair_backoffs: Counter::default(),
            sn_role: Gauge::default(),
            sn_attached: Gauge::default(),
            sn_reattaches: Counter::default(),
            sn_missed: Family::default(),
            leave_phase: Family::new_with_constructor(seconds),
            fetch_phase: Family::new_with_constructor(seconds),
        };
        let r = registry;
        r.register(
            "vmail_holder_stores_accepted",
            "Objects stored for others (acked after fsync).",
            m.stores_accepted.clone(),
        );
        r.register(
            "vmail_holder_stores_refused",
            "Stores the holder refused, by reason (the store's fixed set of reasons).",
            m.stores_refused.clone(),
        );
        r.register(
            "vmail_holder_fetches_served",
            "Objects sent whole to a fetching peer.",
            m.fetches_served.clone(),
        );
        r.register(
            "vmail_holder_transfer_seconds",
            "Time a blob body took to move, by direction (in: a store, out: a fetch).",
            m.transfer_seconds.clone(),
        );
        r.register(
            "vmail_holder_transfer_bytes",
            "Blob body bytes moved, by direction (in: a store, out: a fetch).",
            m.transfer_bytes.clone(),
        );
        r.register(
            "vmail_repair_checks",
            "Held voicemails whose sibling shards repair checked.",
            m.repair_checks.clone(),
        );
        r.register(
            "vmail_repair_lost_shards_found",
            "Sibling shards found missing past the repair grace period.",
            m.repair_lost.clone(),
        );
        r.register(
            "vmail_repair_shards_regenerated",
            "Shards regenerated and stored on a new holder.",
            m.repair_regenerated.clone(),
        );
        r.register(
            "vmail_repair_backoffs",
            "Failed repairs, each of which backs its voicemail off (doubling, up to a cap).",
            m.repair_backoffs.clone(),
        );
        r.register(
            "vmail_supernode_role",
            "1 while this peer serves as a supernode, else 0.",
            m.sn_role.clone(),
        );
        r.register(
            "vmail_supernode_attached_peers",
            "Peers attached to this supernode.",
            m.sn_attached.clone(),
        );
        r.register(
            "vmail_supernode_reattaches",
            "Times this peer attached again after losing its supernode.",
            m.sn_reattaches.clone(),
        );
        r.register(
            "vmail_supernode_heartbeats_missed",
            "Heartbeats missed, by side (peer: ours went unanswered; supernode: an attached peer fell silent).",
            m.sn_missed.clone(),
        );
        r.register(
            "vmail_leave_phase_seconds",
            "Where a successful leave's time went, by phase (crypto, dht, transfer, auth).",
            m.leave_phase.clone(),
        );
        r.register(
            "vmail_fetch_phase_seconds",
            "Where a successful fetch's time went, by phase (crypto, dht, transfer, auth).",
            m.fetch_phase.clone(),
        );
        m
    }

    /// Adds the holder's gauges, read through `source` at each scrape.
    pub fn register_holder(registry: &mut Registry, source: HolderSource) {
        registry.register_collector(Box::new(HolderCollector(source)));
    }

    /// A store was committed and acked.
    pub fn store_accepted(&self) {
        self.stores_accepted.inc();
    }

    /// A store was refused for `reason` (one of the store's fixed reasons).
    pub fn store_refused(&self, reason: &'static str) {
        self.stores_refused.get_or_create(&Reason { reason }).inc();
    }

    /// A fetch was served whole.
    pub fn fetch_served(&self) {
        self.fetches_served.inc();
    }

    /// A blob body of `bytes` moved `direction` in `took`.
    pub fn transfer(&self, direction: Direction, bytes: u64, took: Duration) {
        let label = DirectionLabel {
            direction: match direction {
                Direction::In => "in",
                Direction::Out => "out",
            },
        };
        self.transfer_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        self.transfer_bytes.get_or_create(&label).inc_by(bytes);
    }

    /// One repair round: voicemails checked, lost shards found, shards
    /// regenerated, repairs that failed and backed off.
    pub fn repair_round(&self, checked: u64, lost: u64, regenerated: u64, backoffs: u64) {
        self.repair_checks.inc_by(checked);
        self.repair_lost.inc_by(lost);
        self.repair_regenerated.inc_by(regenerated);
        self.repair_backoffs.inc_by(backoffs);
    }

    /// Whether this peer serves as a supernode, and how many peers are
    /// attached to it.
    pub fn supernode(&self, serving: bool, attached: usize) {
        self.sn_role.set(i64::from(serving));
        self.sn_attached
            .set(i64::try_from(attached).unwrap_or(i64::MAX));
    }

    /// This peer attached again after losing its supernode.
    pub fn reattached(&self) {
        self.sn_reattaches.inc();
    }

    /// `n` heartbeats went missing on `side`.
    pub fn heartbeats_missed(&self, side: Side, n: u64) {
        let side = match side {
            Side::Peer => "peer",
            Side::Supernode => "supernode",
        };
        self.sn_missed.get_or_create(&SideLabel { side }).inc_by(n);
    }

    /// A successful leave's phases.
    pub fn leave(&self, t: PhaseTimes) {
        observe_phases(&self.leave_phase, t);
    }

    /// A successful fetch's phases.
    pub fn fetch(&self, t: PhaseTimes) {
        observe_phases(&self.fetch_phase, t);
    }
}

fn observe_phases(family: &Histograms<PhaseLabel>, t: PhaseTimes) {
    for (phase, took) in [
        ("crypto", t.crypto),
        ("dht", t.dht),
        ("transfer", t.transfer),
        ("auth", t.auth),
    ] {
        family
            .get_or_create(&PhaseLabel { phase })
            .observe(took.as_secs_f64());
    }
}

/// Why metrics cannot be served.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot serve metrics on {addr} (--metrics, or listen in node.toml's [metrics]): {source}; give a free address, or leave metrics off"
)]
pub struct MetricsError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the OS said.
    pub source: std::io::Error,
}

/// Binds the metrics address: done before anything else starts, so an
/// address in use fails the start at once.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })
}

/// Answers `GET /metrics` on `listener` with `registry` in the Prometheus
/// (OpenMetrics) text format, until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    async fn scrape(
        axum::extract::State(registry): axum::extract::State<Arc<Registry>>,
    ) -> axum::response::Response {
        let mut body = String::with_capacity(64 * 1024);
        match prometheus_client::encoding::text::encode(&mut body, &registry) {
            Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_TEXT)], body).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(registry);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!("metrics endpoint stopped: {e}");
    }
}

/// The content type of the text `prometheus_client` writes.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
