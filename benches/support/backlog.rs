//! The backlog phase of the sync bench: strait is stopped while one client writes a mixed
//! backlog (`$set`+`$inc`, `$push`, `$pull`+`$set`, whole replaces, two-document
//! transactions, `$unset`+`$set`) to user-like documents with 7 secondary indexes; then strait
//! starts and catches up. The raw limit is the same operations, already turned into writes,
//! applied by the driver directly into a copy of the same collection on the same target with
//! strait's parallelism (8 lanes by `_id`) and write concern (`w: majority`).

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
}

/// Writes `ops` operations (a transaction counts as one, with two writes); returns the
/// writes in order and how long writing took.
async fn write_backlog(
    client: &Client,
    c: &Collection<Document>,
    docs: i64,
    ops: u64,
) -> (Vec<Write>, Duration) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut writes = Vec::with_capacity(ops as usize * 7 / 6);
    let t = Instant::now();
    for n in 0..ops as i64 {
        let i = rng.random_range(0..docs);
        let w = match rng.random_range(0..6) {
            0 => vec![Write::Update(
                i,
                doc! { "$set": { "score": rng.random::<f64>() }, "$inc": { "orders.0.qty": 1 } },
            )],
            1 => vec![Write::Update(i, doc! { "$push": { "tags": "p" } })],
            2 => vec![Write::Update(
                i,
                doc! { "$pull": { "tags": "p" }, "$set": { "status": "trial" } },
            )],
            3 => {
                let mut d = c.find_one(doc! { "_id": i }).await.unwrap().unwrap();
                d.insert("notes", format!("{n:>240}"));
                vec![Write::Replace(i, d)]
            }
            4 => {
                let j = (i + 1) % docs;
                let (a, b) = (doc! { "$set": { "t": n } }, doc! { "$set": { "t": n } });
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
            _ => vec![Write::Update(
                i,
                doc! { "$unset": { "prefs": "" }, "$set": { "m": n } },
            )],
        };
        for x in &w {
            match x {
                Write::Update(i, u) => c
                    .update_one(doc! { "_id": *i }, u.clone())
                    .await
                    .map(|_| ()),
                Write::Replace(i, d) => c
                    .replace_one(doc! { "_id": *i }, d.clone())
                    .await
                    .map(|_| ()),
            }
            .unwrap();
        }
        writes.extend(w);
    }
    (writes, t.elapsed())
}

/// Applies `writes` to `c` in 8 lanes by `_id` (each lane in order), `w: majority`.
async fn raw_apply(c: &Collection<Document>, writes: &[Write]) -> Duration {
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
            for w in lane {
                match w {
                    Write::Update(i, u) => c
                        .update_one(doc! { "_id": i }, u)
                        .write_concern(WriteConcern::majority())
                        .await
                        .map(|_| ()),
                    Write::Replace(i, d) => c
                        .replace_one(doc! { "_id": i }, d)
                        .write_concern(WriteConcern::majority())
                        .await
                        .map(|_| ()),
                }
                .unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    t.elapsed()
}

/// Runs the phase on `docs` documents; prints one line.
pub async fn run(
    s: &Client,
    d: &Client,
    src: u16,
    dst: u16,
    dir: &std::path::Path,
    docs: i64,
    ops: u64,
) {
    let indexes = user_indexes();
    let db = format!("backlog{docs}");
    crate::load(s, &db, docs, false, doc_user).await;
    build_indexes(s, &db, "docs", &indexes).await;
    crate::load(d, "rawbacklog", docs, false, doc_user).await;
    build_indexes(d, "rawbacklog", "docs", &indexes).await;
    let api = free_port();
    let cfg = dir.join(format!("{db}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "id = \"bench-{db}\"\n[source]\nuri = \"{}\"\n[sink]\nuri = \"{}\"\n[scope]\ninclude = [\"{db}.*\"]\n[full_sync]\nchunk_docs = 100000000\n[api]\nlisten = \"127.0.0.1:{api}\"\n",
            uri(src),
            uri(dst)
        ),
    )
    .unwrap();
    // Copy, then stop once streaming.
    let mut child = strait(&cfg, &db);
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
    let (writes, wrote) = write_backlog(s, &c, docs, ops).await;
    c.update_one(doc! { "_id": 0_i64 }, doc! { "$set": { "sentinel": 1 } })
        .await
        .unwrap();
    let target = d.database(&db).collection::<Document>("docs");
    let t = Instant::now();
    let mut child = strait(&cfg, &db);
    let pid = child.id();
    let ticks0 = cpu_ticks(pid);
    loop {
        if target
            .find_one(doc! { "_id": 0_i64, "sentinel": 1 })
            .await
            .unwrap()
            .is_some()
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "no catch-up within 900 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught = t.elapsed();
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = cpu_ticks(pid).saturating_sub(ticks0) as f64 / tck;
    let peak = peak_rss_kb(pid);
    sigterm(&mut child);
    let raw = raw_apply(
        &d.database("rawbacklog").collection::<Document>("docs"),
        &writes,
    )
    .await;
    let n = writes.len() as f64;
    let rate = n / caught.as_secs_f64();
    let raw_rate = n / raw.as_secs_f64();
    println!("backlog at {docs} docs (7 indexes): {ops} ops = {} writes by one client in {:.1} s ({:.0} writes/s); strait caught up in {:.1} s = {rate:.0} writes/s, {:.2} CPU s per 1,000; raw apply of the same writes (8 lanes, w: majority) {:.1} s = {raw_rate:.0} writes/s; ratio {:.2} (goal >= 0.7); peak RSS {} MB",
        writes.len(), wrote.as_secs_f64(), n / wrote.as_secs_f64(), caught.as_secs_f64(), cpu / n * 1000.0, raw.as_secs_f64(), rate / raw_rate, peak / 1024);
    drop_db(s, &db).await;
    drop_db(d, &db).await;
    drop_db(d, "rawbacklog").await;
}
