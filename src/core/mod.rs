//! The pure core: the event model, source positions, the ack window and the error class.
//! Nothing here knows about configuration, runtime tasks or any connector.

pub mod ack;
pub mod event;
pub mod pattern;
pub mod position;

pub use ack::AckWindow;
pub use event::{ChangeEvent, EventError, Namespace, OpType};
pub use position::{PartId, Position};

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad config, bad credentials, missing objects: the user must change something.
    User,
    /// A server or network failed; it may recover.
    External,
    /// A bug in strait.
    Internal,
}
