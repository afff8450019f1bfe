//! MongoDB as a source: a snapshot of existing documents and a change stream.

pub mod snapshot;
pub mod stream;
