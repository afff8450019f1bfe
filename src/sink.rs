//! Destinations of change events. Each sink acknowledges a write only once it is durable.

pub mod archive;
pub mod mongo;
