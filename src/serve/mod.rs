//! `strait serve`: one worker of a group that runs many pipelines, managed over REST, like
//! Kafka Connect's distributed mode. Pipeline configs live in a MongoDB control database that
//! every worker of the group reads; each pipeline runs on exactly one worker at a time, the one
//! holding its lease (the engine's [`Lease`](crate::engine::lease::Lease)); when a worker
//! dies, its leases expire and the other workers take its pipelines over from their
//! checkpoints. Each pipeline runs under the same [`Supervisor`](crate::engine::supervisor)
//! as `strait run`.

mod api;
pub mod config;
mod store;
mod tls;
mod worker;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::connectors::mongo::connect::connect;
use crate::error::{Result, Role};
pub use config::ServerConfig;
use store::ControlStore;
use worker::Worker;

/// Runs one worker until `stop`: then every pipeline on it drains and checkpoints, and its
/// leases are given up so the other workers take them at once.
pub async fn serve(cfg: ServerConfig, stop: CancellationToken) -> Result<()> {
    let client = connect(&cfg.control_endpoint(), Role::Control).await?;
    let store = ControlStore::new(client.database(&cfg.control.database));
    let name = cfg.worker_name();
    let worker = Arc::new(Worker::new(
        name.clone(),
        store,
        cfg.lease_ttl,
        cfg.max_pipelines,
    ));
    wait_for_namesake(&worker, &stop).await?;
    let api_stop = CancellationToken::new();
    let (addr, https, api) = api::serve(&cfg.api, worker.clone(), api_stop.clone()).await?;
    let url = format!("{}://{addr}", if https { "https" } else { "http" });
    *worker.url.lock().expect("url lock") = url.clone();
    info!(worker = %name, %url, database = %cfg.control.database, "Worker started; REST API and status page listening.");
    worker.run(stop).await;
    api_stop.cancel();
    let _ = api.await;
    info!(worker = %name, "Worker stopped.");
    Ok(())
}

/// Two live workers must not share a name (their heartbeats would overwrite each other): a
/// worker whose name was heard from within the lease TTL waits for that record to age out.
async fn wait_for_namesake(worker: &Worker, stop: &CancellationToken) -> Result<()> {
    let mut announced = false;
    loop {
        let live = worker
            .store
            .workers()
            .await?
            .into_iter()
            .any(|w| w.id == worker.name && worker.is_recent(w.heartbeat));
        if !live {
            return Ok(());
        }
        if !announced {
            info!(worker = %worker.name, "A worker with this name was alive moments ago; waiting for its heartbeat to age out (set worker_id to run two workers on one host).");
            announced = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(worker::TICK) => {}
        }
    }
}
