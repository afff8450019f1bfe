//! What happens to events between source and sink: namespace selection, renames and the
//! operation-type filter. Everything here is pure and synchronous.

pub mod rename;
pub mod scope;

use std::collections::HashSet;

use crate::config::{DataOp, PipelineConfig};
use crate::core::event::{ChangeEvent, Namespace, OpType};

/// The transforms of one pipeline, built once from its config.
#[derive(Debug, Clone)]
pub struct Transforms {
    /// Namespace selection.
    pub scope: scope::Scope,
    /// Namespace renames.
    pub rename: rename::Renamer,
    ops: HashSet<DataOp>,
    ddl: bool,
    /// Two-way sync: strait's own writes on the source cluster, which are not shipped back.
    pub(crate) echoes: Option<EchoFilter>,
}

/// Drops the events of strait's own writes (loop prevention of two-way sync).
#[derive(Clone)]
pub(crate) struct EchoFilter {
    /// Recognises strait's writes to the source cluster.
    pub(crate) echoes: std::sync::Arc<crate::two_way::echo::Echoes>,
    /// Counts what it drops.
    pub(crate) telemetry: std::sync::Arc<crate::telemetry::Telemetry>,
}

impl std::fmt::Debug for EchoFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EchoFilter({:?})", self.echoes)
    }
}

/// What to do with an event after the transforms.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it (its namespace may have been renamed).
    Apply,
    /// Drop it; only its position counts.
    Skip,
}

impl Transforms {
    /// Builds the transforms of a validated config.
    pub fn from_config(cfg: &PipelineConfig) -> Self {
        Self {
            scope: scope::Scope::from_config(&cfg.scope, &cfg.checkpoint.database),
            rename: rename::Renamer::new(&cfg.rename),
            ops: cfg.stream.ops.iter().copied().collect(),
            ddl: cfg.stream.ddl,
            echoes: None,
        }
    }

    /// Filters and renames one event in place.
    pub fn apply(&self, ev: &mut ChangeEvent) -> Verdict {
        if let Some(f) = &self.echoes {
            if f.echoes.is_echo(&ev.raw) {
                f.telemetry
                    .two_way
                    .echoes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Verdict::Skip;
            }
        }
        let wanted_op = match ev.op {
            OpType::Insert => self.ops.contains(&DataOp::Insert),
            OpType::Update => self.ops.contains(&DataOp::Update),
            OpType::Replace => self.ops.contains(&DataOp::Replace),
            OpType::Delete => self.ops.contains(&DataOp::Delete),
            OpType::Invalidate | OpType::Other(_) => false,
            _ => self.ddl,
        };
        if !wanted_op {
            return Verdict::Skip;
        }
        let in_scope = match (&ev.op, &ev.ns.coll) {
            // The drops of its collections come first; dropping the whole target database is
            // only right when all of it is replicated.
            (OpType::DropDatabase, _) => self.scope.covers_whole_db(&ev.ns.db),
            (_, None) => self.scope.may_include_db(&ev.ns.db),
            _ => self.scope.includes(&ev.ns),
        };
        if !in_scope {
            return Verdict::Skip;
        }
        if let Some(to) = &ev.rename_to {
            // A rename out of scope becomes a drop of the source; into scope from outside is
            // not replicated (the data was never copied), so skip it.
            if !self.scope.includes(to) {
                ev.op = OpType::Drop;
                ev.rename_to = None;
            } else {
                ev.rename_to = Some(self.rename.map(to));
            }
        }
        ev.ns = self.rename.map(&ev.ns);
        Verdict::Apply
    }

    /// The target namespace of a source namespace.
    pub fn target_ns(&self, ns: &Namespace) -> Namespace {
        self.rename.map(ns)
    }
}
