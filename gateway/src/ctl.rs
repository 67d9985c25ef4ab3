//! `weirctl`: the operator CLI for the config in etcd.
//!
//! ```text
//! weirctl [--etcd URL[,URL]] [--prefix /weir/] [--json] weights get ROUTE
//! weirctl ... weights set ROUTE ARM=WEIGHT... [--expect-revision N]
//! weirctl ... config import FILE | config export | config check [FILE]
//! ```
//!
//! Every write is validated the way the gateway validates (see
//! [`weir_conf::etcd::store`]). Exit status: 0 done, 1 refused or failed,
//! 2 bad usage, 3 compare-and-swap conflict.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use weir_conf::etcd::settings::TlsFiles;
use weir_conf::etcd::store::{ImportReport, Portable, Weights};
use weir_conf::etcd::{EtcdSettings, Store, StoreError};
use weir_conf::{ConfigError, Problems};

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
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
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
        #[arg(required = true, value_name = "ARM=WEIGHT")]
        weights: Vec<String>,
        /// Write only if the weights key is still at this revision (from
        /// `weights get`; 0 = the key must not exist). Without it, the
        /// revision just read is used.
        #[arg(long, value_name = "REVISION")]
        expect_revision: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Replace the config in etcd with a TOML file's pools, routes and timeouts.
    Import {
        /// The config file.
        file: PathBuf,
    },
    /// Print the config in etcd as TOML (or JSON with --json).
    Export,
    /// Validate the config in etcd, or FILE, and list every problem.
    Check {
        /// A config file to check instead of etcd.
        file: Option<PathBuf>,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let json = cli.json;
    match execute(cli).await {
        Ok(out) => {
            println!("{}", out.render(json));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = match &e {
                StoreError::Conflict { .. } => 3,
                _ => 1,
            };
            if json {
                println!("{}", error_json(&e));
            } else {
                eprintln!("weirctl: {e}");
            }
            ExitCode::from(code)
        }
    }
}

