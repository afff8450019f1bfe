//! Shard lineage: which shards of a stream may be read now. A shard is read only after its
//! parents (one after a split, two after a Kinesis merge) are read to their end and that end is
//! durable, so one item's changes, which move from a parent to a child when shards split or
//! merge, are applied in order.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

/// A shard as the stream lists it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListedShard {
    /// Its id.
    pub(crate) id: String,
    /// The shards it was split or merged from (none, one, or two after a merge).
    pub(crate) parents: Vec<String>,
    /// Whether it is closed (it has an ending sequence number): read to its end, it is done.
    pub(crate) closed: bool,
}

/// How far a shard has been read, as saved in the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShardProgress {
    /// The last sequence number applied; reading goes on after it. None: from the shard's
    /// oldest record.
    #[serde(default)]
    pub(crate) after: Option<String>,
    /// Records created before this time (milliseconds since the epoch) are passed over: they
    /// are older than the full sync's scan (or the configured start).
    #[serde(default)]
    pub(crate) skip_before_ms: Option<i64>,
    /// Read to its end and durable.
    #[serde(default)]
    pub(crate) done: bool,
}

/// A shard whose unread records are gone: it is not listed any more (older than the stream's
/// retention) but was not read to its end.
#[derive(Debug, PartialEq)]
pub(crate) struct LostShard(pub(crate) String);

/// The shards to start reading now: listed, not done, not being read, and whose parent is
/// done (or was never seen and is no longer listed: older than anything saved). A shard whose
/// progress is saved but that is no longer listed while unfinished is lost.
pub(crate) fn ready(
    listed: &[ListedShard],
    progress: &BTreeMap<String, ShardProgress>,
    reading: &HashSet<String>,
) -> Result<Vec<String>, LostShard> {
    let listed_ids: HashSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    for (id, p) in progress {
        if !p.done && !listed_ids.contains(id.as_str()) {
            return Err(LostShard(id.clone()));
        }
    }
    let parent_done = |p: &String| match progress.get(p) {
        Some(pp) => pp.done,
        // Not saved: either listed (it is read first) or gone before it was ever seen.
        None => !listed_ids.contains(p.as_str()),
    };
    Ok(listed
        .iter()
        .filter(|s| !progress.get(&s.id).is_some_and(|p| p.done))
        .filter(|s| !reading.contains(&s.id))
        .filter(|s| s.parents.iter().all(parent_done))
        .map(|s| s.id.clone())
        .collect())
}

/// Forgets shards that are done and no longer listed (older than the stream's retention), so
/// the checkpoint does not grow with every shard the table ever had (DynamoDB opens new shards
/// every few hours). A child whose parent is forgotten reads as before: a parent neither saved
/// nor listed counts as done.
pub(crate) fn forget_gone(listed: &[ListedShard], progress: &mut BTreeMap<String, ShardProgress>) {
    let listed_ids: HashSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    progress.retain(|id, p| !p.done || listed_ids.contains(id.as_str()));
}

