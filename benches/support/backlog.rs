//! The backlog phase of the sync bench: strait is stopped while one client writes a mixed
//! backlog to user-like documents with 7 secondary indexes (one unique, on `email`): `$set` +
//! `$inc`, `$push`, `$pull` + `$set`, `$addToSet` + `$pop`, `$rename`, `$min` / `$max` / `$mul`,
//! `$unset` + `$set`, whole replaces, changes of the unique `email` to a new value and
//! two-document transactions (with `BENCH_BACKLOG_SWAPS=1` also transactions that swap two
//! documents' emails; see [`swaps`]); then strait starts and catches up. The raw limit is the
//! same operations, already turned into writes, applied by the driver directly into a copy of
//! the same collection on the same target with strait's parallelism (8 lanes by `_id`) and
//! write concern (`w: majority`); a write of the raw apply that collides on the unique index
//! (a swap whose other half another lane has not written yet) is retried until it goes
//! through. Then, with strait running, the same writer writes `live` more operations at its
//! full rate and the phase reports the lag from its last write until the target has all of them
//! (a sentinel write to 256 documents spread over every lane, see `SENTINELS`). Source
//! and target are compared document by document, byte for byte, at the end.

use std::time::{Duration, Instant};

use bson::{doc, Document};
use mongodb::options::WriteConcern;
use mongodb::{Client, Collection};
use rand::{Rng, SeedableRng};

use super::harness::*;

/// One write of the backlog, as the raw apply replays it.
#[derive(Clone)]
enum Write {
    Update(i64, Document),
    Replace(i64, Document),
}

impl Write {
    fn id(&self) -> i64 {
        match self {
            Write::Update(i, _) | Write::Replace(i, _) => *i,
        }
    }

    /// Applies the write to `c` (`w: majority` when `majority`).
    async fn apply(&self, c: &Collection<Document>, majority: bool) -> mongodb::error::Result<()> {
        let wc = majority.then(WriteConcern::majority);
        match self {
            Write::Update(i, u) => c
                .update_one(doc! { "_id": *i }, u.clone())
                .with_options(
                    mongodb::options::UpdateOptions::builder()
                        .write_concern(wc)
                        .build(),
                )
                .await
                .map(|_| ()),
            Write::Replace(i, d) => c
                .replace_one(doc! { "_id": *i }, d.clone())
                .with_options(
                    mongodb::options::ReplaceOptions::builder()
                        .write_concern(wc)
                        .build(),
                )
                .await
                .map(|_| ()),
        }
    }
}

/// Documents the end-of-backlog sentinel writes to (see `run`): with 8 lanes, the chance
/// that one lane gets none of 256 spread `_id`s is about 8 * (7/8)^256, nil.
const SENTINELS: i64 = 256;

/// Whether the backlog swaps unique emails (`BENCH_BACKLOG_SWAPS=1`). Off by default: strait
/// repairs a swap that lanes applied out of order by setting one document aside (delete, then
/// write it again), and `secantusd-rs` keeps the unique-index entry of a deleted document's
/// updated value, so the repair never settles there (README, known limits). The swap test in
/// `tests/it/unique.rs` runs on the Python server.
fn swaps() -> bool {
    env_str("BENCH_BACKLOG_SWAPS", "0") == "1"
}

/// Whether `e` is a duplicate-key error.
fn duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(
        e.kind.as_ref(),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000
    )
}

