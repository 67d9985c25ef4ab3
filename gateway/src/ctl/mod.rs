//! `weirctl`: the operator CLI for the config in etcd.
//!
//! ```text
//! weirctl [--etcd URL[,URL]] [--prefix /weir/] [--output table|json]
//!         [--dry-run] [--actor NAME] [--reason TEXT] COMMAND
//! weirctl ... weights get ROUTE
//! weirctl ... weights set ROUTE ARM=WEIGHT... [--expect-revision N]
//! weirctl ... weights step ROUTE ARM=PERCENT [--expect-revision N]
//! weirctl ... undo ROUTE | history [ROUTE] [--since REV] | status
//! weirctl ... diff FILE | config import [--prune] FILE | config export | config check [FILE]
//! weirctl ... rollback list | rollback clear ROUTE ARM | audit verify
//! ```
//!
//! Every write is validated the way the gateway validates (see
//! [`weir_conf::etcd::store`]), compare-and-swapped, and recorded in the
//! hash-chained audit log in the same transaction (`--actor`, default
//! `$USER`; `--reason`); `--dry-run` checks and reports without writing.
//! Invalid keys under the prefix are named as a warning and do not stop
//! reads or writes of the valid ones. Exit status: 0 done, 1 refused or
//! failed (and a broken audit chain), 2 bad usage, 3 compare-and-swap
//! conflict. `output` prints the results.

mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use weir_conf::etcd::audit::Actor;
use weir_conf::etcd::settings::TlsFiles;
use weir_conf::etcd::store::Portable;
use weir_conf::etcd::{EtcdSettings, Prune, Store, StoreError, Write};
use weir_conf::{ConfigError, Problems};

use self::output::{Done, Output};

/// Reads and writes Weir's config in etcd, validated the way the gateway
/// validates it.
#[derive(Parser, Debug)]
#[command(name = "weirctl", version)]
pub struct Cli {
    /// etcd client URLs.
    #[arg(
        long,
        global = true,
        env = "WEIR_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        value_name = "URL[,URL]"
    )]
    etcd: Vec<String>,
    /// Key prefix of the config.
    #[arg(long, global = true, default_value = "/weir/")]
    prefix: String,
    /// etcd user as NAME:PASSWORD.
    #[arg(
        long,
        global = true,
        env = "WEIRCTL_USER",
        value_name = "NAME:PASSWORD"
    )]
    user: Option<String>,
    /// CA certificate of the etcd servers (PEM), for https:// endpoints.
    #[arg(long, global = true, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// The server name etcd's certificate must carry, when not the
    /// endpoint's host (e.g. through `kubectl port-forward`).
    #[arg(long, global = true, value_name = "NAME")]
    tls_domain: Option<String>,
    /// Machine-readable JSON output (the same as `--output json`).
    #[arg(long, global = true)]
    json: bool,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: Format,
    /// Check a write and show what it would do; write nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Who makes the change, for the audit log (default: $USER).
    #[arg(long, global = true, env = "WEIRCTL_ACTOR", value_name = "NAME")]
    actor: Option<String>,
    /// Why, for the audit log.
    #[arg(long, global = true, value_name = "TEXT")]
    reason: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// `--output`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// For people.
    Table,
    /// One JSON document.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Arm weights of a route.
    #[command(subcommand)]
    Weights(WeightsCmd),
    /// The whole config.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Canary arms that gateways rolled back.
    #[command(subcommand)]
    Rollback(RollbackCmd),
    /// What `config import FILE` would change, key by key (deletions
    /// included: they happen only with --prune).
    Diff {
        /// The config file.
        file: PathBuf,
    },
    /// Restore the weights a route had before its last change.
    Undo {
        /// The route.
        route: String,
        /// Write only if the weights key is still at this revision.
        #[arg(long, value_name = "REVISION")]
        expect_revision: Option<i64>,
    },
    /// The changes of the weights, each with its audit record; changes
    /// made around the tools are marked unaudited.
    History {
        /// Only this route.
        route: Option<String>,
        /// Only changes after this revision.
        #[arg(long, default_value_t = 0, value_name = "REVISION")]
        since: i64,
    },
    /// Every live gateway replica, the revision it serves and its state.
    Status,
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Recompute the hash chain and name the first broken or missing record.
    Verify,
}

