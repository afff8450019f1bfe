//! Versions of documents and the last-writer-wins rule.

/// The version of a document's state: when the change that made it happened (`wallTime`,
/// milliseconds) and on which cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version {
    /// Milliseconds since the epoch.
    pub(crate) t: i64,
    /// The cluster's name.
    pub(crate) origin: String,
}

impl Version {
    pub(crate) fn new(t: i64, origin: &str) -> Self {
        Self {
            t,
            origin: origin.to_string(),
        }
    }

    /// Whether this version wins over `other`: the later one, and on a tie the one from
    /// `first`.
    pub(crate) fn beats(&self, other: &Version, first: &str) -> bool {
        (self.t, self.origin == first) > (other.t, other.origin == first)
    }
}

/// What to do with an incoming change.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write it.
    Apply,
    /// Drop it quietly: the target already holds this change or a later one from the same
    /// cluster (a replay after a restart).
    Replay,
    /// Drop it and record the conflict: the target holds a later change from the other
    /// cluster.
    Lost,
}

/// Decides an incoming change against the target document's version (`None`: unknown to
/// strait and not changed recently, or absent). `rising`: one cluster's versions rise in its
/// change log's order (`wallTime`), so an older one from the same cluster is a replay; with
/// versions the applications write (`version_field`) they need not, and a change from the
/// same cluster as the current version is always applied (replays come in order and end
/// where the first pass ended).
pub(crate) fn decide(
    incoming: &Version,
    current: Option<&Version>,
    first: &str,
    rising: bool,
) -> Decision {
    match current {
        None => Decision::Apply,
        // One cluster's changes arrive in its order: equal times are consecutive changes.
        Some(c) if c.origin == incoming.origin => {
            if incoming.t >= c.t || !rising {
                Decision::Apply
            } else {
                Decision::Replay
            }
        }
        Some(c) if incoming.beats(c, first) => Decision::Apply,
        Some(_) => Decision::Lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_wins_and_the_first_cluster_wins_ties() {
        let a = |t| Version::new(t, "a");
        let b = |t| Version::new(t, "b");
        assert_eq!(decide(&a(5), None, "a", true), Decision::Apply);
        assert_eq!(decide(&a(5), Some(&b(4)), "a", true), Decision::Apply);
        assert_eq!(decide(&a(5), Some(&b(6)), "a", true), Decision::Lost);
        assert_eq!(decide(&a(5), Some(&b(5)), "a", true), Decision::Apply);
        assert_eq!(decide(&b(5), Some(&a(5)), "a", true), Decision::Lost);
        // Same origin: in order, ties included; older means a replay.
        assert_eq!(decide(&a(5), Some(&a(5)), "a", true), Decision::Apply);
        assert_eq!(decide(&a(4), Some(&a(5)), "a", true), Decision::Replay);
        assert!(b(6).beats(&a(5), "a") && !a(5).beats(&b(6), "a"));
        // Versions written by applications need not rise: the same cluster's change applies.
        assert_eq!(decide(&a(4), Some(&a(5)), "a", false), Decision::Apply);
        assert_eq!(decide(&a(5), Some(&b(6)), "a", false), Decision::Lost);
    }
}