/// Writes `ops` operations (a transaction counts as one) starting at operation number `from`;
/// returns the writes in order and how long writing took.
async fn write_backlog(
    client: &Client,
    c: &Collection<Document>,
    docs: i64,
    from: u64,
    ops: u64,
) -> (Vec<Write>, Duration) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17 + from);
    let mut writes = Vec::with_capacity(ops as usize * 7 / 6);
    let t = Instant::now();
    for n in from as i64..(from + ops) as i64 {
        let i = rng.random_range(0..docs);
        let w = match rng.random_range(0..12) {
            0 => vec![Write::Update(
                i,
                doc! { "$set": { "score": rng.random::<f64>() }, "$inc": { "orders.0.qty": 1 } },
            )],
            1 => vec![Write::Update(i, doc! { "$push": { "tags": "p" } })],
            2 => vec![Write::Update(
                i,
                doc! { "$pull": { "tags": "p" }, "$set": { "status": "trial" } },
            )],
            3 => match c.find_one(doc! { "_id": i }).await.unwrap() {
                Some(mut d) => {
                    d.insert("notes", format!("{n:>240}"));
                    vec![Write::Replace(i, d)]
                }
                None => continue,
            },
            4 | 11 => {
                let j = (i + 1) % docs;
                let (a, b) = if n % 2 == 0 || !swaps() {
                    (doc! { "$set": { "t": n } }, doc! { "$set": { "t": n } })
                } else {
                    // A swap of the two documents' unique emails, through a value of its own.
                    let email = |id| async move {
                        c.find_one(doc! { "_id": id })
                            .await
                            .unwrap()
                            .and_then(|d| d.get_str("email").ok().map(str::to_string))
                    };
                    let (Some(ea), Some(eb)) = (email(i).await, email(j).await) else {
                        continue;
                    };
                    let mut s = client.start_session().await.unwrap();
                    s.start_transaction().await.unwrap();
                    let steps = [
                        Write::Update(i, doc! { "$set": { "email": format!("swap{n}") } }),
                        Write::Update(j, doc! { "$set": { "email": ea } }),
                        Write::Update(i, doc! { "$set": { "email": eb } }),
                    ];
                    for w in &steps {
                        let Write::Update(id, u) = w else {
                            unreachable!()
                        };
                        c.update_one(doc! { "_id": *id }, u.clone())
                            .session(&mut s)
                            .await
                            .unwrap();
                    }
                    s.commit_transaction().await.unwrap();
                    writes.extend(steps);
                    continue;
                };
                let mut s = client.start_session().await.unwrap();
                s.start_transaction().await.unwrap();
                c.update_one(doc! { "_id": i }, a.clone())
                    .session(&mut s)
                    .await
                    .unwrap();
                c.update_one(doc! { "_id": j }, b.clone())
                    .session(&mut s)
                    .await
                    .unwrap();
                s.commit_transaction().await.unwrap();
                writes.push(Write::Update(i, a));
                writes.push(Write::Update(j, b));
                continue;
            }
            5 => vec![Write::Update(
                i,
                doc! { "$unset": { "prefs": "" }, "$set": { "m": n } },
            )],
            6 => vec![Write::Update(
                i,
                doc! { "$addToSet": { "tags": format!("s{}", n % 5) }, "$pop": { "orders": 1 } },
            )],
            7 => vec![Write::Update(
                i,
                if n % 2 == 0 {
                    doc! { "$rename": { "name.first": "name.given" } }
                } else {
                    doc! { "$rename": { "name.given": "name.first" } }
                },
            )],
            8 => vec![Write::Update(
                i,
                doc! { "$min": { "address.geo.lat": 0.0 }, "$max": { "address.geo.lon": 0.0 }, "$mul": { "score": 1.5 } },
            )],
            // No deletes: `secantusd-rs` keeps the unique-index entry of a value a document
            // got by an update after the document is deleted, so a later write of that value
            // fails on the source and the target alike (README, known limits). The
            // incremental phase has deletes.
            9 => vec![Write::Update(
                i,
                doc! { "$set": { "prefs.theme": format!("t{}", n % 3) }, "$inc": { "score": 1.0 } },
            )],
            _ => vec![Write::Update(
                i,
                doc! { "$set": { "email": format!("new{n}@example.com") } },
            )],
        };
        for x in &w {
            x.apply(c, false).await.unwrap();
        }
        writes.extend(w);
    }
    (writes, t.elapsed())
}

