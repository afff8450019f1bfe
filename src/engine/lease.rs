//! Standby failover without home-made consensus: a lease document in the checkpoint database.
//!
//! The active process renews `{_id: pipeline, holder, expires}` every `ttl / 4`. A standby
//! takes the lease only once `expires` has passed. The active process stops applying as soon as
//! it has gone `ttl - ttl / 5` without a successful renewal (measured on its own monotonic clock
//! from the start of the last successful renewal), which is before any standby can take over,
//! so two processes never write at once. Clocks of the hosts must agree to well under `ttl / 5`
//! (NTP). Every acquisition and renewal is appended to `<database>.lease_log` for audit.

use std::time::{Duration, Instant};

use bson::{doc, DateTime, Document};
use mongodb::options::{Acknowledgment, CollectionOptions, WriteConcern};
use mongodb::{Collection, Database};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::connectors::mongo::driver_error::error_code;
use crate::error::{Error, Result, Role};

/// A lease on one pipeline id.
#[derive(Debug, Clone)]
pub struct Lease {
    leases: Collection<Document>,
    log: Collection<Document>,
    pipeline: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// A lease in `db` for `pipeline`, held as `holder`.
    pub fn new(db: &Database, pipeline: &str, holder: String, ttl: Duration) -> Self {
        let wc = WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            .build();
        let opts = CollectionOptions::builder().write_concern(wc).build();
        Self {
            leases: db.collection_with_options("leases", opts.clone()),
            log: db.collection_with_options("lease_log", opts),
            pipeline: pipeline.to_string(),
            holder,
            ttl,
        }
    }

    /// Takes or renews the lease. Ok(true) when held until now + ttl.
    async fn try_acquire(&self, event: &str) -> Result<bool> {
        let now = DateTime::now();
        let expires = DateTime::from_millis(now.timestamp_millis() + self.ttl.as_millis() as i64);
        let filter = doc! {
            "_id": &self.pipeline,
            "$or": [ { "holder": &self.holder }, { "expires": { "$lt": now } } ],
        };
        let update =
            doc! { "$set": { "holder": &self.holder, "expires": expires, "renewed": now } };
        let (leases, f) = (self.leases.clone(), filter);
        let res = tokio::spawn(async move { leases.update_one(f, update).upsert(true).await })
            .await
            .map_err(|e| Error::Internal(format!("lease task failed: {e}")))?;
        match res {
            Ok(_) => {
                let entry = doc! { "pipeline": &self.pipeline, "holder": &self.holder, "event": event, "at": now, "expires": expires };
                let log = self.log.clone();
                let _ = tokio::spawn(async move { log.insert_one(entry).await }).await;
                Ok(true)
            }
            // Held by someone else: the upsert's insert collides with their document.
            Err(e) if error_code(&e) == Some(11000) || e.to_string().contains("E11000") => {
                Ok(false)
            }
            Err(e) => Err(Error::mongo(Role::Checkpoint, "lease", e)),
        }
    }

    /// Takes the lease if it is free or expired, without waiting. Ok(true) when held.
    pub(crate) async fn try_take(&self) -> Result<bool> {
        self.try_acquire("acquired").await
    }

    /// Waits until this process holds the lease (or `stop`). Returns false if stopped first.
    pub async fn acquire(&self, stop: &CancellationToken) -> Result<bool> {
        let mut announced = false;
        loop {
            match self.try_acquire("acquired").await {
                Ok(true) => {
                    info!(holder = %self.holder, "Lease acquired; this process is active.");
                    return Ok(true);
                }
                Ok(false) if !announced => {
                    info!(holder = %self.holder, "Another process holds the lease; standing by.");
                    announced = true;
                }
                Ok(false) => {}
                Err(e) if e.is_retryable() => {
                    warn!(error = %e, "Lease store unreachable; retrying.")
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(false),
                _ = tokio::time::sleep(self.ttl / 4) => {}
            }
        }
    }

    /// Renews the lease until `stop`; fires `lost` (and returns) once the lease can no longer
    /// be trusted: renewal refused, or no successful renewal for `ttl - ttl/5`.
    pub async fn keep(&self, stop: CancellationToken, lost: CancellationToken) {
        let margin = self.ttl - self.ttl / 5;
        let mut valid_until = Instant::now() + margin;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.ttl / 4) => {}
            }
            let started = Instant::now();
            // Renewals are bounded so a hung store cannot outlive the lease.
            let attempt = tokio::time::timeout(
                valid_until.saturating_duration_since(started),
                self.try_acquire("renewed"),
            );
            match attempt.await {
                Ok(Ok(true)) => valid_until = started + margin,
                Ok(Ok(false)) => {
                    warn!(holder = %self.holder, "Lease taken by another process; stopping.");
                    lost.cancel();
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "Lease renewal failed."),
                Err(_) => {}
            }
            if Instant::now() >= valid_until {
                warn!(holder = %self.holder, "Lease not renewed in time; stopping before it can expire.");
                lost.cancel();
                return;
            }
        }
    }

    /// [`Lease::keep`] for a spawned task.
    pub async fn keep_owned(self, stop: CancellationToken, lost: CancellationToken) {
        self.keep(stop, lost).await
    }

    /// Gives the lease up (graceful shutdown), so a standby takes over at once.
    pub async fn release(&self) {
        let (leases, f) = (
            self.leases.clone(),
            doc! { "_id": &self.pipeline, "holder": &self.holder },
        );
        let _ = tokio::spawn(async move { leases.delete_one(f).await }).await;
        let entry = doc! { "pipeline": &self.pipeline, "holder": &self.holder, "event": "released", "at": DateTime::now() };
        let log = self.log.clone();
        let _ = tokio::spawn(async move { log.insert_one(entry).await }).await;
    }
}
