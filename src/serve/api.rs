//! The REST API of `strait serve`, the same on every worker: configs, desired state and
//! statuses live in the control database, so any worker answers for any pipeline. Calls that
//! change something need the bearer token; the holder of a pipeline applies a change within a
//! second.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bson::doc;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::config::ServerApiConfig;
use super::store::parsed;
use super::worker::{Worker, TICK};
use crate::api::{bad_rate, parse_rate, unauthorized};
use crate::config::{ConfigError, PipelineConfig};
use crate::error::Error;

/// What the handlers share.
#[derive(Clone)]
struct Api {
    worker: Arc<Worker>,
    token: Option<String>,
}

/// The status page: one self-contained file, no external assets.
const PAGE: &str = include_str!("page.html");

/// Binds the API (so a busy port fails start-up) and serves it until `stop`. Returns the
/// bound address.
pub(crate) async fn serve(
    cfg: &ServerApiConfig,
    worker: Arc<Worker>,
    stop: CancellationToken,
) -> crate::error::Result<(SocketAddr, bool, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::User(format!("api.listen = {}: {e}", cfg.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::User(format!("api.listen = {}: {e}", cfg.listen)))?;
    let app = router(Api {
        worker,
        token: cfg.token.clone(),
    });
    let tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(c), Some(k)) => {
            Some(super::tls::acceptor(c, k).map_err(|e| Error::User(e.to_string()))?)
        }
        _ => None,
    };
    let https = tls.is_some();
    let handle = match tls {
        Some(acceptor) => {
            let listener = super::tls::TlsListener::new(listener, acceptor)
                .map_err(|e| Error::User(format!("api.listen = {}: {e}", cfg.listen)))?;
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            })
        }
        None => tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }),
    };
    Ok((local, https, handle))
}

fn router(state: Api) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/pipelines", get(list).post(create))
        .route("/pipelines/{id}", get(show).put(replace).delete(delete))
        .route("/pipelines/{id}/status", get(status))
        .route("/pipelines/{id}/{action}", post(control))
        .route("/pipelines/{id}/rate", put(rate))
        .route("/workers", get(workers))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

/// A control database failure as a response: 503 while it is unreachable.
fn store_error(e: Error) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn not_found(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no pipeline {id:?}"))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// A request refused with a JSON body.
type Refusal = (StatusCode, Json<Value>);

/// The config text of a create or replace: the body as TOML, or `{"config": "<toml>"}`.
fn config_text(body: &str) -> Result<String, Refusal> {
    if !body.trim_start().starts_with('{') {
        return Ok(body.to_string());
    }
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("config")?.as_str().map(str::to_string))
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "body must be the pipeline's TOML, or JSON {\"config\": \"<toml>\"}" })),
            )
        })
}

/// Validates a pipeline config as `strait config check` does; a 400 names the line and key.
fn validate(text: &str) -> Result<PipelineConfig, Refusal> {
    PipelineConfig::parse(text, Path::new("pipeline")).map_err(|e| {
        let (line, key) = match &e {
            ConfigError::Parse { line, message, .. } => (
                Some(*line),
                message
                    .split_once('`')
                    .and_then(|(_, r)| r.split_once('`'))
                    .map(|(k, _)| k.to_string()),
            ),
            ConfigError::Invalid { line, key, .. } => (Some(*line), Some(key.clone())),
            ConfigError::Read { .. } => (None, None),
        };
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": e.to_string(), "line": line, "key": key })),
        )
    })
}