/// Applies `writes` to `c` in 8 lanes by `_id` (each lane in order), `w: majority`; a write
/// that collides on the unique index waits for the lane that frees the value. Returns the
/// time and how many such retries it took.
async fn raw_apply(c: &Collection<Document>, writes: &[Write]) -> (Duration, u64) {
    let c = c.clone_with_type::<Document>();
    let mut lanes: Vec<Vec<Write>> = vec![Vec::new(); 8];
    for w in writes {
        lanes[(w.id().rem_euclid(8)) as usize].push(w.clone());
    }
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in lanes {
        let c = c.clone();
        tasks.spawn(async move {
            let mut retries = 0;
            for w in lane {
                loop {
                    match w.apply(&c, true).await {
                        Ok(()) => break,
                        Err(e) if duplicate_key(&e) && retries < 1_000_000 => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(e) => panic!("raw apply: {e}"),
                    }
                }
            }
            retries
        });
    }
    let mut retries = 0;
    while let Some(r) = tasks.join_next().await {
        retries += r.unwrap();
    }
    (t.elapsed(), retries)
}

/// Documents of `a` and `b` that differ byte for byte (missing on one side included).
async fn differences(a: &Collection<Document>, b: &Collection<Document>) -> u64 {
    use futures::TryStreamExt;
    let all = |c: &Collection<Document>| {
        let c = c.clone_with_type::<bson::RawDocumentBuf>();
        async move {
            c.find(doc! {})
                .sort(doc! { "_id": 1 })
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        }
    };
    let key = |d: &bson::RawDocumentBuf| d.get("_id").ok().flatten().map(|v| format!("{v:?}"));
    let x: std::collections::HashMap<_, _> =
        all(a).await.into_iter().map(|d| (key(&d), d)).collect();
    let mut diff = 0;
    let mut seen = 0;
    for q in all(b).await {
        match x.get(&key(&q)) {
            Some(p) if p.as_bytes() == q.as_bytes() => seen += 1,
            Some(_) => {
                seen += 1;
                diff += 1;
            }
            None => diff += 1,
        }
    }
    diff + (x.len() - seen) as u64
}