#[derive(Subcommand, Debug)]
enum RollbackCmd {
    /// List the rolled-back arms, with when, why and by which gateway.
    List,
    /// Give a rolled-back arm its weight again, on every gateway.
    Clear {
        /// The route.
        route: String,
        /// The arm.
        arm: String,
    },
}

#[derive(Subcommand, Debug)]
enum WeightsCmd {
    /// Show a route's effective weights and the revision to pass to `set`.
    Get {
        /// The route.
        route: String,
    },
    /// Set arm weights (arms not named keep theirs).
    Set {
        /// The route.
        route: String,
        /// ARM=WEIGHT pairs, e.g. `v1=80 v2=20`.
        #[arg(required = true, value_name = "ARM=WEIGHT", value_parser = parse_pair)]
        weights: Vec<(String, i64)>,
        /// Write only if the weights key is still at this revision (from
        /// `weights get`; 0 = the key must not exist). Without it, the
        /// revision just read is used.
        #[arg(long, value_name = "REVISION")]
        expect_revision: Option<i64>,
    },
    /// A canary step: ARM gets PERCENT % of the route's traffic, the other
    /// arms share the rest in proportion to their weights now (equally
    /// when they are all 0). Weights become percentages (they sum to 100).
    Step {
        /// The route.
        route: String,
        /// ARM=PERCENT, e.g. `v2=25`.
        #[arg(value_name = "ARM=PERCENT", value_parser = parse_pair)]
        step: (String, i64),
        /// Write only if the weights key is still at this revision.
        #[arg(long, value_name = "REVISION")]
        expect_revision: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Replace the config in etcd with a TOML file's pools, routes and
    /// timeouts. Refused, naming them, when it would delete keys the file
    /// does not hold (a weights override, say), unless --prune is given.
    Import {
        /// The config file.
        file: PathBuf,
        /// Delete the config keys the file does not hold (weights
        /// overrides, keys of pools and routes it no longer has, invalid keys).
        #[arg(long)]
        prune: bool,
    },
    /// Print the config in etcd as TOML (or JSON with --json).
    Export,
    /// Validate the config in etcd, or FILE, and list every problem.
    Check {
        /// A config file to check instead of etcd.
        file: Option<PathBuf>,
    },
}

/// Runs a parsed command line and prints its result; returns the exit
/// status (0 done, 1 refused or failed, 3 compare-and-swap conflict; clap
/// exits with 2 on bad usage before this runs).
pub async fn run(cli: Cli) -> ExitCode {
    let json = cli.json || cli.output == Format::Json;
    output::finish(execute(cli).await, json)
}

/// The write options of a command line.
fn write(cli: &Cli, expect: Option<i64>) -> Write {
    let name = cli
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    Write {
        expect,
        dry_run: cli.dry_run,
        actor: Actor::cli(name),
        reason: cli.reason.clone(),
    }
}

/// The weights of a canary step: `arm` gets `percent`, the others share
/// the rest in proportion to `current` (equally when all are 0), rounded
/// so that the total is exactly 100.
fn step_weights(
    current: &[(String, i64)],
    arm: &str,
    percent: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    if !(0..=100).contains(&percent) {
        return Err(StoreError::Refused(format!(
            "a step gives a share from 0 to 100 %, got {percent}"
        )));
    }
    if !current.iter().any(|(a, _)| a == arm) {
        let names: Vec<&str> = current.iter().map(|(a, _)| a.as_str()).collect();
        return Err(StoreError::Refused(format!(
            "the route has no arm {arm:?} (arms: {})",
            names.join(", ")
        )));
    }
    let others: Vec<&(String, i64)> = current.iter().filter(|(a, _)| a != arm).collect();
    if others.is_empty() && percent != 100 {
        return Err(StoreError::Refused(format!(
            "{arm:?} is the route's only arm: it always has 100 %"
        )));
    }
    let rest = 100 - percent;
    let sum: i64 = others.iter().map(|(_, w)| *w).sum();
    let mut out = vec![(arm.to_owned(), percent)];
    let mut given = 0;
    for (i, (a, w)) in others.iter().enumerate() {
        let share = if i + 1 == others.len() {
            rest - given
        } else if sum == 0 {
            rest / others.len() as i64
        } else {
            rest * w / sum
        };
        given += share;
        out.push((a.clone(), share));
    }
    Ok(out)
}

/// `v1=80` → `("v1", 80)`: the syntax of a weight change, checked while the
/// command line is parsed (a mistake there is bad usage, exit status 2).
fn parse_pair(pair: &str) -> Result<(String, i64), String> {
    let Some((arm, weight)) = pair.split_once('=') else {
        return Err(format!("{pair:?} is not ARM=WEIGHT"));
    };
    if arm.is_empty() {
        return Err(format!("{pair:?} names no arm (ARM=WEIGHT)"));
    }
    weight
        .trim()
        .parse::<i64>()
        .map(|w| (arm.to_owned(), w))
        .map_err(|_| format!("{pair:?}: ARM=WEIGHT needs a whole number as the weight"))
}

fn settings(cli: &Cli) -> Result<EtcdSettings, StoreError> {
    let mut s = EtcdSettings::new(cli.etcd.clone(), &cli.prefix);
    if let Some(user) = &cli.user {
        let (name, password) = user.split_once(':').unwrap_or((user.as_str(), ""));
        s.user = Some((name.to_owned(), password.to_owned()));
    }
    if cli.cacert.is_some() || cli.cert.is_some() || cli.tls_domain.is_some() {
        s.tls = Some(TlsFiles {
            ca: cli.cacert.clone(),
            identity: cli.cert.clone().zip(cli.key.clone()),
            domain: cli.tls_domain.clone(),
        });
    }
    let mut problems = Problems::default();
    s.validate("--etcd", &mut problems);
    if problems.is_empty() {
        Ok(s)
    } else {
        Err(StoreError::Invalid(ConfigError::Invalid { problems }))
    }
}

fn summary(snapshot: &weir_conf::Snapshot) -> String {
    format!(
        "{} route(s), {} pool(s)",
        snapshot.routes.len(),
        snapshot.pools.len()
    )
}

fn check_file(file: &std::path::Path) -> Result<Output, StoreError> {
    let snapshot = weir_conf::load_file(file).map_err(StoreError::Invalid)?;
    let text = format!("ok: {}: {}", file.display(), summary(&snapshot));
    let v = json!({
        "ok": true,
        "file": file.display().to_string(),
        "routes": snapshot.routes.len(),
        "pools": snapshot.pools.len(),
    });
    Ok(Output::Checked(text, v))
}

/// A result read from a config without problems.
fn clean(output: Output) -> Done {
    Done {
        output,
        problems: Problems::default(),
    }
}

fn read_config(file: &std::path::Path) -> Result<weir_conf::Config, StoreError> {
    let text = std::fs::read_to_string(file).map_err(|source| {
        StoreError::Invalid(ConfigError::Io {
            path: file.display().to_string(),
            source,
        })
    })?;
    weir_conf::parse_toml(&text, &file.display().to_string()).map_err(StoreError::Invalid)
}

async fn execute(cli: Cli) -> Result<Done, StoreError> {
    let settings = settings(&cli);
    let connect = || async { Store::connect(settings?).await };
    match &cli.command {
        Command::Weights(WeightsCmd::Get { route }) => {
            let mut w = connect().await?.weights(route).await?;
            let problems = std::mem::take(&mut w.problems);
            Ok(Done {
                output: Output::Weights(w, None),
                problems,
            })
        }
        Command::Weights(WeightsCmd::Set {
            route,
            weights,
            expect_revision,
        }) => {
            let write = write(&cli, *expect_revision);
            let mut c = connect().await?.set_weights(route, weights, &write).await?;
            let problems = std::mem::take(&mut c.after.problems);
            Ok(Done {
                output: Output::Change(c, "set"),
                problems,
            })
        }
        Command::Weights(WeightsCmd::Step {
            route,
            step: (arm, percent),
            expect_revision,
        }) => {
            let mut store = connect().await?;
            let now = store.weights(route).await?;
            let weights = step_weights(&now.arms, arm, *percent)?;
            let write = write(&cli, Some(expect_revision.unwrap_or(now.mod_revision)));
            let mut c = store.set_weights(route, &weights, &write).await?;
            let problems = std::mem::take(&mut c.after.problems);
            Ok(Done {
                output: Output::Change(c, "stepped"),
                problems,
            })
        }
        Command::Undo {
            route,
            expect_revision,
        } => {
            let write = write(&cli, *expect_revision);
            let mut c = connect().await?.undo(route, &write).await?;
            let problems = std::mem::take(&mut c.after.problems);
            Ok(Done {
                output: Output::Change(c, "restored"),
                problems,
            })
        }
        Command::History { route, since } => {
            let h = connect().await?.history(route.as_deref(), *since).await?;
            Ok(clean(Output::History(h)))
        }
        Command::Status => {
            let mut store = connect().await?;
            let replicas = store.replicas().await?;
            let read = store.read().await?;
            let latest = read
                .entries
                .values()
                .map(|e| e.mod_revision)
                .max()
                .unwrap_or(0);
            Ok(clean(Output::Status(replicas, latest)))
        }
        Command::Audit(AuditCmd::Verify) => {
            let log = connect().await?.audit().await?;
            if let Some(broken) = &log.verdict.broken {
                return Err(StoreError::Refused(format!(
                    "the audit chain is broken: {broken} ({} record(s) read)",
                    log.records.len()
                )));
            }
            Ok(clean(Output::Audit(log)))
        }
        Command::Diff { file } => {
            let config = read_config(file)?;
            let mut dry = write(&cli, None);
            dry.dry_run = true;
            let report = connect()
                .await?
                .import(&config, Prune::Delete, &dry)
                .await?;
            Ok(clean(Output::Diff(file.clone(), report)))
        }
        Command::Config(ConfigCmd::Import { file, prune }) => {
            let config = read_config(file)?;
            let prune = if *prune { Prune::Delete } else { Prune::Refuse };
            let write = write(&cli, None);
            let report = connect().await?.import(&config, prune, &write).await?;
            Ok(clean(Output::Imported(file.clone(), report)))
        }
        Command::Config(ConfigCmd::Export) => {
            let mut store = connect().await?;
            let exported = store.export().await?;
            let portable = Portable::of(&exported.config);
            let toml = toml::to_string(&portable)
                .map_err(|e| StoreError::Refused(format!("cannot write TOML: {e}")))?;
            let body = serde_json::to_value(&portable)
                .map_err(|e| StoreError::Refused(format!("cannot write JSON: {e}")))?;
            let revision = exported.revision;
            let header = format!(
                "# exported from {} at revision {revision}\n",
                store.settings()
            );
            Ok(Done {
                output: Output::Exported(
                    header + &toml,
                    json!({ "revision": revision, "config": body }),
                ),
                problems: exported.problems,
            })
        }
        Command::Rollback(RollbackCmd::List) => Ok(clean(Output::Rollbacks(
            connect().await?.rollbacks().await?,
        ))),
        Command::Rollback(RollbackCmd::Clear { route, arm }) => {
            let write = write(&cli, None);
            let cleared = connect().await?.clear_rollback(route, arm, &write).await?;
            Ok(clean(Output::Cleared(
                route.clone(),
                arm.clone(),
                cleared,
                cli.dry_run,
            )))
        }
        Command::Config(ConfigCmd::Check { file: Some(file) }) => check_file(file).map(clean),
        Command::Config(ConfigCmd::Check { file: None }) => {
            let mut store = connect().await?;
            let (snapshot, revision) = store.check().await?;
            let text = format!(
                "ok: {} at revision {revision}: {}",
                store.settings(),
                summary(&snapshot)
            );
            let v = json!({
                "ok": true,
                "revision": revision,
                "routes": snapshot.routes.len(),
                "pools": snapshot.pools.len(),
            });
            Ok(clean(Output::Checked(text, v)))
        }
    }
}
