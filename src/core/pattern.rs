//! Namespace patterns of scope rules: `db.coll`, `db.*` or `/regex/`.

use regex::Regex;

/// A pattern that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// Not `db.coll`, `db.*` or `/regex/`.
    #[error("expected \"db.coll\", \"db.*\" or \"/regex/\"")]
    Shape,
    /// The regex does not compile.
    #[error("bad regex: {0}")]
    Regex(#[from] regex::Error),
}

/// One include or exclude pattern.
#[derive(Debug, Clone)]
pub enum NamespacePattern {
    /// `db.coll`.
    Exact(String, String),
    /// `db.*`.
    Database(String),
    /// `/regex/`, matched against `db.coll`.
    Regex(Regex),
}

impl NamespacePattern {
    /// Parses `db.coll`, `db.*` or `/regex/`.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
            return Ok(NamespacePattern::Regex(Regex::new(&s[1..s.len() - 1])?));
        }
        match s.split_once('.') {
            Some((db, "*")) if !db.is_empty() => Ok(NamespacePattern::Database(db.to_string())),
            Some((db, coll)) if !db.is_empty() && !coll.is_empty() && !coll.contains('*') => {
                Ok(NamespacePattern::Exact(db.to_string(), coll.to_string()))
            }
            _ => Err(PatternError::Shape),
        }
    }

    /// Whether `db.coll` matches.
    pub fn matches(&self, db: &str, coll: &str) -> bool {
        match self {
            NamespacePattern::Exact(d, c) => d == db && c == coll,
            NamespacePattern::Database(d) => d == db,
            NamespacePattern::Regex(r) => r.is_match(&format!("{db}.{coll}")),
        }
    }

    /// Whether the pattern names this database literally (not by regex).
    pub(crate) fn names_db(&self, db: &str) -> bool {
        match self {
            NamespacePattern::Exact(d, _) | NamespacePattern::Database(d) => d == db,
            NamespacePattern::Regex(_) => false,
        }
    }
}