/// Runs the phase on `docs` documents, the `email` index unique or not; prints one line and
/// returns strait's catch-up rate (writes/s).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    s: &Client,
    d: &Client,
    src: u16,
    dst: u16,
    dir: &std::path::Path,
    docs: i64,
    ops: u64,
    unique: bool,
) -> f64 {
    let mut indexes = user_indexes();
    if !unique {
        indexes[0].remove("unique");
    }
    let db = format!("backlog{docs}");
    crate::load(s, &db, docs, false, doc_user).await;
    build_indexes(s, &db, "docs", &indexes).await;
    crate::load(d, "rawbacklog", docs, false, doc_user).await;
    build_indexes(d, "rawbacklog", "docs", &indexes).await;
    let api = free_port();
    // One pipeline id per phase: the second phase under the first one's id resumed the first
    // one's checkpoint and replayed its whole change log (its load included) instead of
    // copying, which made the run without the unique index look slower.
    let id = format!("bench-{db}-{}", if unique { "unique" } else { "plain" });
    let cfg = dir.join(format!("{id}.toml"));
    // `BENCH_APPLY="queue_depth = 250"`: lines of the pipeline's `[apply]` table (`\n`
    // between lines).
    let apply = env_opt("BENCH_APPLY")
        .map(|lines| format!("[apply]\n{}\n", lines.replace("\\n", "\n")))
        .unwrap_or_default();
    // `BENCH_STREAM="update_mode = \"delta\""`: lines of the pipeline's `[stream]` table.
    let stream = env_opt("BENCH_STREAM")
        .map(|lines| format!("[stream]\n{}\n", lines.replace("\\n", "\n")))
        .unwrap_or_default();
    std::fs::write(
        &cfg,
        format!(
            "id = \"{id}\"\n[source]\nuri = \"{}\"\n[sink]\nuri = \"{}\"\n[scope]\ninclude = [\"{db}.*\"]\n[full_sync]\nchunk_docs = 100000000\n{stream}{apply}[api]\nlisten = \"127.0.0.1:{api}\"\n",
            uri(src),
            uri(dst)
        ),
    )
    .unwrap();
    // Copy, then stop once streaming.
    let mut child = strait(&cfg, &id);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if status(api)
            .await
            .and_then(|v| v.get("state")?.as_str().map(str::to_string))
            .as_deref()
            == Some("streaming")
        {
            break;
        }
    }
    sigterm(&mut child);
    let c = s.database(&db).collection::<Document>("docs");
    let (writes, wrote) = write_backlog(s, &c, docs, 0, ops).await;
    // The sentinel is one write to each of `SENTINELS` documents spread over the collection,
    // after the writer's last: strait's lanes are chosen by `_id`, and each applies its
    // writes in order, so once the target has every sentinel, every lane has applied all the
    // writer did (one document's sentinel would only show its own lane had).
    let sentinels: Vec<i64> = {
        let n = docs.clamp(1, SENTINELS);
        (0..n).map(|k| k * docs / n).collect()
    };
    let sentinel = |v: i64| {
        let (c, ids) = (c.clone(), sentinels.clone());
        async move {
            c.update_many(
                doc! { "_id": { "$in": ids } },
                doc! { "$set": { "sentinel": v } },
            )
            .await
            .unwrap();
        }
    };
    sentinel(1).await;
    let target = d.database(&db).collection::<Document>("docs");
    let arrived = |v: i64| {
        let (target, ids) = (target.clone(), sentinels.clone());
        async move {
            let n = ids.len() as u64;
            target
                .count_documents(doc! { "_id": { "$in": ids }, "sentinel": v })
                .await
                .unwrap()
                == n
        }
    };
    let t = Instant::now();
    let mut child = strait(&cfg, &id);
    let pid = child.id();
    let ticks0 = cpu_ticks(pid);
    while !arrived(1).await {
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "no catch-up within 900 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught = t.elapsed();
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = cpu_ticks(pid).saturating_sub(ticks0) as f64 / tck;
    // Live: the same writer at its full rate with strait running; the lag is from its last
    // write (the sentinel) until the target has it.
    let live_ops = (ops / 4).max(1);
    let (live_writes, live_t) = write_backlog(s, &c, docs, ops, live_ops).await;
    let last = Instant::now();
    sentinel(2).await;
    while !arrived(2).await {
        assert!(
            last.elapsed() < Duration::from_secs(120),
            "live writes not applied within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let live_lag = last.elapsed();
    let peak = peak_rss_kb(pid);
    sigterm(&mut child);
    let diff = differences(&c, &target).await;
    let (raw, raw_retries) = raw_apply(
        &d.database("rawbacklog").collection::<Document>("docs"),
        &writes,
    )
    .await;
    let n = writes.len() as f64;
    let rate = n / caught.as_secs_f64();
    let raw_rate = n / raw.as_secs_f64();
    let email = if unique { "unique" } else { "not unique" };
    println!("backlog at {docs} docs (7 indexes, email {email}): {ops} ops = {} writes by one client in {:.1} s ({:.0} writes/s); strait caught up in {:.1} s = {rate:.0} writes/s, {:.2} CPU s per 1,000; raw apply of the same writes (8 lanes, w: majority; {raw_retries} duplicate-key retries) {:.1} s = {raw_rate:.0} writes/s; ratio {:.2} (goal >= 0.7); live: {} more writes at {:.0}/s, target had all of them {:.2} s after the last was written (goal < 0.3 s); documents differing from the source afterwards: {diff}; peak RSS {} MB",
        writes.len(), wrote.as_secs_f64(), n / wrote.as_secs_f64(), caught.as_secs_f64(), cpu / n * 1000.0, raw.as_secs_f64(), rate / raw_rate,
        live_writes.len(), live_writes.len() as f64 / live_t.as_secs_f64(), live_lag.as_secs_f64(), peak / 1024);
    assert_eq!(diff, 0, "the target differs from the source");
    drop_db(s, &db).await;
    drop_db(d, &db).await;
    drop_db(d, "rawbacklog").await;
    rate
}
