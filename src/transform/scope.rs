//! Namespace selection: include and exclude patterns.

use crate::config::ScopeConfig;
use crate::core::event::Namespace;

/// Databases never replicated unless named exactly.
const SYSTEM_DBS: [&str; 3] = ["admin", "local", "config"];

pub use crate::core::pattern::{NamespacePattern, PatternError};

/// The compiled scope of a pipeline.
#[derive(Debug, Clone)]
pub struct Scope {
    include: Vec<NamespacePattern>,
    exclude: Vec<NamespacePattern>,
    meta_db: String,
}

impl Scope {
    /// Compiles a validated scope config. `meta_db` is strait's own database.
    pub fn from_config(cfg: &ScopeConfig, meta_db: &str) -> Self {
        let parse = |v: &Vec<String>| {
            v.iter()
                .filter_map(|p| NamespacePattern::parse(p).ok())
                .collect::<Vec<_>>()
        };
        Scope {
            include: parse(&cfg.include),
            exclude: parse(&cfg.exclude),
            meta_db: meta_db.to_string(),
        }
    }

    /// Whether a collection is replicated.
    pub fn includes(&self, ns: &Namespace) -> bool {
        let Some(coll) = ns.coll.as_deref() else {
            return self.may_include_db(&ns.db);
        };
        let db = ns.db.as_str();
        let protected =
            SYSTEM_DBS.contains(&db) || db == self.meta_db || coll.starts_with("system.");
        if protected
            && !self
                .include
                .iter()
                .any(|p| p.names_db(db) && p.matches(db, coll))
        {
            return false;
        }
        let included = self.include.is_empty() || self.include.iter().any(|p| p.matches(db, coll));
        included && !self.exclude.iter().any(|p| p.matches(db, coll))
    }

    /// Whether some collection of this database could be replicated.
    pub fn may_include_db(&self, db: &str) -> bool {
        let protected = SYSTEM_DBS.contains(&db) || db == self.meta_db;
        if protected {
            return self.include.iter().any(|p| p.names_db(db));
        }
        if self
            .exclude
            .iter()
            .any(|p| matches!(p, NamespacePattern::Database(d) if d == db))
        {
            return false;
        }
        self.include.is_empty()
            || self.include.iter().any(|p| match p {
                NamespacePattern::Exact(d, _) | NamespacePattern::Database(d) => d == db,
                NamespacePattern::Regex(_) => true,
            })
    }

    /// Whether every collection of `db` is replicated (so dropping the whole database on the
    /// target is right; otherwise the per-collection drop events that precede a
    /// `dropDatabase` do the work).
    pub fn covers_whole_db(&self, db: &str) -> bool {
        let protected = SYSTEM_DBS.contains(&db) || db == self.meta_db;
        let included = if protected {
            self.include
                .iter()
                .any(|p| matches!(p, NamespacePattern::Database(d) if d == db))
        } else {
            self.include.is_empty()
                || self
                    .include
                    .iter()
                    .any(|p| matches!(p, NamespacePattern::Database(d) if d == db))
        };
        let excluded = self.exclude.iter().any(|p| match p {
            NamespacePattern::Exact(d, _) | NamespacePattern::Database(d) => d == db,
            NamespacePattern::Regex(_) => true,
        });
        included && !excluded
    }

    /// Exactly named collections (`db.coll` includes), which must exist at start-up.
    pub fn exact_includes(&self) -> Vec<Namespace> {
        self.include
            .iter()
            .filter_map(|p| match p {
                NamespacePattern::Exact(d, c) => Some(Namespace::new(d, Some(c))),
                _ => None,
            })
            .collect()
    }

