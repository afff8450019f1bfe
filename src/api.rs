//! The HTTP API: status, progress, config and Prometheus metrics for reading; pause, resume and
//! rate for operating. Everything it reports comes from [`Telemetry`], like the bars and logs.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{ApiConfig, PipelineConfig};
use crate::control::Control;
use crate::metrics::Metrics;
use crate::telemetry::{PipelineState, Positions, Telemetry};

/// What the handlers share.
#[derive(Clone)]
struct Api {
    cfg: Arc<PipelineConfig>,
    telemetry: Arc<Telemetry>,
    /// The two directions of a two-way pipeline (empty otherwise).
    directions: Arc<Vec<(Arc<PipelineConfig>, Arc<Telemetry>)>>,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    token: Option<String>,
}

/// An API that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A non-loopback address without a token.
    #[error("api.listen = {0} is not a loopback address: set api.token (bearer auth for pause/resume/rate), or api.allow_remote_without_token = true")]
    RemoteWithoutToken(SocketAddr),
    /// The address cannot be bound.
    #[error("api.listen = {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds the API (so a busy port fails start-up) and serves it until `stop`.
pub async fn serve(
    api: &ApiConfig,
    cfg: Arc<PipelineConfig>,
    telemetry: Arc<Telemetry>,
    control: Arc<Control>,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ApiError> {
    serve_directions(api, cfg, telemetry, Vec::new(), control, stop).await
}

/// [`serve`] for a two-way pipeline: `/status` adds each direction's status under
/// `directions`, and `/metrics` labels each direction as a pipeline of its own
/// (`<id>.<from>-<to>`).
pub(crate) async fn serve_directions(
    api: &ApiConfig,
    cfg: Arc<PipelineConfig>,
    telemetry: Arc<Telemetry>,
    directions: Vec<(Arc<PipelineConfig>, Arc<Telemetry>)>,
    control: Arc<Control>,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ApiError> {
    let addr = api.listen;
    if !addr.ip().is_loopback() && api.token.is_none() && !api.allow_remote_without_token {
        return Err(ApiError::RemoteWithoutToken(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ApiError::Bind { addr, source })?;
    let mut registry = Metrics::default();
    if directions.is_empty() {
        registry.add_pipeline(&cfg.id, telemetry.clone(), control.clone());
    }
    for (c, t) in &directions {
        registry.add_pipeline(&c.id, t.clone(), control.clone());
    }
    let state = Api {
        cfg,
        telemetry,
        directions: Arc::new(directions),
        control,
        metrics: Arc::new(registry),
        token: api.token.clone(),
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/progress", get(progress))
        .route("/config", get(config))
        .route("/metrics", get(metrics))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/rate", put(rate).get(get_rate))
        .with_state(state);
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok((local, handle))
}

/// `None` when allowed, else the 401 response.
fn refused(api: &Api, headers: &HeaderMap) -> Option<Response> {
    unauthorized(api.token.as_deref(), headers)
}

/// `None` when the request carries `Authorization: Bearer <token>` (or no token is set), else
/// the 401 response.
pub(crate) fn unauthorized(token: Option<&str>, headers: &HeaderMap) -> Option<Response> {
    let token = token?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    (given != Some(token)).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "missing or wrong bearer token" })),
        )
            .into_response()
    })
}

/// The body of `GET /status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// Pipeline id.
    pub pipeline: String,
    /// starting, copying, streaming, paused, stalled, stopped.
    pub state: String,
    /// Why the state is `stalled`.
    pub reason: Option<String>,
    /// Seconds the sink is behind the source.
    pub lag_seconds: f64,
    /// Positions read / acknowledged / checkpointed.
    pub positions: serde_json::Value,
    /// Queue depth per lane.
    pub lane_queue_depth: Vec<usize>,
    /// Events read but not yet written.
    pub pending: usize,
    /// Events read from the source.
    pub read: u64,
    /// Changes and records sent to the source's dead letters (file, SQS queue, Kafka topic).
    #[serde(default)]
    pub dead_lettered: u64,
    /// Writes applied per operation type.
    pub applied: serde_json::Value,
    /// Per kind of sink: applied and failed.
    pub sinks: serde_json::Value,
    /// Per sink by name (`sink`, `[sinks.<name>]`): kind, events written by operation,
    /// events refused (dead-lettered).
    #[serde(default)]
    pub per_sink: serde_json::Value,
    /// Error count and the last message.
    pub errors: serde_json::Value,
    /// Rate limit, ops/s (0 = none).
    pub rate_limit: u64,
    /// Seconds since the checkpoint was saved.
    pub checkpoint_age_seconds: Option<f64>,
    /// Two-way pipelines: each direction's status, with what it decided (`two_way`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directions: Vec<serde_json::Value>,
    /// DynamoDB and Kinesis sources: each shard being read, with its lag and records read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<serde_json::Value>,
}

