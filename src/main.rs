//! The `strait` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::info;

use strait::config::PipelineConfig;
use strait::error::{Error, ErrorClass, Role};
use strait::telemetry::Telemetry;

/// Change-data-capture and replication for MongoDB-family databases.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "STRAIT_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until stopped (SIGTERM / Ctrl-C drain, checkpoint and exit 0).
    Run {
        /// Pipeline file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Compare source and target: counts, every document byte for byte, indexes.
    /// Exits 1 when they differ.
    Verify {
        /// Pipeline file.
        #[arg(short, long)]
        config: PathBuf,
        /// Most `_id`s listed per kind of difference and collection.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Find, read and undo what archive sinks kept (`[sinks.<name>]` with `type = "archive"`).
    Archive {
        #[command(subcommand)]
        action: ArchiveAction,
    },
    /// Show or reset the saved position.
    Checkpoint {
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// Check a pipeline file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Show a running pipeline's status (through its HTTP API, `[api]` in the file).
    Status {
        /// Pipeline file.
        #[arg(short, long)]
        config: PathBuf,
        /// Refresh every 2 seconds.
        #[arg(long)]
        watch: bool,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pause applying changes (the source position is kept).
    Pause {
        /// Pipeline file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Resume applying changes.
    Resume {
        /// Pipeline file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Set the rate limit in operations per second (0 = unlimited).
    Rate {
        /// Operations (or copied documents) per second.
        ops_per_sec: u64,
        /// Pipeline file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ArchiveAction {
    /// List archive objects: key, time of first and last event, size.
    Ls {
        #[command(flatten)]
        at: ArchiveArgs,
    },
    /// Print archived events as JSON lines.
    Cat {
        #[command(flatten)]
        at: ArchiveArgs,
        /// Only events of the document with this `_id` (JSON, e.g. `7`, `"abc"` or
        /// `{"$oid":"..."}`).
        #[arg(long)]
        id: Option<String>,
    },
    /// Re-insert deleted documents from their archived pre-images (existing documents are
    /// left alone; a document deleted several times gets its latest pre-image).
    Restore {
        #[command(flatten)]
        at: ArchiveArgs,
        /// MongoDB to restore into; default the pipeline's source (where the deletes happened).
        #[arg(long)]
        uri: Option<String>,
        /// Restore every document into this one collection (`db.coll`) instead of its own.
        #[arg(long)]
        into: Option<String>,
        /// List what would be restored without writing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which archive, and which of its events.
#[derive(clap::Args)]
struct ArchiveArgs {
    /// Pipeline file.
    #[arg(short, long)]
    config: PathBuf,
    /// Archive sink name (`[sinks.<name>]`); needed when the pipeline has several.
    #[arg(long)]
    sink: Option<String>,
    /// Namespaces: `db.coll`, `db.*` or `/regex/` (source names).
    #[arg(long)]
    ns: Option<String>,
    /// Earliest event time: RFC 3339 (`2026-11-22T10:00:00Z`) or seconds since the epoch.
    #[arg(long)]
    from: Option<String>,
    /// Latest event time (inclusive), same forms as `--from`.
    #[arg(long)]
    to: Option<String>,
    /// Operation types to keep (repeatable), e.g. `--op delete`.
    #[arg(long = "op")]
    ops: Vec<String>,
}

#[derive(Subcommand)]
enum CheckpointAction {
    /// Print the checkpoint as JSON.
    Show {
        /// Pipeline file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Delete the checkpoint: the next run starts from scratch.
    Reset {
        /// Pipeline file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Parse and validate the file, print it with defaults filled in and secrets redacted.
    Check {
        /// Pipeline file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,mongodb=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            let code = match e.downcast_ref::<Error>().map(Error::class) {
                Some(ErrorClass::User) => 2,
                _ => 1,
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run { config } => run(config).await,
        Command::Verify {
            config,
            limit,
            json,
        } => verify(config, limit, json).await,
        Command::Checkpoint { action } => checkpoint(action).await,
        Command::Archive { action } => archive(action).await,
        Command::Status {
            config,
            watch,
            json,
        } => status(config, watch, json).await,
        Command::Pause { config } => control(config, "POST", "/pause", "").await,
        Command::Resume { config } => control(config, "POST", "/resume", "").await,
        Command::Rate {
            ops_per_sec,
            config,
        } => control(config, "PUT", "/rate", &ops_per_sec.to_string()).await,
        Command::Config {
            action: ConfigAction::Check { config },
        } => {
            let cfg = PipelineConfig::load(&config).map_err(Error::from)?;
            print!("{}", cfg.redacted());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let cfg = PipelineConfig::load(&path).map_err(Error::from)?;
    if cfg.mongo_source().is_none() {
        return run_from_kafka(cfg).await;
    }
    let cancel = CancellationToken::new();
    let telemetry = Arc::new(Telemetry::default());
    let control = Arc::new(strait::control::Control::new(
        cfg.api.as_ref().map(|a| a.rate_limit).unwrap_or(0),
    ));
    let pipeline = Arc::new(
        strait::pipeline::run::open(cfg, telemetry.clone(), control.clone(), cancel.clone())
            .await?,
    );
    let mut companions =
        Companions::start(pipeline.cfg.clone(), telemetry.clone(), control, &cancel).await?;
    info!(pipeline = %pipeline.cfg.id, mode = ?pipeline.cfg.mode, "Pipeline started.");
    let lease = match (&pipeline.store, pipeline.cfg.checkpoint.lease) {
        (strait::checkpoint::CheckpointStore::Mongo(m), true) => {
            Some(strait::pipeline::lease::Lease::new(
                m.database(),
                &pipeline.cfg.id,
                holder_id(),
                pipeline.cfg.checkpoint.lease_ttl,
            ))
        }
        _ => None,
    };
    if let Some(l) = &lease {
        telemetry.set_state(strait::telemetry::PipelineState::Standby);
        if !l.acquire(&cancel).await? {
            companions.stop().await;
            info!("Stopped while standing by.");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let (lease_stop, lost) = (CancellationToken::new(), CancellationToken::new());
    let keeper = lease
        .clone()
        .map(|l| tokio::spawn(l.keep_owned(lease_stop.clone(), lost.clone())));
    let on_lost = {
        let (lost, cancel) = (lost.clone(), cancel.clone());
        tokio::spawn(async move {
            lost.cancelled().await;
            cancel.cancel();
        })
    };
    // A standby reports nothing: the progress lines start once this process applies.
    companions.start_reporter(telemetry);
    let result = strait::pipeline::run::run(pipeline).await;
    lease_stop.cancel();
    on_lost.abort();
    if let Some(k) = keeper {
        let _ = k.await;
    }
    companions.stop().await;
    stopped_is_clean(result)?;
    if lost.is_cancelled() {
        anyhow::bail!(
            "lost the lease to another process; stopped applying (run again to stand by)"
        );
    }
    if let Some(l) = &lease {
        l.release().await;
    }
    info!("Pipeline stopped.");
    Ok(ExitCode::SUCCESS)
}

/// `strait run` of a pipeline whose source is Kafka: the consumer group is the checkpoint
/// and the coordination (no lease).
async fn run_from_kafka(cfg: PipelineConfig) -> anyhow::Result<ExitCode> {
    let cancel = CancellationToken::new();
    let telemetry = Arc::new(Telemetry::default());
    let control = Arc::new(strait::control::Control::new(
        cfg.api.as_ref().map(|a| a.rate_limit).unwrap_or(0),
    ));
    let cfg = Arc::new(cfg);
    let mut companions =
        Companions::start(cfg.clone(), telemetry.clone(), control.clone(), &cancel).await?;
    info!(pipeline = %cfg.id, "Pipeline started (Kafka source).");
    companions.start_reporter(telemetry.clone());
    let result = strait::pipeline::kafka_apply::run(cfg, telemetry, control, cancel).await;
    companions.stop().await;
    stopped_is_clean(result)?;
    info!("Pipeline stopped.");
    Ok(ExitCode::SUCCESS)
}

/// A stop requested while the sink was failing is a clean exit: nothing is lost, the next run
/// goes on from the checkpoint.
fn stopped_is_clean(result: Result<(), Error>) -> anyhow::Result<()> {
    match result {
        Err(Error::Stopped) => {
            tracing::warn!("{}", Error::Stopped);
            Ok(())
        }
        // The stream stops at the refused change rather than skip it.
        // The context keeps the error's class (and so the exit code) underneath.
        Err(e @ Error::Rejected { .. }) => Err(anyhow::Error::from(e).context(
            "stopped at a change the target refuses (the checkpoint stays before it; fix the target and run again)",
        )),
        other => Ok(other?),
    }
}

/// The tasks that run beside a pipeline: the signal handler, the HTTP API (when the pipeline
/// has an `[api]` table) and the progress reporter.
struct Companions {
    signals: tokio::task::JoinHandle<()>,
    api: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
    reporter: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
}

impl Companions {
    /// Serves the API and turns SIGTERM / Ctrl-C into `cancel`.
    async fn start(
        cfg: Arc<PipelineConfig>,
        telemetry: Arc<Telemetry>,
        control: Arc<strait::control::Control>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let api = match cfg.api.clone() {
            Some(a) => {
                let stop = CancellationToken::new();
                let (addr, handle) =
                    strait::api::serve(&a, cfg, telemetry, control, stop.clone()).await?;
                info!(%addr, "HTTP API listening.");
                Some((handle, stop))
            }
            None => None,
        };
        Ok(Self {
            signals: tokio::spawn(shutdown_on_signal(cancel.clone())),
            api,
            reporter: None,
        })
    }

    /// Starts the progress bars / periodic status lines.
    fn start_reporter(&mut self, telemetry: Arc<Telemetry>) {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(strait::report::report(
            telemetry,
            stop.clone(),
            Duration::from_secs(10),
        ));
        self.reporter = Some((handle, stop));
    }

    /// Stops the reporter (its last line shows the final totals), then the API.
    async fn stop(self) {
        for (handle, stop) in self.reporter.into_iter().chain(self.api) {
            stop.cancel();
            let _ = handle.await;
        }
        self.signals.abort();
    }
}

async fn shutdown_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("Shutting down: draining lanes and saving the checkpoint.");
    cancel.cancel();
}

fn parse_time(key: &str, v: &Option<String>) -> anyhow::Result<Option<u32>> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(secs) = v.parse::<u32>() {
        return Ok(Some(secs));
    }
    let t = humantime::parse_rfc3339_weak(v).with_context(|| {
        format!("{key} {v:?}: expected RFC 3339 (2026-11-22T10:00:00Z) or seconds since the epoch")
    })?;
    Ok(Some(
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0),
    ))
}

async fn archive(action: ArchiveAction) -> anyhow::Result<ExitCode> {
    use strait::sink::archive::{query, record::iso8601, ArchiveSink};
    let at = match &action {
        ArchiveAction::Ls { at }
        | ArchiveAction::Cat { at, .. }
        | ArchiveAction::Restore { at, .. } => at,
    };
    let cfg = PipelineConfig::load(&at.config).map_err(Error::from)?;
    let archives = cfg.archive_sinks();
    let (name, sink_cfg) = match &at.sink {
        Some(n) => archives
            .iter()
            .find(|(name, _)| name == n)
            .cloned()
            .with_context(|| format!("no archive sink [sinks.{n}] in {}", at.config.display()))?,
        None if archives.len() == 1 => archives[0].clone(),
        None if archives.is_empty() => {
            anyhow::bail!(
                "{} has no archive sink ([sinks.<name>] with type = \"archive\")",
                at.config.display()
            )
        }
        None => anyhow::bail!(
            "{} has several archive sinks; choose one with --sink ({})",
            at.config.display(),
            archives
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let sink = ArchiveSink::open(&name, sink_cfg).map_err(Error::from)?;
    let filter = query::Filter {
        ns: at
            .ns
            .as_deref()
            .map(strait::transform::scope::NamespacePattern::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--ns: {e}"))?,
        from: parse_time("--from", &at.from)?,
        to: parse_time("--to", &at.to)?,
        ops: at.ops.clone(),
    };
    match action {
        ArchiveAction::Ls { .. } => {
            for o in query::objects(&sink, &filter).await.map_err(Error::from)? {
                println!(
                    "{}\t{}\t{}\t{}",
                    o.path,
                    iso8601(o.first.0),
                    iso8601(o.last.0),
                    o.size
                );
            }
        }
        ArchiveAction::Cat { id, .. } => {
            let want = id
                .map(|s| {
                    let v: serde_json::Value =
                        serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s));
                    relaxed(&v)
                })
                .transpose()?;
            for r in query::records(&sink, &filter).await.map_err(Error::from)? {
                if let Some(w) = &want {
                    if r.get("_id").map(relaxed).transpose()?.as_ref() != Some(w) {
                        continue;
                    }
                }
                println!("{r}");
            }
        }
        ArchiveAction::Restore {
            uri, into, dry_run, ..
        } => {
            let source = cfg
                .mongo_source()
                .context("restoring needs a MongoDB source (or --uri)")?;
            let target = match &uri {
                Some(u) => strait::connect::connect_uri(u, source, Role::Sink).await?,
                None => strait::connect::connect(source, Role::Sink).await?,
            };
            let into = into.as_deref().map(strait::event::Namespace::parse);
            if into.as_ref().is_some_and(|n| n.coll.is_none()) {
                anyhow::bail!("--into needs db.coll");
            }
            let r = query::restore(&sink, &filter, &target, into.as_ref(), dry_run).await?;
            let verb = if dry_run { "would restore" } else { "restored" };
            for (ns, id) in &r.ids {
                println!("{verb} {ns} _id {id}");
            }
            println!(
                "{verb} {} documents; {} already present (left alone); {} deletes had no pre-image",
                r.restored, r.already_present, r.without_pre_image
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON `_id` (canonical or relaxed Extended JSON, or plain) in relaxed form, so `7` matches
/// `{"$numberLong": "7"}`.
fn relaxed(v: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    Ok(bson::Bson::try_from(v.clone())
        .with_context(|| format!("{v} is not Extended JSON"))?
        .into_relaxed_extjson())
}

async fn verify(path: PathBuf, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = PipelineConfig::load(&path).map_err(Error::from)?;
    let (Some(source_cfg), Some(sink_cfg)) = (cfg.mongo_source(), cfg.mongo_sink()) else {
        anyhow::bail!(
            "verify compares two MongoDB deployments; {} has a Kafka source or sink (verify the MongoDB ends of the two pipelines against each other instead)",
            path.display()
        );
    };
    let (source, target) = tokio::join!(
        strait::connect::connect(source_cfg, Role::Source),
        strait::connect::connect(sink_cfg, Role::Sink)
    );
    let (source, target) = (source?, target?);
    let transforms = strait::transform::Transforms::from_config(&cfg);
    let delete = strait::event::OpType::Delete;
    let append_only =
        !cfg.sink_takes(&delete) || !cfg.stream.ops.contains(&strait::config::DataOp::Delete);
    let reports = strait::verify::verify(&source, &target, &transforms, limit, append_only).await?;
    let equal = reports.iter().all(|r| r.is_equal());
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            let mark = if r.is_equal() { "OK  " } else { "DIFF" };
            let kept = if r.extra_expected && r.extra_total > 0 {
                " (kept: deletes are not applied to this sink)"
            } else {
                ""
            };
            println!(
                "{mark} {} -> {}: source {} docs, target {} docs, missing {}, extra {}{kept}, different {}",
                r.source_ns, r.target_ns, r.source_count, r.target_count, r.missing_total, r.extra_total, r.different_total
            );
            for (label, ids) in [
                ("missing", &r.missing),
                ("extra", &r.extra),
                ("different", &r.different),
            ] {
                for id in ids {
                    println!("     {label} _id {id}");
                }
            }
            for d in &r.index_differences {
                println!("     {d}");
            }
        }
        println!(
            "{}: {} collections compared",
            if equal {
                "source and target are identical"
            } else {
                "source and target differ"
            },
            reports.len()
        );
    }
    Ok(if equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn checkpoint(action: CheckpointAction) -> anyhow::Result<ExitCode> {
    let (CheckpointAction::Show { config } | CheckpointAction::Reset { config }) = &action;
    let cfg = PipelineConfig::load(config).map_err(Error::from)?;
    let Some(endpoint) = cfg.mongo_sink().or(cfg.mongo_source()) else {
        anyhow::bail!("a Kafka source keeps its position as consumer-group offsets in Kafka; use Kafka's tools (kafka-consumer-groups --reset-offsets) to move it");
    };
    let client = strait::connect::connect(endpoint, Role::Sink).await?;
    let store = strait::pipeline::run::checkpoint_store(&cfg, &client).await?;
    match action {
        CheckpointAction::Show { .. } => match store.load(&cfg.id).await.map_err(Error::from)? {
            Some(c) => {
                println!("{}", c.to_json().context("encoding checkpoint")?);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!(
                    "no checkpoint for pipeline {:?} in {}",
                    cfg.id,
                    store.describe()
                );
                Ok(ExitCode::from(3))
            }
        },
        CheckpointAction::Reset { .. } => {
            let existed = store.reset(&cfg.id).await.map_err(Error::from)?;
            println!(
                "{}",
                if existed {
                    format!("checkpoint of pipeline {:?} deleted", cfg.id)
                } else {
                    format!("no checkpoint for pipeline {:?}", cfg.id)
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A minimal HTTP/1.1 request to the pipeline's own API on loopback (no client library needed).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting to the API at {addr}"))?
        .with_context(|| {
            format!(
                "cannot reach the pipeline's API at {addr}; is `strait run` running with [api]?"
            )
        })?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

fn api_of(path: &std::path::Path) -> anyhow::Result<(std::net::SocketAddr, Option<String>)> {
    let cfg = PipelineConfig::load(path).map_err(Error::from)?;
    let api = cfg.api.ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no [api] table; the pipeline has no HTTP API",
            path.display()
        )
    })?;
    let mut addr = api.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok((addr, api.token))
}

async fn control(path: PathBuf, method: &str, route: &str, body: &str) -> anyhow::Result<ExitCode> {
    let (addr, token) = api_of(&path)?;
    let (code, text) = http(addr, method, route, token.as_deref(), body).await?;
    println!("{}", text.trim());
    Ok(if code == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn status(path: PathBuf, watch: bool, json: bool) -> anyhow::Result<ExitCode> {
    let (addr, token) = api_of(&path)?;
    loop {
        let (code, text) = http(addr, "GET", "/status", token.as_deref(), "").await?;
        if code != 200 {
            anyhow::bail!("status request failed with HTTP {code}: {text}");
        }
        if json {
            println!("{}", text.trim());
        } else {
            let s: strait::api::Status = serde_json::from_str(&text)?;
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            println!(
                "pipeline {}: {}{}",
                s.pipeline,
                s.state,
                s.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            );
            println!(
                "lag {:.1} s, pending {}, rate limit {}",
                s.lag_seconds,
                s.pending,
                if s.rate_limit == 0 {
                    "none".to_string()
                } else {
                    format!("{} ops/s", s.rate_limit)
                }
            );
            for kind in ["read", "acknowledged", "checkpointed"] {
                let p = &s.positions[kind];
                println!(
                    "  {kind:>12}: cluster time {} token {}",
                    p["cluster_time"], p["token"]
                );
            }
            println!("read {} | applied {}", s.read, s.applied);
            println!("lanes {:?}", s.lane_queue_depth);
            println!("errors {}", s.errors);
        }
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A lease holder id: host name and process id.
fn holder_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}:{}", std::process::id())
}