/// A command's result, shown for people or as JSON.
enum Output {
    Weights(Weights, Option<&'static str>),
    Imported(PathBuf, ImportReport),
    Exported(String, Value),
    Checked(String, Value),
    Rollbacks(Vec<weir_conf::resilience::RollbackRecord>),
    Cleared(String, String, bool),
}

impl Output {
    fn render(&self, json: bool) -> String {
        match self {
            Output::Weights(w, verb) => {
                let mut v = weights_json(w);
                if json {
                    if let Some(verb) = verb {
                        v["result"] = json!(verb);
                    }
                    return v.to_string();
                }
                let total: i64 = w.arms.iter().map(|(_, w)| *w).sum::<i64>().max(1);
                let mut s = format!(
                    "route {}{} (store revision {}; weights {})",
                    w.route,
                    verb.map(|v| format!(" {v}")).unwrap_or_default(),
                    w.revision,
                    if w.overridden {
                        format!("key at revision {}", w.mod_revision)
                    } else {
                        "from the route document; no weights key".to_owned()
                    }
                );
                for (arm, weight) in &w.arms {
                    let share = *weight as f64 * 100.0 / total as f64;
                    s.push_str(&format!("\n  {arm:<16} {weight:>8}  {share:5.1} %"));
                }
                s
            }
            Output::Imported(file, r) => {
                if json {
                    return json!({ "file": file.display().to_string(), "import": r }).to_string();
                }
                format!(
                    "imported {}: {} written, {} unchanged, {} deleted (revision {})",
                    file.display(),
                    r.written.len(),
                    r.unchanged,
                    r.deleted.len(),
                    r.revision
                )
            }
            Output::Exported(toml, v) => {
                if json {
                    v.to_string()
                } else {
                    toml.trim_end().to_owned()
                }
            }
            Output::Checked(text, v) => {
                if json {
                    v.to_string()
                } else {
                    text.clone()
                }
            }
            Output::Rollbacks(list) => {
                if json {
                    return json!({ "rollbacks": list }).to_string();
                }
                if list.is_empty() {
                    return "no arm is rolled back".to_owned();
                }
                list.iter()
                    .map(|r| {
                        format!(
                            "{}/{}: rolled back at {} by {}: {}",
                            r.route, r.arm, r.at, r.by, r.reason
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Output::Cleared(route, arm, cleared) => {
                if json {
                    return json!({ "route": route, "arm": arm, "cleared": cleared }).to_string();
                }
                if *cleared {
                    format!("{route}/{arm}: rollback cleared; the arm has its weight again")
                } else {
                    format!("{route}/{arm}: was not rolled back")
                }
            }
        }
    }
}

fn weights_json(w: &Weights) -> Value {
    let weights: serde_json::Map<String, Value> =
        w.arms.iter().map(|(a, v)| (a.clone(), json!(v))).collect();
    json!({
        "route": w.route,
        "weights": weights,
        "overridden": w.overridden,
        "mod_revision": w.mod_revision,
        "revision": w.revision,
    })
}

fn problems_json(problems: &Problems) -> Value {
    json!(
        problems
            .0
            .iter()
            .map(|p| json!({ "path": p.path, "message": p.message }))
            .collect::<Vec<_>>()
    )
}

fn error_json(e: &StoreError) -> Value {
    let kind = match e {
        StoreError::Etcd(_) => "etcd",
        StoreError::Refused(_) => "refused",
        StoreError::Invalid(_) => "invalid",
        StoreError::Conflict { .. } => "conflict",
    };
    let mut v = json!({ "error": { "kind": kind, "message": e.to_string() } });
    if let StoreError::Invalid(ConfigError::Invalid { problems }) = e {
        v["error"]["problems"] = problems_json(problems);
    }
    if let StoreError::Conflict {
        key,
        expected,
        actual,
    } = e
    {
        v["error"]["key"] = json!(key);
        v["error"]["expected"] = json!(expected);
        v["error"]["actual"] = json!(actual);
    }
    v
}

/// `v1=80` → `("v1", 80)`.
fn parse_pair(pair: &str) -> Result<(String, i64), StoreError> {
    let refuse = |m: String| Err(StoreError::Refused(m));
    let Some((arm, weight)) = pair.split_once('=') else {
        return refuse(format!("{pair:?} is not ARM=WEIGHT"));
    };
    if arm.is_empty() {
        return refuse(format!("{pair:?} names no arm"));
    }
    match weight.trim().parse::<i64>() {
        Ok(w) => Ok((arm.to_owned(), w)),
        Err(_) => refuse(format!("{pair:?}: the weight must be a whole number >= 0")),
    }
}

fn settings(cli: &Cli) -> Result<EtcdSettings, StoreError> {
    let mut s = EtcdSettings::new(cli.etcd.clone(), &cli.prefix);
    if let Some(user) = &cli.user {
        let (name, password) = user.split_once(':').unwrap_or((user.as_str(), ""));
        s.user = Some((name.to_owned(), password.to_owned()));
    }
    if cli.cacert.is_some() || cli.cert.is_some() {
        s.tls = Some(TlsFiles {
            ca: cli.cacert.clone(),
            identity: cli.cert.clone().zip(cli.key.clone()),
            domain: None,
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

async fn execute(cli: Cli) -> Result<Output, StoreError> {
    let settings = settings(&cli);
    let connect = || async { Store::connect(settings?).await };
    match cli.command {
        Command::Weights(WeightsCmd::Get { route }) => {
            let w = connect().await?.weights(&route).await?;
            Ok(Output::Weights(w, None))
        }
        Command::Weights(WeightsCmd::Set {
            route,
            weights,
            expect_revision,
        }) => {
            let pairs = weights
                .iter()
                .map(|p| parse_pair(p))
                .collect::<Result<Vec<_>, _>>()?;
            let w = connect()
                .await?
                .set_weights(&route, &pairs, expect_revision)
                .await?;
            Ok(Output::Weights(w, Some("set")))
        }
        Command::Config(ConfigCmd::Import { file }) => {
            let text = std::fs::read_to_string(&file).map_err(|source| {
                StoreError::Invalid(ConfigError::Io {
                    path: file.display().to_string(),
                    source,
                })
            })?;
            let config = weir_conf::parse_toml(&text, &file.display().to_string())
                .map_err(StoreError::Invalid)?;
            let report = connect().await?.import(&config).await?;
            Ok(Output::Imported(file, report))
        }
        Command::Config(ConfigCmd::Export) => {
            let mut store = connect().await?;
            let (config, revision) = store.export().await?;
            let portable = Portable::of(&config);
            let toml = toml::to_string(&portable)
                .map_err(|e| StoreError::Refused(format!("cannot write TOML: {e}")))?;
            let body = serde_json::to_value(&portable)
                .map_err(|e| StoreError::Refused(format!("cannot write JSON: {e}")))?;
            let header = format!(
                "# exported from {} at revision {revision}\n",
                store.settings()
            );
            Ok(Output::Exported(
                header + &toml,
                json!({ "revision": revision, "config": body }),
            ))
        }
        Command::Rollback(RollbackCmd::List) => {
            Ok(Output::Rollbacks(connect().await?.rollbacks().await?))
        }
        Command::Rollback(RollbackCmd::Clear { route, arm }) => {
            let cleared = connect().await?.clear_rollback(&route, &arm).await?;
            Ok(Output::Cleared(route, arm, cleared))
        }
        Command::Config(ConfigCmd::Check { file: Some(file) }) => check_file(&file),
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
            Ok(Output::Checked(text, v))
        }
    }
}
