//! Namespace renames: `a.b -> c.d` for a collection, `a -> c` for a whole database.

use std::collections::{BTreeMap, HashMap};

use crate::core::event::Namespace;

/// Maps source namespaces to target namespaces.
#[derive(Debug, Clone, Default)]
pub struct Renamer {
    colls: HashMap<(String, String), (String, String)>,
    dbs: HashMap<String, String>,
}

impl Renamer {
    /// Builds a renamer from validated `rename` rules.
    pub fn new(rules: &BTreeMap<String, String>) -> Self {
        let mut r = Renamer::default();
        for (from, to) in rules {
            match (from.split_once('.'), to.split_once('.')) {
                (Some((fd, fc)), Some((td, tc))) => {
                    r.colls
                        .insert((fd.into(), fc.into()), (td.into(), tc.into()));
                }
                _ => {
                    r.dbs.insert(from.clone(), to.clone());
                }
            }
        }
        r
    }

    /// Whether no rule is configured.
    pub fn is_identity(&self) -> bool {
        self.colls.is_empty() && self.dbs.is_empty()
    }

    /// The target of `ns`; a collection rule wins over a database rule.
    pub fn map(&self, ns: &Namespace) -> Namespace {
        if let Some(coll) = &ns.coll {
            if let Some((d, c)) = self.colls.get(&(ns.db.clone(), coll.clone())) {
                return Namespace::new(d, Some(c.as_str()));
            }
        }
        match self.dbs.get(&ns.db) {
            Some(d) => Namespace {
                db: d.clone(),
                coll: ns.coll.clone(),
            },
            None => ns.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_rule_wins_over_database_rule() {
        let mut rules = BTreeMap::new();
        rules.insert("a.b".to_string(), "c.d".to_string());
        rules.insert("a".to_string(), "z".to_string());
        let r = Renamer::new(&rules);
        assert_eq!(
            r.map(&Namespace::new("a", Some("b"))),
            Namespace::new("c", Some("d"))
        );
        assert_eq!(
            r.map(&Namespace::new("a", Some("x"))),
            Namespace::new("z", Some("x"))
        );
        assert_eq!(
            r.map(&Namespace::new("q", Some("x"))),
            Namespace::new("q", Some("x"))
        );
        assert_eq!(r.map(&Namespace::new("a", None)), Namespace::new("z", None));
    }
}
