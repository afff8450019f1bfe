//! `strait serve`: pipelines created over REST on a group of two workers, spread over both,
//! moved when a worker is SIGKILLed under load, changed, paused, deleted; bad configs refused
//! with their line and key; the token enforced; the status page checked in a real browser.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use serde_json::Value;

use crate::common::workload::{insert_varied, run_mixed};
use crate::common::*;

const TOKEN: &str = "s3cret";
const TTL_SECS: u64 = 4;

/// One HTTP call; returns (status, body), status 0 when nothing answered.
async fn http(method: &str, url: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let (method, url, token, body) = (
        method.to_string(),
        url.to_string(),
        token.map(str::to_string),
        body.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(20)))
            .http_status_as_error(false)
            .build()
            .into();
        let auth = token.map(|t| format!("Bearer {t}"));
        let r = match method.as_str() {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    agent.get(&url)
                } else {
                    agent.delete(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            m => {
                let mut r = if m == "PUT" {
                    agent.put(&url)
                } else {
                    agent.post(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(body.as_bytes())
            }
        };
        // A worker still starting refuses connections: status 0, for callers that poll.
        match r {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap()),
            Err(e) => (0, format!("{method} {url}: {e}")),
        }
    })
    .await
    .unwrap()
}

async fn get_json(url: &str) -> Value {
    let (code, body) = http("GET", url, None, "").await;
    assert_eq!(code, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A worker: its file, process and URL.
struct Worker {
    name: String,
    url: String,
    proc: Strait,
}

fn start_worker(dir: &Path, control: &Server, name: &str, extra: &str) -> Worker {
    let port = free_port_for_tests();
    let cfg = write_config(
        dir,
        &format!("{name}.toml"),
        &format!(
            "worker_id = \"{name}\"\nlease_ttl = \"{TTL_SECS}s\"\n{extra}\n[control]\nuri = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n",
            control.uri()
        ),
    );
    Worker {
        name: name.to_string(),
        url: format!("http://127.0.0.1:{port}"),
        proc: Strait::serve(&cfg, &dir.join(format!("{name}.log"))),
    }
}

/// A pipeline of the group: database `d{i}` of the source into the same names on the target.
fn pipeline_toml(i: usize, src: &Server, dst: &Server, include: &str) -> String {
    format!(
        "id = \"p{i}\"\nmode = \"full+incremental\"\n[source]\nuri = \"{}\"\n[sink]\nuri = \"{}\"\n[scope]\ninclude = [{include}]\n[stream]\nmax_await = \"200ms\"\n",
        src.uri(),
        dst.uri()
    )
}

/// Polls `GET /pipelines` until `f` holds for the list, or panics with the list and logs.
async fn wait_pipelines(
    w: &Worker,
    timeout: Duration,
    what: &str,
    logs: &[&Worker],
    f: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = get_json(&format!("{}/pipelines", w.url)).await;
        let list = list.as_array().unwrap().clone();
        if f(&list) {
            return list;
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = logs
                .iter()
                .map(|w| {
                    let t = w.proc.log_text();
                    let lines: Vec<&str> = t.lines().collect();
                    format!(
                        "--- {} log tail:\n{}",
                        w.name,
                        lines[lines.len().saturating_sub(30)..].join("\n")
                    )
                })
                .collect();
            panic!(
                "timed out waiting for {what}; pipelines: {}\n{}",
                serde_json::to_string_pretty(&list).unwrap(),
                tails.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn by_id<'a>(list: &'a [Value], id: &str) -> &'a Value {
    list.iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {list:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_workers_runs_moves_and_changes_pipelines() {
    let (src, dst) = (Server::start(), Server::start());
    let (s, d) = (src.client().await, dst.client().await);
    for i in 0..5 {
        insert_varied(&s.database(&format!("d{i}")).collection("items"), 100).await;
    }
    let dir = tempfile::tempdir().unwrap();
    // The control database lives on the target deployment.
    let mut w1 = start_worker(dir.path(), &dst, "w1", "");
    let mut w2 = start_worker(dir.path(), &dst, "w2", "");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http("GET", &format!("{}/workers", w1.url), None, "").await;
        if code == 200 {
            let ws: Value = serde_json::from_str(&body).unwrap();
            if ws
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["alive"] == true)
                .count()
                == 2
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "workers did not both start:\n{}\n{}",
            w1.proc.log_text(),
            w2.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Refused: no token, a wrong type, an unknown key (each with its line and key).
    let create = format!("{}/pipelines", w1.url);
    let (code, _) = http(
        "POST",
        &create,
        None,
        &pipeline_toml(0, &src, &dst, "\"d0.*\""),
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = http(
        "POST",
        &create,
        Some("wrong"),
        &pipeline_toml(0, &src, &dst, "\"d0.*\""),
    )
    .await;
    assert_eq!(code, 401);
    let bad = format!(
        "{}[apply]\nlanes = \"many\"\n",
        pipeline_toml(9, &src, &dst, "\"d9.*\"")
    );
    let (code, body) = http("POST", &create, Some(TOKEN), &bad).await;
    assert_eq!(code, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["line"], 12, "{body}");
    assert!(
        e["error"].as_str().unwrap().starts_with("pipeline:12:"),
        "{body}"
    );
    let bad =
        pipeline_toml(9, &src, &dst, "\"d9.*\"").replace("[scope]\n", "[scope]\ncolour = 1\n");
    let (code, body) = http("POST", &create, Some(TOKEN), &bad).await;
    assert_eq!(code, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (e["line"].as_u64(), e["key"].as_str()),
        (Some(8), Some("colour")),
        "{body}"
    );
    let bad = pipeline_toml(9, &src, &dst, "\"d9.*\"")
        .replace("[sink]\nuri = \"", "[sink]\nuri = \"http://");
    let (code, body) = http("POST", &create, Some(TOKEN), &bad).await;
    assert_eq!(code, 400, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (e["line"].as_u64(), e["key"].as_str()),
        (Some(6), Some("sink.uri")),
        "{body}"
    );

    // Five pipelines, created through either worker.
    for i in 0..5 {
        let w = if i % 2 == 0 { &w1 } else { &w2 };
        let (code, body) = http(
            "POST",
            &format!("{}/pipelines", w.url),
            Some(TOKEN),
            &pipeline_toml(i, &src, &dst, &format!("\"d{i}.*\"")),
        )
        .await;
        assert_eq!(code, 201, "{body}");
    }
    let (code, _) = http(
        "POST",
        &create,
        Some(TOKEN),
        &pipeline_toml(0, &src, &dst, "\"d0.*\""),
    )
    .await;
    assert_eq!(code, 409, "a second create of p0");
    // Stored as text plus parsed, defaults filled in.
    let stored = d
        .database("strait_control")
        .collection::<Document>("pipelines")
        .find_one(doc! { "_id": "p1" })
        .await
        .unwrap()
        .unwrap();
    assert!(stored.get_str("config").unwrap().contains("id = \"p1\""));
    let parsed = stored.get_document("parsed").unwrap();
    assert_eq!(
        parsed
            .get_document("scope")
            .unwrap()
            .get_array("include")
            .unwrap()[0]
            .as_str(),
        Some("d1.*")
    );
    assert!(
        parsed.get_document("apply").unwrap().contains_key("lanes"),
        "{parsed}"
    );
    let list = wait_pipelines(
        &w2,
        Duration::from_secs(120),
        "all five streaming",
        &[&w1, &w2],
        |l| l.len() == 5 && l.iter().all(|p| p["state"] == "streaming"),
    )
    .await;
    let on = |list: &[Value], w: &str| list.iter().filter(|p| p["worker"] == w).count();
    assert!(
        on(&list, "w1") >= 1 && on(&list, "w2") >= 1,
        "both workers run some: {list:?}"
    );
    let moved: Vec<String> = list
        .iter()
        .filter(|p| p["worker"] == "w2")
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    for i in 0..5 {
        let db = format!("d{i}");
        wait_identical(
            &s,
            (&db, "items"),
            &d,
            (&db, "items"),
            Duration::from_secs(60),
            None,
        )
        .await;
    }
    let status = get_json(&format!("{}/pipelines/{}/status", w1.url, moved[0])).await;
    assert_eq!(status["worker"], "w2", "{status}");
    assert_eq!(status["pipeline"], moved[0].as_str(), "{status}");
    // Any worker's /metrics has every pipeline (valid for the reference parser); with
    // ?local=true only its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = http("GET", &format!("{}/metrics", w1.url), None, "")
            .await
            .1;
        let samples = crate::api::parse_metrics(&text);
        let with = |id: &str| {
            samples
                .iter()
                .any(|(n, l, _)| n == "strait_events_read_total" && l["pipeline"] == id)
        };
        if (0..5).all(|i| with(&format!("p{i}"))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every pipeline in w1's /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let local = http("GET", &format!("{}/metrics?local=true", w1.url), None, "")
        .await
        .1;
    assert!(
        !local.contains(&format!("pipeline=\"{}\"", moved[0])),
        "{local}"
    );
    let local = http("GET", &format!("{}/metrics?local=true", w2.url), None, "")
        .await
        .1;
    assert!(
        local.contains(&format!("pipeline=\"{}\"", moved[0])),
        "{local}"
    );

    // Writers on every database; w2 is SIGKILLed under load.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..5)
        .map(|i| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                run_mixed(
                    &s,
                    &format!("d{i}"),
                    "items",
                    120,
                    400,
                    40 + i as u64,
                    Some(stop),
                    None,
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    w2.proc.sigkill_running();
    let killed = Instant::now();
    wait_pipelines(
        &w1,
        Duration::from_secs(TTL_SECS + 10),
        "w1 to hold every lease",
        &[&w1],
        |l| l.iter().all(|p| p["worker"] == "w1"),
    )
    .await;
    let taken = killed.elapsed();
    wait_pipelines(
        &w1,
        Duration::from_secs(60),
        "every pipeline streaming on w1",
        &[&w1],
        |l| {
            l.iter()
                .all(|p| p["worker"] == "w1" && p["state"] == "streaming")
        },
    )
    .await;
    let streaming = killed.elapsed();
    eprintln!(
        "pipelines {moved:?} of the killed worker: leases taken over after {taken:?}, streaming after {streaming:?} (lease_ttl {TTL_SECS} s)"
    );
    assert!(
        taken <= Duration::from_secs(TTL_SECS + 3),
        "takeover took {taken:?} with a {TTL_SECS} s lease"
    );
    for w in writers {
        w.await.unwrap();
    }
    let converge = Instant::now();
    for i in 0..5 {
        for coll in ["items", "items_tx"] {
            let db = format!("d{i}");
            wait_identical(
                &s,
                (&db, coll),
                &d,
                (&db, coll),
                Duration::from_secs(60),
                Some(&w1.proc),
            )
            .await;
        }
    }
    eprintln!(
        "identical {:?} after the writers stopped",
        converge.elapsed()
    );

    // A changed scope takes effect: p0 now also takes x0.*.
    let (code, body) = http(
        "PUT",
        &format!("{}/pipelines/p0", w1.url),
        Some(TOKEN),
        &pipeline_toml(0, &src, &dst, "\"d0.*\", \"x0.*\""),
    )
    .await;
    assert_eq!(
        (code, body.contains("\"version\":2")),
        (200, true),
        "{body}"
    );
    wait_pipelines(
        &w1,
        Duration::from_secs(60),
        "p0 running version 2",
        &[&w1],
        |l| {
            let p = by_id(l, "p0");
            p["running_version"] == 2 && p["state"] == "streaming"
        },
    )
    .await;
    insert_varied(&s.database("x0").collection("c"), 20).await;
    wait_identical(
        &s,
        ("x0", "c"),
        &d,
        ("x0", "c"),
        Duration::from_secs(30),
        Some(&w1.proc),
    )
    .await;
    // An invalid replacement is refused with its line and key, and p0 keeps running version 2.
    let bad = pipeline_toml(0, &src, &dst, "\"d0.*\"")
        .replace("mode = \"full+incremental\"", "mode = \"sometimes\"");
    let (code, body) = http(
        "PUT",
        &format!("{}/pipelines/p0", w1.url),
        Some(TOKEN),
        &bad,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("pipeline:2:"), "{body}");
    let p0 = get_json(&format!("{}/pipelines/p0", w1.url)).await;
    assert_eq!(
        (p0["version"].as_i64(), p0["state"].as_str()),
        (Some(2), Some("streaming")),
        "{p0}"
    );
    // The id in the body must be the URL's.
    let (code, body) = http(
        "PUT",
        &format!("{}/pipelines/p1", w1.url),
        Some(TOKEN),
        &pipeline_toml(0, &src, &dst, "\"d0.*\""),
    )
    .await;
    assert_eq!(code, 400, "{body}");

    // Pause holds changes back; resume lets them through.
    let (code, _) = http(
        "POST",
        &format!("{}/pipelines/p1/pause", w1.url),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200);
    wait_pipelines(&w1, Duration::from_secs(10), "p1 paused", &[&w1], |l| {
        by_id(l, "p1")["state"] == "paused"
    })
    .await;
    let items1 = s.database("d1").collection::<Document>("items");
    items1
        .insert_one(doc! { "_id": "while-paused" })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let target1 = d.database("d1").collection::<Document>("items");
    assert!(target1
        .find_one(doc! { "_id": "while-paused" })
        .await
        .unwrap()
        .is_none());
    let (code, _) = http(
        "POST",
        &format!("{}/pipelines/p1/resume", w1.url),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200);
    wait_identical(
        &s,
        ("d1", "items"),
        &d,
        ("d1", "items"),
        Duration::from_secs(20),
        Some(&w1.proc),
    )
    .await;

    // Calls that change something need the token.
    for (method, path) in [
        ("PUT", "/pipelines/p3"),
        ("DELETE", "/pipelines/p3"),
        ("POST", "/pipelines/p3/pause"),
        ("POST", "/pipelines/p3/resume"),
        ("POST", "/pipelines/p3/restart"),
        ("PUT", "/pipelines/p3/rate"),
    ] {
        let (code, _) = http(method, &format!("{}{path}", w1.url), None, "10").await;
        assert_eq!(code, 401, "{method} {path} without the token");
    }

    // DELETE stops the pipeline and gives its lease up.
    let (code, _) = http(
        "DELETE",
        &format!("{}/pipelines/p4", w1.url),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 204);
    let (code, _) = http("GET", &format!("{}/pipelines/p4", w1.url), None, "").await;
    assert_eq!(code, 404);
    let leases = d
        .database("strait_control")
        .collection::<Document>("leases");
    let deadline = Instant::now() + Duration::from_secs(20);
    while leases
        .find_one(doc! { "_id": "p4" })
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "p4's lease was not released:\n{}",
            w1.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A worker's row lists what its last heartbeat said: p4 leaves it by the next one.
    loop {
        let workers = get_json(&format!("{}/workers", w1.url)).await;
        let w1_row = workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == "w1")
            .unwrap()
            .clone();
        if !w1_row["pipelines"]
            .as_array()
            .unwrap()
            .contains(&Value::from("p4"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{workers}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.database("d4")
        .collection::<Document>("items")
        .insert_one(doc! { "_id": "after-delete" })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        d.database("d4")
            .collection::<Document>("items")
            .find_one(doc! { "_id": "after-delete" })
            .await
            .unwrap()
            .is_none(),
        "a deleted pipeline still replicates"
    );
    assert!(w1
        .proc
        .log_text()
        .contains("Pipeline deleted; stopping it."));

    // A worker stopped with SIGTERM drains, checkpoints and gives its leases up: a new worker
    // takes every pipeline over at once, without waiting for the leases to expire.
    let w3 = start_worker(dir.path(), &dst, "w3", "");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(&format!("{}/workers", w1.url))
        .await
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["id"] != "w3")
    {
        assert!(
            Instant::now() < deadline,
            "w3 did not start:\n{}",
            w3.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopping = Instant::now();
    assert!(w1.proc.sigterm().success(), "{}", w1.proc.log_text());
    let stopped = stopping.elapsed();
    wait_pipelines(
        &w3,
        Duration::from_secs(30),
        "w3 to run every pipeline",
        &[&w3],
        |l| {
            l.len() == 4
                && l.iter()
                    .all(|p| p["worker"] == "w3" && p["state"] == "streaming")
        },
    )
    .await;
    let handed = stopping.elapsed();
    eprintln!("SIGTERM: w1 stopped in {stopped:?}; w3 streaming every pipeline after {handed:?}");
    let log = w1.proc.log_text();
    assert!(log.contains("Worker stopped."), "{log}");
    let taken = d
        .database("strait_control")
        .collection::<Document>("lease_log")
        .find_one(doc! { "event": "released", "holder": { "$regex": "^w1/" } })
        .await
        .unwrap();
    assert!(taken.is_some(), "w1 released no lease");
    insert_varied(&s.database("d2").collection("after_handover"), 10).await;
    wait_identical(
        &s,
        ("d2", "after_handover"),
        &d,
        ("d2", "after_handover"),
        Duration::from_secs(30),
        Some(&w3.proc),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_every_pipeline_in_a_browser() {
    use crate::common::browser::Browser;
    assert!(
        crate::common::browser::available(),
        "Chromium and chromedriver are missing: run dev/install-browser.sh"
    );
    let (src, dst) = (Server::start(), Server::start());
    let s = src.client().await;
    for i in 0..2 {
        insert_varied(&s.database(&format!("d{i}")).collection("items"), 50).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let w = start_worker(dir.path(), &dst, "w1", "");
    for i in 0..2 {
        let mut body = pipeline_toml(i, &src, &dst, &format!("\"d{i}.*\""));
        if i == 1 {
            // A pipeline that cannot start: its error is on the page.
            body = body.replace(&format!("uri = \"{}\"\n[scope]", dst.uri()), "uri = \"mongodb://127.0.0.1:1/?connectTimeoutMS=500\"\nconnect_timeout = \"1s\"\n[scope]");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, text) =
                http("POST", &format!("{}/pipelines", w.url), Some(TOKEN), &body).await;
            if code == 201 {
                break;
            }
            assert!(Instant::now() < deadline, "{code} {text}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    wait_pipelines(
        &w,
        Duration::from_secs(60),
        "p0 streaming, p1 failed",
        &[&w],
        |l| {
            l.len() == 2
                && by_id(l, "p0")["state"] == "streaming"
                && by_id(l, "p1")["state"] == "failed"
        },
    )
    .await;

    let browser = Browser::start();
    // Without a token: rows, no buttons.
    browser.goto(&format!("{}/", w.url));
    browser.wait_until(
        "return document.querySelectorAll('#rows tr').length == 2",
        Duration::from_secs(20),
    );
    let rows = browser.eval(
        "return [...document.querySelectorAll('#rows tr')].map(r => ({ id: r.dataset.id, \
         state: r.querySelector('.state').textContent, worker: r.querySelector('.worker').textContent, \
         error: r.querySelector('.error').textContent, bars: r.querySelectorAll('.coll').length, \
         buttons: r.querySelectorAll('button').length }))",
    );
    let rows = rows.as_array().unwrap();
    assert_eq!(rows[0]["id"], "p0");
    assert_eq!(rows[0]["state"], "streaming");
    assert_eq!(rows[0]["worker"], "w1");
    assert_eq!(rows[0]["bars"], 1, "p0 copied one collection: {rows:?}");
    assert_eq!(rows[0]["buttons"], 0);
    assert_eq!(rows[1]["state"], "failed");
    assert!(
        rows[1]["error"].as_str().unwrap().contains("127.0.0.1:1"),
        "{rows:?}"
    );
    let done = browser.eval("return document.querySelector('tr[data-id=p0] .coll').textContent");
    assert!(
        done.as_str().unwrap().contains("d0.items 50/50 done"),
        "{done}"
    );
    browser.screenshot(&dir.path().join("status-page.png"));
    let shot = std::env::var("STRAIT_SCREENSHOT_DIR").ok();
    if let Some(out) = shot {
        std::fs::copy(
            dir.path().join("status-page.png"),
            Path::new(&out).join("status-page.png"),
        )
        .unwrap();
    }

    // With the token: pause p0 from the page.
    browser.goto(&format!("{}/#token={TOKEN}", w.url));
    browser.wait_until(
        "return document.querySelector('tr[data-id=p0] button.pause') != null",
        Duration::from_secs(20),
    );
    browser.click("tr[data-id=p0] button.pause");
    browser.wait_until(
        "return document.querySelector('tr[data-id=p0] .state').textContent == 'paused'",
        Duration::from_secs(20),
    );
    let p0 = get_json(&format!("{}/pipelines/p0", w.url)).await;
    assert_eq!(p0["paused"], true, "{p0}");
    browser.click("tr[data-id=p0] button.resume");
    browser.wait_until(
        "return document.querySelector('tr[data-id=p0] .state').textContent == 'streaming'",
        Duration::from_secs(20),
    );
    // A wrong token is refused and said on the page.
    browser.goto(&format!("{}/#token=wrong", w.url));
    browser.wait_until(
        "return document.querySelector('tr[data-id=p0] button.pause') != null",
        Duration::from_secs(20),
    );
    browser.click("tr[data-id=p0] button.pause");
    browser.wait_until(
        "return document.getElementById('problem').textContent.includes('401')",
        Duration::from_secs(20),
    );
}
