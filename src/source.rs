//! Where change events come from.

pub mod mongo;
