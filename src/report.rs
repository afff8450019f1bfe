//! Shows progress: bars on a terminal, periodic log lines otherwise. Reads only [`Telemetry`].

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::telemetry::{PipelineState, Telemetry};

/// Runs until `cancel`, drawing bars on a terminal (when `bars`) and logging every
/// `log_every` otherwise.
pub async fn report(t: Arc<Telemetry>, cancel: CancellationToken, log_every: Duration, bars: bool) {
    if bars && std::io::stderr().is_terminal() {
        draw_bars(t, cancel).await
    } else {
        log_lines(t, cancel, log_every).await
    }
}

fn summary_line(t: &Telemetry, rate: f64) -> String {
    let s = t.snapshot();
    format!(
        "lag {:.1}s | {:.0} ev/s | read {} | insert {} update {} replace {} delete {} ddl {} | pending {}",
        s.lag_seconds, rate, s.read, s.inserts, s.updates, s.replaces, s.deletes, s.ddl, s.pending
    )
}

async fn draw_bars(t: Arc<Telemetry>, cancel: CancellationToken) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template(
        "{prefix:>28} [{bar:30}] {pos}/{len} docs {per_sec} eta {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    let status = multi.add(ProgressBar::new_spinner());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut last = (std::time::Instant::now(), 0u64);
    loop {
        for c in t.collections() {
            let bar = bars.entry(c.ns.clone()).or_insert_with(|| {
                let b = multi.insert_before(&status, ProgressBar::new(c.estimated.load(Relaxed)));
                b.set_style(style.clone());
                b.set_prefix(c.ns.clone());
                b
            });
            let copied = c.copied.load(Relaxed);
            bar.set_length(c.estimated.load(Relaxed).max(copied));
            bar.set_position(copied);
            if c.done.load(Relaxed) && !bar.is_finished() {
                bar.finish();
            }
        }
        let applied = applied_total(&t);
        let rate = (applied - last.1) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
        last = (std::time::Instant::now(), applied);
        let msg = match t.state() {
            PipelineState::Copying => "copying".to_string(),
            PipelineState::Streaming => summary_line(&t, rate),
            s => format!("{s:?}").to_lowercase(),
        };
        status.set_message(msg);
        status.tick();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    status.finish_and_clear();
}

fn applied_total(t: &Telemetry) -> u64 {
    let s = t.snapshot();
    s.inserts + s.updates + s.replaces + s.deletes + s.ddl
}

async fn log_lines(t: Arc<Telemetry>, cancel: CancellationToken, every: Duration) {
    let mut last = (std::time::Instant::now(), applied_total(&t));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        match t.state() {
            PipelineState::Copying => {
                for c in t.collections().iter().filter(|c| !c.done.load(Relaxed)) {
                    info!(ns = %c.ns, copied = c.copied.load(Relaxed), estimated = c.estimated.load(Relaxed), "Copying.");
                }
            }
            PipelineState::Streaming => {
                let applied = applied_total(&t);
                let rate = (applied - last.1) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
                last = (std::time::Instant::now(), applied);
                info!("{}", summary_line(&t, rate));
            }
            _ => {}
        }
    }
    // The totals on the way out, however short the run.
    if t.snapshot().read > 0 || applied_total(&t) > 0 {
        let average = applied_total(&t) as f64 / t.snapshot().uptime_seconds.max(0.001);
        info!("{}", summary_line(&t, average));
    }
}
