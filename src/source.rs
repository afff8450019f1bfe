//! Where change events come from.

pub mod kafka;
pub mod mongo;