/// The progress to start from when nothing is saved: closed shards are done when only changes
/// from `since_ms` on are wanted and `closed_are_older` (a shard closed now holds only older
/// changes), open shards skip records before `since_ms`.
pub(crate) fn initial(
    listed: &[ListedShard],
    since_ms: Option<i64>,
    closed_are_older: bool,
) -> BTreeMap<String, ShardProgress> {
    listed
        .iter()
        .map(|s| {
            let p = ShardProgress {
                after: None,
                skip_before_ms: since_ms,
                done: s.closed && closed_are_older,
            };
            (s.id.clone(), p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parent: Option<&str>, closed: bool) -> ListedShard {
        ListedShard {
            id: id.into(),
            parents: parent.map(str::to_string).into_iter().collect(),
            closed,
        }
    }

    fn done() -> ShardProgress {
        ShardProgress {
            done: true,
            ..Default::default()
        }
    }

    #[test]
    fn children_wait_for_their_parent_to_be_done() {
        // P split into A and B; A split again into C.
        let listed = vec![
            shard("P", None, true),
            shard("A", Some("P"), true),
            shard("B", Some("P"), false),
            shard("C", Some("A"), false),
        ];
        let mut progress = BTreeMap::new();
        let reading = HashSet::new();
        assert_eq!(ready(&listed, &progress, &reading).unwrap(), ["P"]);
        progress.insert("P".to_string(), ShardProgress::default());
        let busy: HashSet<String> = ["P".to_string()].into();
        assert!(ready(&listed, &progress, &busy).unwrap().is_empty());
        progress.insert("P".to_string(), done());
        assert_eq!(ready(&listed, &progress, &reading).unwrap(), ["A", "B"]);
        progress.insert("A".to_string(), done());
        assert_eq!(ready(&listed, &progress, &reading).unwrap(), ["B", "C"]);
    }

    #[test]
    fn a_merged_shard_waits_for_both_parents() {
        let listed = vec![
            shard("A", None, true),
            shard("B", None, true),
            ListedShard {
                id: "M".into(),
                parents: vec!["A".into(), "B".into()],
                closed: false,
            },
        ];
        let mut progress = BTreeMap::new();
        assert_eq!(
            ready(&listed, &progress, &HashSet::new()).unwrap(),
            ["A", "B"]
        );
        progress.insert("A".to_string(), done());
        let busy: HashSet<String> = ["B".to_string()].into();
        assert!(ready(&listed, &progress, &busy).unwrap().is_empty());
        progress.insert("B".to_string(), done());
        assert_eq!(ready(&listed, &progress, &HashSet::new()).unwrap(), ["M"]);
    }

    #[test]
    fn a_parent_gone_before_it_was_seen_does_not_block() {
        // The parent aged out of the stream before strait started.
        let listed = vec![shard("B", Some("P"), false)];
        let progress = BTreeMap::new();
        assert_eq!(ready(&listed, &progress, &HashSet::new()).unwrap(), ["B"]);
    }

    #[test]
    fn an_unfinished_shard_that_disappeared_is_lost() {
        let listed = vec![shard("B", Some("P"), false)];
        let progress: BTreeMap<_, _> = [(
            "P".to_string(),
            ShardProgress {
                after: Some("100".into()),
                ..Default::default()
            },
        )]
        .into();
        assert_eq!(
            ready(&listed, &progress, &HashSet::new()),
            Err(LostShard("P".into()))
        );
        // Done and gone is fine.
        let progress: BTreeMap<_, _> = [("P".to_string(), done())].into();
        assert_eq!(ready(&listed, &progress, &HashSet::new()).unwrap(), ["B"]);
    }

    #[test]
    fn done_shards_that_aged_out_are_forgotten_without_changing_what_is_ready() {
        let listed = vec![shard("B", Some("P"), false), shard("C", Some("B"), false)];
        let mut progress: BTreeMap<_, _> = [
            ("P".to_string(), done()),
            ("Q".to_string(), done()),
            ("B".to_string(), ShardProgress::default()),
        ]
        .into();
        let before = ready(&listed, &progress, &HashSet::new()).unwrap();
        forget_gone(&listed, &mut progress);
        assert_eq!(progress.keys().collect::<Vec<_>>(), ["B"]);
        assert_eq!(ready(&listed, &progress, &HashSet::new()).unwrap(), before);
        // An unfinished shard that is gone is kept: it is a lost position, not history.
        let mut progress: BTreeMap<_, _> = [("P".to_string(), ShardProgress::default())].into();
        forget_gone(&listed, &mut progress);
        assert!(progress.contains_key("P"));
    }

    #[test]
    fn the_first_start_skips_what_the_scan_already_holds() {
        let listed = vec![shard("P", None, true), shard("A", Some("P"), false)];
        let p = initial(&listed, Some(1_000), true);
        assert!(p["P"].done);
        assert_eq!(p["A"].skip_before_ms, Some(1_000));
        assert!(!p["A"].done);
        // A start at a past time reads closed shards too.
        let p = initial(&listed, Some(1_000), false);
        assert!(!p["P"].done);
        assert_eq!(ready(&listed, &p, &HashSet::new()).unwrap(), ["P"]);
    }
}
