//! Destinations of change events. Each sink acknowledges a write only once it is durable.

pub mod archive;
pub mod kafka;
pub mod mongo;