/// One row of `GET /pipelines`: the stored record joined with its holder and status.
async fn views(w: &Worker, only: Option<&str>) -> crate::error::Result<Vec<Value>> {
    let (records, statuses, holders) =
        tokio::join!(w.store.pipelines(), w.store.statuses(), w.store.holders());
    let (records, statuses, holders) = (records?, statuses?, holders?);
    let now = bson::DateTime::now().timestamp_millis();
    Ok(records
        .into_iter()
        .filter(|r| only.is_none_or(|id| id == r.id))
        .map(|r| {
            let holder = holders.get(&r.id).map(|h| Worker::worker_of(h).to_string());
            let published = w.live_status(&r.id, &statuses, &holders);
            let status: Value = published
                .and_then(|s| serde_json::from_str(s.get_str("status").ok()?).ok())
                .unwrap_or(Value::Null);
            let progress: Value = published
                .and_then(|s| serde_json::from_str(s.get_str("progress").ok()?).ok())
                .unwrap_or(json!([]));
            // A holder publishes every second; one silent for longer has likely died, and its
            // pipelines move once its leases expire.
            let silent_ms = published
                .and_then(|s| s.get_datetime("at").ok())
                .map(|at| now - at.timestamp_millis())
                .filter(|ms| *ms > 3 * TICK.as_millis() as i64);
            let state = match (&holder, status.get("state").and_then(Value::as_str)) {
                (None, _) => "unassigned",
                (Some(_), _) if silent_ms.is_some() => "unresponsive",
                (Some(_), Some(s)) => s,
                (Some(_), None) => "starting",
            };
            let error = match (silent_ms, &holder) {
                (Some(ms), Some(h)) => json!(format!(
                    "worker {h} has not reported for {:.0} s; its pipelines move to another worker when their leases expire",
                    ms as f64 / 1000.0
                )),
                _ => status
                    .get("reason")
                    .filter(|v| !v.is_null())
                    .or_else(|| status.pointer("/errors/last"))
                    .cloned()
                    .unwrap_or(Value::Null),
            };
            json!({
                "id": r.id,
                "state": state,
                "worker": holder,
                "version": r.version,
                "running_version": published.and_then(|s| s.get_i64("version").ok()),
                "paused": r.paused,
                "rate_limit": status.get("rate_limit").cloned().unwrap_or(json!(r.rate.unwrap_or(0))),
                "rate_ops": published.and_then(|s| s.get_f64("rate_ops").ok()).unwrap_or(0.0),
                "lag_seconds": status.get("lag_seconds").cloned().unwrap_or(Value::Null),
                "read": status.get("read").cloned().unwrap_or(json!(0)),
                "applied": status.get("applied").cloned().unwrap_or(Value::Null),
                "error": error,
                "progress": progress,
                "status": status,
            })
        })
        .collect())
}

async fn list(State(api): State<Api>) -> Response {
    match views(&api.worker, None).await {
        Ok(mut v) => {
            for p in &mut v {
                if let Some(o) = p.as_object_mut() {
                    o.remove("status");
                }
            }
            Json(v).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn create(State(api): State<Api>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = unauthorized(api.token.as_deref(), &headers) {
        return r;
    }
    let (text, cfg) = match config_text(&body).and_then(|t| Ok((validate(&t)?, t))) {
        Ok((c, t)) => (t, c),
        Err(r) => return r.into_response(),
    };
    match api.worker.store.create(&cfg.id, &text, parsed(&cfg)).await {
        Ok(true) => (
            StatusCode::CREATED,
            Json(json!({ "id": cfg.id, "version": 1 })),
        )
            .into_response(),
        Ok(false) => error(
            StatusCode::CONFLICT,
            format!(
                "pipeline {:?} exists; PUT /pipelines/{} replaces its config",
                cfg.id, cfg.id
            ),
        ),
        Err(e) => store_error(e),
    }
}

async fn show(State(api): State<Api>, UrlPath(id): UrlPath<String>) -> Response {
    let record = match api.worker.store.pipeline(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(&id),
        Err(e) => return store_error(e),
    };
    let view = match views(&api.worker, Some(&id)).await {
        Ok(mut v) => v.pop().unwrap_or(Value::Null),
        Err(e) => return store_error(e),
    };
    let config = PipelineConfig::parse(&record.config, Path::new(&id))
        .map(|c| c.redacted())
        .unwrap_or_else(|e| format!("# does not parse: {e}"));
    Json(json!({
        "id": record.id,
        "version": record.version,
        "paused": record.paused,
        "rate": record.rate,
        "worker": view["worker"],
        "state": view["state"],
        "config": config,
    }))
    .into_response()
}

async fn replace(
    State(api): State<Api>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(r) = unauthorized(api.token.as_deref(), &headers) {
        return r;
    }
    let (text, cfg) = match config_text(&body).and_then(|t| Ok((validate(&t)?, t))) {
        Ok((c, t)) => (t, c),
        Err(r) => return r.into_response(),
    };
    if cfg.id != id {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": format!("id = {:?} in the config, but the URL names {id:?}", cfg.id),
                "key": "id",
            })),
        )
            .into_response();
    }
    match api.worker.store.replace(&id, &text, parsed(&cfg)).await {
        Ok(r) => {
            let code = if r.version == 1 {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, Json(json!({ "id": r.id, "version": r.version }))).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn delete(
    State(api): State<Api>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = unauthorized(api.token.as_deref(), &headers) {
        return r;
    }
    match api.worker.store.delete(&id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&id),
        Err(e) => store_error(e),
    }
}

async fn status(State(api): State<Api>, UrlPath(id): UrlPath<String>) -> Response {
    match views(&api.worker, Some(&id)).await {
        Ok(mut v) => match v.pop() {
            Some(view) => {
                let mut s = match &view["status"] {
                    Value::Object(_) => view["status"].clone(),
                    _ => json!({ "pipeline": id }),
                };
                s["state"] = view["state"].clone();
                s["worker"] = view["worker"].clone();
                s["version"] = view["version"].clone();
                s["running_version"] = view["running_version"].clone();
                s["progress"] = view["progress"].clone();
                s["rate_ops"] = view["rate_ops"].clone();
                Json(s).into_response()
            }
            None => not_found(&id),
        },
        Err(e) => store_error(e),
    }
}

/// Applies `update` to the pipeline's record, after the token check.
async fn change(
    api: &Api,
    headers: &HeaderMap,
    id: &str,
    update: bson::Document,
    ok: Value,
) -> Response {
    if let Some(r) = unauthorized(api.token.as_deref(), headers) {
        return r;
    }
    match api.worker.store.update(id, update).await {
        Ok(true) => Json(ok).into_response(),
        Ok(false) => not_found(id),
        Err(e) => store_error(e),
    }
}

/// `POST /pipelines/{id}/pause|resume|restart`.
async fn control(
    State(api): State<Api>,
    UrlPath((id, action)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (update, ok) = match action.as_str() {
        "pause" => (
            doc! { "$set": { "paused": true } },
            json!({ "paused": true }),
        ),
        "resume" => (
            doc! { "$set": { "paused": false } },
            json!({ "paused": false }),
        ),
        "restart" => (
            doc! { "$inc": { "restarts": 1_i64 } },
            json!({ "restarting": true }),
        ),
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no action {other:?} (pause, resume, restart)"),
            )
        }
    };
    change(&api, &headers, &id, update, ok).await
}