/// Builds the status report.
pub fn status_of(cfg: &PipelineConfig, t: &Telemetry, control: &Control) -> Status {
    let s = t.snapshot();
    let last = t.last_error();
    let recent_error = last
        .as_ref()
        .filter(|(_, ago)| ago.as_secs() < 15)
        .map(|(m, _)| m.clone());
    let (state, reason) = match s.state {
        PipelineState::Stopped => ("stopped".to_string(), None),
        _ if control.is_paused() => ("paused".to_string(), None),
        PipelineState::Copying | PipelineState::Streaming if recent_error.is_some() => {
            ("stalled".to_string(), recent_error)
        }
        other => (format!("{other:?}").to_lowercase(), None),
    };
    let positions: Positions = t.positions();
    let total = s.inserts + s.updates + s.replaces + s.deletes + s.ddl;
    Status {
        pipeline: cfg.id.clone(),
        state,
        reason,
        lag_seconds: s.lag_seconds,
        positions: serde_json::to_value(positions).unwrap_or_default(),
        lane_queue_depth: t.lane_depths(),
        pending: s.pending,
        read: s.read,
        dead_lettered: t.dead_lettered.load(std::sync::atomic::Ordering::Relaxed),
        applied: json!({ "insert": s.inserts, "update": s.updates, "replace": s.replaces, "delete": s.deletes, "ddl": s.ddl, "skipped": s.skipped }),
        sinks: {
            use std::sync::atomic::Ordering::Relaxed;
            let mut sinks =
                json!({ "mongodb": { "applied": total, "errors": t.errors.load(Relaxed) } });
            if !cfg.kafka_sinks().is_empty() || cfg.mongo_source().is_none() {
                let k = &t.kafka;
                sinks["kafka"] = json!({
                    "produced": k.produced.load(Relaxed),
                    "consumed": k.consumed.load(Relaxed),
                    "dead_lettered": k.dead_lettered.load(Relaxed),
                    "commits": k.commits.load(Relaxed),
                });
            }
            if !cfg.archive_sinks().is_empty() {
                let a = &t.archive;
                sinks["archive"] = json!({
                    "archived": a.events.load(Relaxed),
                    "objects": a.objects.load(Relaxed),
                    "bytes": a.bytes.load(Relaxed),
                    "duplicates_skipped": a.duplicates.load(Relaxed),
                });
            }
            sinks
        },
        per_sink: t
            .sinks()
            .iter()
            .map(|c| {
                let written: serde_json::Map<String, serde_json::Value> = c
                    .written()
                    .iter()
                    .map(|(op, n)| (op.to_string(), json!(n)))
                    .collect();
                (
                    c.name.clone(),
                    json!({
                        "kind": c.kind,
                        "written": written,
                        "refused": c.refused.load(std::sync::atomic::Ordering::Relaxed),
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        errors: json!({
            "total": t.errors.load(std::sync::atomic::Ordering::Relaxed),
            "last": last.as_ref().map(|(m, _)| m.clone()),
            "last_seconds_ago": last.as_ref().map(|(_, ago)| ago.as_secs_f64()),
        }),
        rate_limit: control.rate(),
        checkpoint_age_seconds: t.checkpoint_age(),
        directions: Vec::new(),
        shards: t
            .shards()
            .iter()
            .map(|c| {
                use std::sync::atomic::Ordering::Relaxed;
                json!({
                    "shard": c.id,
                    "lag_seconds": c.behind_ms.load(Relaxed) as f64 / 1000.0,
                    "records": c.records.load(Relaxed),
                })
            })
            .collect(),
    }
}

async fn status(State(api): State<Api>) -> Json<Status> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut s = status_of(&api.cfg, &api.telemetry, &api.control);
    for (c, t) in api.directions.iter() {
        let mut d = serde_json::to_value(status_of(c, t, &api.control)).unwrap_or_default();
        let w = &t.two_way;
        d["two_way"] = json!({
            "applied": w.applied.load(Relaxed),
            "stale": w.stale.load(Relaxed),
            "conflicts": w.conflicts.load(Relaxed),
            "searches": w.searches.load(Relaxed),
            "echoes_dropped": w.echoes.load(Relaxed),
            "conflicts_published": w.conflicts_published.load(Relaxed),
        });
        s.directions.push(d);
    }
    Json(s)
}

async fn progress(State(api): State<Api>) -> Json<serde_json::Value> {
    let colls: Vec<_> = api
        .telemetry
        .collections()
        .iter()
        .map(|c| {
            use std::sync::atomic::Ordering::Relaxed;
            json!({
                "ns": c.ns,
                "docs_copied": c.copied.load(Relaxed),
                "docs_estimated": c.estimated.load(Relaxed),
                "bytes_copied": c.bytes.load(Relaxed),
                "done": c.done.load(Relaxed),
            })
        })
        .collect();
    Json(
        json!({ "state": format!("{:?}", api.telemetry.state()).to_lowercase(), "collections": colls }),
    )
}

async fn config(State(api): State<Api>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/toml")],
        api.cfg.redacted(),
    )
        .into_response()
}

async fn pause(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&api, &headers) {
        return r;
    }
    api.control.pause();
    Json(json!({ "paused": true })).into_response()
}

async fn resume(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&api, &headers) {
        return r;
    }
    api.control.resume();
    Json(json!({ "paused": false })).into_response()
}

/// Body of `PUT /rate`.
#[derive(Debug, Deserialize)]
struct RateBody {
    ops_per_sec: u64,
}

async fn rate(State(api): State<Api>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = refused(&api, &headers) {
        return r;
    }
    match parse_rate(&body) {
        Some(n) => {
            api.control.set_rate(n);
            Json(json!({ "ops_per_sec": n })).into_response()
        }
        None => bad_rate(),
    }
}

/// A rate body: `{"ops_per_sec": N}` or a bare number.
pub(crate) fn parse_rate(body: &str) -> Option<u64> {
    serde_json::from_str::<RateBody>(body)
        .map(|b| b.ops_per_sec)
        .or_else(|_| body.trim().parse::<u64>())
        .ok()
}

/// The answer to a rate body [`parse_rate`] cannot read.
pub(crate) fn bad_rate() -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": "body must be {\"ops_per_sec\": N} or N (0 = unlimited)" })),
    )
        .into_response()
}

async fn get_rate(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(json!({ "ops_per_sec": api.control.rate() }))
}

async fn metrics(State(api): State<Api>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        api.metrics.render(),
    )
        .into_response()
}
