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
    #[arg(long, global = true, value_enum, default_value = "text", env = "STRAIT_LOG_FORMAT")]
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
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
        Command::Verify { config, limit, json } => verify(config, limit, json).await,
        Command::Checkpoint { action } => checkpoint(action).await,
        Command::Config { action: ConfigAction::Check { config } } => {
            let cfg = PipelineConfig::load(&config).map_err(Error::from)?;
            print!("{}", cfg.redacted());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let cfg = PipelineConfig::load(&path).map_err(Error::from)?;
    let cancel = CancellationToken::new();
    let telemetry = Arc::new(Telemetry::default());
    let pipeline = Arc::new(strait::pipeline::run::open(cfg, telemetry.clone(), cancel.clone()).await?);
    info!(pipeline = %pipeline.cfg.id, mode = ?pipeline.cfg.mode, "Pipeline started.");
    let signals = tokio::spawn(shutdown_on_signal(cancel.clone()));
    let reporter_stop = CancellationToken::new();
    let reporter = tokio::spawn(strait::report::report(telemetry, reporter_stop.clone(), Duration::from_secs(10)));
    let result = strait::pipeline::run::run(pipeline).await;
    reporter_stop.cancel();
    let _ = reporter.await;
    signals.abort();
    result?;
    info!("Pipeline stopped.");
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

async fn verify(path: PathBuf, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = PipelineConfig::load(&path).map_err(Error::from)?;
    let (source, target) = tokio::join!(
        strait::connect::connect(&cfg.source, Role::Source),
        strait::connect::connect(&cfg.sink, Role::Sink)
    );
    let (source, target) = (source?, target?);
    let transforms = strait::transform::Transforms::from_config(&cfg);
    let reports = strait::verify::verify(&source, &target, &transforms, limit).await?;
    let equal = reports.iter().all(|r| r.is_equal());
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            let mark = if r.is_equal() { "OK  " } else { "DIFF" };
            println!(
                "{mark} {} -> {}: source {} docs, target {} docs, missing {}, extra {}, different {}",
                r.source_ns, r.target_ns, r.source_count, r.target_count, r.missing_total, r.extra_total, r.different_total
            );
            for (label, ids) in [("missing", &r.missing), ("extra", &r.extra), ("different", &r.different)] {
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
            if equal { "source and target are identical" } else { "source and target differ" },
            reports.len()
        );
    }
    Ok(if equal { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn checkpoint(action: CheckpointAction) -> anyhow::Result<ExitCode> {
    let (CheckpointAction::Show { config } | CheckpointAction::Reset { config }) = &action;
    let cfg = PipelineConfig::load(config).map_err(Error::from)?;
    let sink = strait::connect::connect(&cfg.sink, Role::Sink).await?;
    let store = strait::pipeline::run::checkpoint_store(&cfg, &sink).await?;
    match action {
        CheckpointAction::Show { .. } => match store.load(&cfg.id).await.map_err(Error::from)? {
            Some(c) => {
                println!("{}", c.to_json().context("encoding checkpoint")?);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("no checkpoint for pipeline {:?} in {}", cfg.id, store.describe());
                Ok(ExitCode::from(3))
            }
        },
        CheckpointAction::Reset { .. } => {
            let existed = store.reset(&cfg.id).await.map_err(Error::from)?;
            println!(
                "{}",
                if existed { format!("checkpoint of pipeline {:?} deleted", cfg.id) } else { format!("no checkpoint for pipeline {:?}", cfg.id) }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