    /// The narrowest change stream that sees every included namespace: one collection, one
    /// database, or the whole cluster.
    pub fn watch_target(&self) -> WatchTarget {
        let mut dbs: Vec<&str> = Vec::new();
        let mut exact: Vec<(&str, &str)> = Vec::new();
        for p in &self.include {
            match p {
                NamespacePattern::Exact(d, c) => {
                    dbs.push(d);
                    exact.push((d, c));
                }
                NamespacePattern::Database(d) => dbs.push(d),
                NamespacePattern::Regex(_) => return WatchTarget::Cluster,
            }
        }
        dbs.sort();
        dbs.dedup();
        match (dbs.as_slice(), exact.as_slice()) {
            ([db], [(_, c)]) if self.include.len() == 1 => {
                WatchTarget::Collection(Namespace::new(db, Some(c)))
            }
            ([db], _) => WatchTarget::Database(db.to_string()),
            _ => WatchTarget::Cluster,
        }
    }
}

/// Which change stream to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchTarget {
    /// `client.watch()`.
    Cluster,
    /// `db.watch()`.
    Database(String),
    /// `coll.watch()`.
    Collection(Namespace),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(inc: &[&str], exc: &[&str]) -> Scope {
        let cfg = ScopeConfig {
            include: inc.iter().map(|s| s.to_string()).collect(),
            exclude: exc.iter().map(|s| s.to_string()).collect(),
            allow_missing: false,
        };
        Scope::from_config(&cfg, "strait")
    }
    fn ns(db: &str, c: &str) -> Namespace {
        Namespace::new(db, Some(c))
    }

    #[test]
    fn empty_include_means_user_namespaces_only() {
        let s = scope(&[], &[]);
        assert!(s.includes(&ns("shop", "orders")));
        for db in ["admin", "local", "config", "strait"] {
            assert!(!s.includes(&ns(db, "x")), "{db}");
        }
        assert!(!s.includes(&ns("shop", "system.views")));
        assert_eq!(s.watch_target(), WatchTarget::Cluster);
    }

    #[test]
    fn exact_database_regex_and_exclude() {
        let s = scope(
            &["shop.*", "crm.users", "/^logs\\.2024/"],
            &["shop.tmp", "/_bak$/"],
        );
        assert!(s.includes(&ns("shop", "orders")));
        assert!(!s.includes(&ns("shop", "tmp")));
        assert!(!s.includes(&ns("shop", "orders_bak")));
        assert!(s.includes(&ns("crm", "users")));
        assert!(!s.includes(&ns("crm", "leads")));
        assert!(s.includes(&ns("logs", "2024_01")));
        assert!(!s.includes(&ns("logs", "2023_01")));
    }

    #[test]
    fn system_databases_need_an_exact_include() {
        assert!(!scope(&["/.*/"], &[]).includes(&ns("admin", "x")));
        assert!(scope(&["admin.x"], &[]).includes(&ns("admin", "x")));
        assert!(scope(&["config.*"], &[]).includes(&ns("config", "x")));
    }

    #[test]
    fn whole_database_coverage() {
        assert!(scope(&[], &[]).covers_whole_db("shop"));
        assert!(scope(&["shop.*"], &[]).covers_whole_db("shop"));
        assert!(!scope(&["shop.orders"], &[]).covers_whole_db("shop"));
        assert!(!scope(&["shop.*"], &["shop.tmp"]).covers_whole_db("shop"));
        assert!(!scope(&[], &[]).covers_whole_db("admin"));
    }

    #[test]
    fn narrowest_watch_target() {
        assert_eq!(
            scope(&["a.b"], &[]).watch_target(),
            WatchTarget::Collection(ns("a", "b"))
        );
        assert_eq!(
            scope(&["a.b", "a.c"], &[]).watch_target(),
            WatchTarget::Database("a".into())
        );
        assert_eq!(
            scope(&["a.*"], &[]).watch_target(),
            WatchTarget::Database("a".into())
        );
        assert_eq!(
            scope(&["a.b", "c.d"], &[]).watch_target(),
            WatchTarget::Cluster
        );
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for p in ["nodot", ".x", "db.", "db.c*"] {
            assert!(NamespacePattern::parse(p).is_err(), "{p}");
        }
        assert!(NamespacePattern::parse("/(/").is_err());
    }
}
