//! Checkpoints in a MongoDB collection (by default on the sink, database `strait`).

use bson::{doc, Document};
use mongodb::options::{Acknowledgment, WriteConcern};
use mongodb::Collection;

use super::{Checkpoint, CheckpointError};

/// A checkpoint collection; one document per pipeline, `_id` = pipeline id.
#[derive(Debug, Clone)]
pub struct MongoStore {
    coll: Collection<Document>,
    db: mongodb::Database,
}

impl MongoStore {
    /// A store in `db.coll` of `client`.
    pub fn new(client: &mongodb::Client, db: &str, coll: &str) -> Self {
        let wc = WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            .build();
        let coll = client.database(db).collection_with_options(
            coll,
            mongodb::options::CollectionOptions::builder()
                .write_concern(wc)
                .build(),
        );
        Self {
            coll,
            db: client.database(db),
        }
    }

    pub(super) async fn load(&self, pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        match self.coll.find_one(doc! { "_id": pipeline }).await? {
            Some(d) => Ok(Some(Checkpoint::from_document(d)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn save(&self, ckpt: &Checkpoint) -> Result<(), CheckpointError> {
        let d = ckpt.to_document()?;
        self.coll
            .replace_one(doc! { "_id": &ckpt.pipeline }, d)
            .upsert(true)
            .await?;
        Ok(())
    }

    pub(super) async fn reset(&self, pipeline: &str) -> Result<bool, CheckpointError> {
        Ok(self
            .coll
            .delete_one(doc! { "_id": pipeline })
            .await?
            .deleted_count
            > 0)
    }

    /// The checkpoint database (where leases live too).
    pub fn database(&self) -> &mongodb::Database {
        &self.db
    }

    pub(super) fn describe(&self) -> String {
        format!("collection {}", self.coll.namespace())
    }
}