async fn rate(
    State(api): State<Api>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    // The token is checked before the body, so a caller without it learns nothing more.
    if let Some(r) = unauthorized(api.token.as_deref(), &headers) {
        return r;
    }
    let Some(n) = parse_rate(&body) else {
        return bad_rate();
    };
    change(
        &api,
        &headers,
        &id,
        doc! { "$set": { "rate": n.min(i64::MAX as u64) as i64 } },
        json!({ "ops_per_sec": n }),
    )
    .await
}

async fn workers(State(api): State<Api>) -> Response {
    let w = match api.worker.store.workers().await {
        Ok(w) => w,
        Err(e) => return store_error(e),
    };
    let now = bson::DateTime::now().timestamp_millis();
    Json(
        w.into_iter()
            .map(|w| {
                let age = now - w.heartbeat.timestamp_millis();
                json!({
                    "id": w.id,
                    "url": w.url,
                    "alive": api.worker.is_recent(w.heartbeat),
                    "heartbeat_seconds_ago": age as f64 / 1000.0,
                    "max_pipelines": w.max_pipelines,
                    "pipelines": w.running,
                })
            })
            .collect::<Vec<_>>(),
    )
    .into_response()
}

/// Every pipeline of the group: those running here from their live counters, the others from
/// what their workers published in the last second. `?local=true`: only those running here
/// (for a Prometheus that scrapes every worker).
async fn metrics(State(api): State<Api>, uri: axum::http::Uri) -> Response {
    let local_only = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "local=true" || p == "local=1"));
    let here = api.worker.running();
    let mut texts: Vec<String> = here
        .iter()
        .map(|(id, s)| super::worker::pipeline_metrics(id, s))
        .collect();
    if !local_only {
        let (statuses, holders) =
            match tokio::try_join!(api.worker.store.statuses(), api.worker.store.holders()) {
                Ok(v) => v,
                Err(e) => return store_error(e),
            };
        let mut elsewhere: Vec<&String> = statuses
            .keys()
            .filter(|id| !here.iter().any(|(h, _)| h == *id))
            .collect();
        elsewhere.sort();
        texts.extend(elsewhere.into_iter().filter_map(|id| {
            let s = api.worker.live_status(id, &statuses, &holders)?;
            s.get_str("metrics").ok().map(str::to_string)
        }));
    }
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::merge(&texts),
    )
        .into_response()
}
