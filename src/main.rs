//! The `strait` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::info;

use strait::config::PipelineConfig;
use strait::error::{Error, ErrorClass, Role};

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
    /// Run a pipeline until stopped (SIGTERM / Ctrl-C drain, checkpoint and exit 0). Several
    /// `-c` files run side by side in one process (e.g. both directions of a DynamoDB pair);
    /// when one fails for good the others are stopped too.
    Run {
        /// Pipeline file; repeat for more pipelines.
        #[arg(short, long, required = true)]
        config: Vec<PathBuf>,
    },
    /// Run a worker that hosts many pipelines, managed over REST (`GET/POST /pipelines`) and
    /// shown on a status page at `/`. Workers sharing a control database share the pipelines.
    Serve {
        /// Server file (`server.toml`).
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
    /// Read what two-way sync recorded about changes that lost a conflict.
    Conflicts {
        #[command(subcommand)]
        action: ConflictsAction,
    },
    /// Show or reset the saved position.
    Checkpoint {
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// Write test load to a database, like an application would, and report what was written.
    Load {
        #[command(subcommand)]
        target: LoadTarget,
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

/// What `strait load` writes to.
#[derive(Subcommand)]
enum LoadTarget {
    /// A DynamoDB table keyed by `pk` (S) and `sk` (N): orders with nested maps, lists, sets,
    /// binary and decimals; 60 % puts, 30 % updates, 10 % deletes, each stamped with
    /// `last_update_timestamp` and `last_updater_region`. Credentials: the AWS default chain.
    Dynamodb {
        /// The table.
        #[arg(long)]
        table: String,
        /// AWS region (else the default chain).
        #[arg(long)]
        region: Option<String>,
        /// Endpoint URL (a local server).
        #[arg(long)]
        endpoint: Option<String>,
        /// Profile of ~/.aws/config.
        #[arg(long)]
        profile: Option<String>,
        /// This side's name, written to `last_updater_region`.
        #[arg(long, default_value = "us-east-1")]
        side: String,
        /// Last digit of this side's timestamps (0-9), so two sides never tie.
        #[arg(long, default_value_t = 0)]
        side_digit: u64,
        /// Operations per second; 0 = as fast as the table takes them.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Operations in all.
        #[arg(long, default_value_t = 1000)]
        ops: u64,
        /// Distinct items (keys 0..keys).
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Concurrent writers.
        #[arg(long, default_value_t = 4)]
        writers: usize,
    },
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
enum ConflictsAction {
    /// Print the newest conflicts of both clusters as JSON lines: the cluster where the
    /// incoming change lost, the namespace and key, both versions and the rule that decided.
    Ls {
        /// Pipeline file (with a `[two_way]` table).
        #[arg(short, long)]
        config: PathBuf,
        /// Most records per cluster.
        #[arg(long, default_value_t = 100)]
        limit: i64,
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
    let code = match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            let code = match e.downcast_ref::<Error>().map(Error::class) {
                Some(ErrorClass::User) => 2,
                _ => 1,
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    };
    // Exit without shutting the runtime down: a dropped MongoDB client spawns its `endSessions`
    // task, and if the shutdown drops the connection pool's worker under it the driver (3.9)
    // panics in that task, printing a backtrace after strait's own last line. Everything
    // strait must make durable is synced by the time `dispatch` returns.
    std::mem::forget(rt);
    code
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run { config } => run(config).await,
        Command::Serve { config } => serve(config).await,
        Command::Verify {
            config,
            limit,
            json,
        } => verify(config, limit, json).await,
        Command::Checkpoint { action } => checkpoint(action).await,
        Command::Load {
            target:
                LoadTarget::Dynamodb {
                    table,
                    region,
                    endpoint,
                    profile,
                    side,
                    side_digit,
                    rate,
                    ops,
                    keys,
                    writers,
                },
        } => {
            let spec = strait::load::LoadSpec {
                table,
                region,
                endpoint,
                profile,
                side,
                side_digit: side_digit.min(9),
                rate,
                ops,
                keys,
                writers,
            };
            let report = strait::load::run(&spec).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts {
            action: ConflictsAction::Ls { config, limit },
        } => {
            let cfg = PipelineConfig::load(&config).map_err(Error::from)?;
            for c in strait::two_way::conflicts::list(&cfg, limit).await? {
                let mut line = c.record;
                line["cluster"] = serde_json::Value::String(c.cluster);
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
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

async fn run(paths: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let mut configs = Vec::with_capacity(paths.len());
    for p in &paths {
        let cfg = PipelineConfig::load(p).map_err(Error::from)?;
        if let Some(other) = configs.iter().position(|c: &PipelineConfig| c.id == cfg.id) {
            return Err(Error::User(format!(
                "{} and {} both have id = {:?}: pipelines in one process need their own ids (their checkpoints are kept by id)",
                paths[other].display(),
                p.display(),
                cfg.id
            ))
            .into());
        }
        configs.push(cfg);
    }
    // One token stops them all: SIGTERM, or the first pipeline that fails for good (the same
    // child-token wiring as `strait serve`'s pipelines).
    let stop = CancellationToken::new();
    let many = configs.len() > 1;
    let supervisors: Vec<_> = configs
        .into_iter()
        .map(|cfg| {
            let mut s = strait::engine::supervisor::Supervisor::new(cfg);
            s.cancel = stop.child_token();
            if many {
                s.without_bars()
            } else {
                s
            }
        })
        .collect();
    let signals = tokio::spawn(shutdown_on_signal(stop.clone()));
    let result = run_together(&supervisors, &stop).await;
    signals.abort();
    match result {
        // The stream stops at the refused change rather than skip it. The context keeps the
        // error's class (and so the exit code) underneath.
        Err(e @ Error::Rejected { .. }) => Err(anyhow::Error::from(e).context(
            "stopped at a change the target refuses (the checkpoint stays before it; fix the target and run again)",
        )),
        other => Ok(other?),
    }?;
    info!("Pipeline stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Runs the pipelines until each has finished; the first one that fails cancels `stop`, their
/// common parent token, so the others stop too (a supervisor restarting the process restarts
/// them together), and its error is the result.
async fn run_together(
    supervisors: &[strait::engine::supervisor::Supervisor],
    stop: &CancellationToken,
) -> strait::error::Result<()> {
    let runs = supervisors.iter().map(|s| async move {
        let result = s.run().await;
        if result.is_err() {
            stop.cancel();
        }
        result
    });
    let mut first_error = None;
    for r in futures::future::join_all(runs).await {
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn serve(path: PathBuf) -> anyhow::Result<ExitCode> {
    let cfg = strait::serve::ServerConfig::load(&path).map_err(Error::from)?;
    let stop = CancellationToken::new();
    let signals = tokio::spawn(shutdown_on_signal(stop.clone()));
    let result = strait::serve::serve(cfg, stop).await;
    signals.abort();
    result?;
    Ok(ExitCode::SUCCESS)
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
    use strait::connectors::archive::{query, record::iso8601, ArchiveSink};
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
                Some(u) => {
                    strait::connectors::mongo::connect::connect_uri(u, source, Role::Sink).await?
                }
                None => strait::connectors::mongo::connect::connect(source, Role::Sink).await?,
            };
            let into = into.as_deref().map(strait::core::Namespace::parse);
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
        strait::connectors::mongo::connect::connect(source_cfg, Role::Source),
        strait::connectors::mongo::connect::connect(sink_cfg, Role::Sink)
    );
    let (source, target) = (source?, target?);
    let transforms = strait::transform::Transforms::from_config(&cfg);
    let delete = strait::core::OpType::Delete;
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
    let store = match (&cfg.source, cfg.mongo_sink().or(cfg.mongo_source())) {
        (strait::config::SourceEndpoint::Dynamodb(_), _) => {
            strait::engine::start::standalone_checkpoint_store(&cfg).await?
        }
        (_, Some(endpoint)) => {
            let client =
                strait::connectors::mongo::connect::connect(endpoint, Role::Sink).await?;
            strait::engine::start::checkpoint_store(&cfg, &client).await?
        }
        (_, None) => anyhow::bail!("a Kafka source keeps its position as consumer-group offsets in Kafka; use Kafka's tools (kafka-consumer-groups --reset-offsets) to move it"),
    };
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

/// A request to the pipeline's own API.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let (method, url, token, body) = (
        method.to_string(),
        format!("http://{addr}{path}"),
        token.map(str::to_string),
        body.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        let auth = token.map(|t| format!("Bearer {t}"));
        let response = match method.as_str() {
            "GET" => {
                let mut r = agent.get(&url);
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
                r.content_type("application/json").send(body.as_bytes())
            }
        };
        let mut response = response.with_context(|| {
            format!(
                "cannot reach the pipeline's API at {addr}; is `strait run` running with [api]?"
            )
        })?;
        let code = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        Ok((code, text))
    })
    .await?
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
