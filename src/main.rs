//! `loopgate`: serve, check, upgrade, install, hash-key, demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc malloc: see the note in Cargo.toml.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: a background thread returns freed pages on the decay timers even
/// when the process is idle after a burst (`_RJEM_MALLOC_CONF` overrides at run time).
#[cfg(all(unix, not(target_env = "musl")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true\0";

/// glibc's malloc serves only the C code (SQLite's page caches and statements; Rust allocates
/// from jemalloc). By default it gives each thread that runs SQLite an arena of its own (up
/// to eight per core), and each arena keeps the pages it freed: under load the freed page
/// caches of the writer, reader and checkpointer connections stayed resident in several
/// arenas at once. One arena keeps them in one place (docs/benchmarks.md, session 18).
/// `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` in the environment win.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_glibc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none()
        && std::env::var_os("GLIBC_TUNABLES").is_none()
    {
        // SAFETY: sets one malloc parameter; called first in `main`, before any thread runs.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[derive(Parser)]
#[command(
    name = "loopgate",
    version,
    about = "Self-hosted LLM gateway on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway daemon.
    Serve {
        /// Config file (default: the configuration compiled into the binary).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take over the listening sockets of a running instance (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate the config, provider profiles and catalog; exit non-zero on any error.
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Watch feedback routing work on a SIMULATED provider fleet (no API keys needed):
    /// shadow, then live, with cost saved and quality held printed as it goes.
    Demo {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value_t = 9091)]
        metrics_port: u16,
        /// Requests sent while the route is in shadow mode.
        #[arg(long, default_value_t = 1500)]
        shadow_requests: usize,
        /// Requests sent after the route goes live.
        #[arg(long, default_value_t = 1500)]
        live_requests: usize,
        /// The route's max_regression (quality drop allowed vs GPT-4 on the judge's 0..1 scale).
        #[arg(long, default_value_t = 0.1)]
        max_regression: f64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Working directory for the config and SQLite file (default: a new temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Exit when the script ends instead of leaving the gateway running.
        #[arg(long)]
        exit: bool,
    },
    /// Generate a new gateway key (or hash a given one) and print a ready-to-paste
    /// `[[auth.keys]]` entry.
    HashKey {
        /// Hash this key instead of generating one.
        #[arg(long)]
        key: Option<String>,
        /// The key's id in the entry (traces and audit name callers by it).
        #[arg(long, default_value = "my-app")]
        id: String,
        /// Comma-separated scopes: inference, read, admin.
        #[arg(long, value_delimiter = ',', default_value = "inference")]
        scopes: Vec<KeyScope>,
    },
    /// Replace the running instance with this binary without dropping a connection
    /// (Pingora graceful upgrade; the systemd unit's ExecReload).
    Upgrade {
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Pid of the running instance (default: the one in the pid file).
        #[arg(long)]
        pid: Option<i32>,
        /// Give up (leaving the old instance serving where possible) after this long.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Provider keys added at runtime: make a master key, or re-encrypt the stored keys
    /// under a new one.
    Vault {
        #[command(subcommand)]
        cmd: VaultCmd,
    },
    /// Install this binary, the systemd unit, /etc/loopgate/gateway.toml and
    /// /etc/loopgate/env (existing config files are kept).
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        #[arg(long, default_value = "/etc")]
        sysconfdir: PathBuf,
        #[arg(long, default_value = "/etc/systemd/system")]
        unitdir: PathBuf,
        /// Do not run `systemctl daemon-reload`.
        #[arg(long)]
        no_daemon_reload: bool,
    },
}

#[derive(Subcommand)]
enum VaultCmd {
    /// Print a new random master key (32 bytes, base64) for LOOPGATE_VAULT_KEY.
    NewKey,
    /// Re-encrypt every stored provider key under LOOPGATE_VAULT_KEY (or
    /// LOOPGATE_VAULT_KEY_FILE / vault.master_key_file), reading keys stored under
    /// LOOPGATE_VAULT_KEY_PREVIOUS. Gateways accept both keys while it runs.
    Rotate {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KeyScope {
    Inference,
    Read,
    Admin,
}

impl KeyScope {
    fn name(self) -> &'static str {
        match self {
            KeyScope::Inference => "inference",
            KeyScope::Read => "read",
            KeyScope::Admin => "admin",
        }
    }
}

/// A TOML basic string (quotes and escapes).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn init_logging() -> Result<(), ExitCode> {
    loopgate::logging::init().map_err(|e| {
        eprintln!("loopgate: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    limit_glibc_arenas();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config, upgrade } => {
            if let Err(code) = init_logging() {
                return code;
            }
            match loopgate::server::serve(loopgate::server::ServeOptions {
                config,
                upgrade,
                jobs: Default::default(),
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loopgate: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Vault {
            cmd: VaultCmd::NewKey,
        } => {
            println!("{}", loopgate::auth::provider_keys::new_master_key());
            ExitCode::SUCCESS
        }
        Cmd::Vault {
            cmd: VaultCmd::Rotate { config },
        } => match vault_rotate(config) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loopgate vault rotate: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Check { config } => match check(config) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loopgate check: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Demo {
            port,
            metrics_port,
            shadow_requests,
            live_requests,
            max_regression,
            seed,
            dir,
            exit,
        } => {
            let opts = loopgate::demo::DemoOptions {
                port,
                metrics_port,
                shadow_requests,
                live_requests,
                max_regression,
                seed,
                dir,
                exit,
            };
            match loopgate::demo::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loopgate demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::HashKey { key, id, scopes } => {
            if id.trim().is_empty() {
                eprintln!("loopgate hash-key: --id must not be empty");
                return ExitCode::from(2);
            }
            let generated = key.is_none();
            let key = key.unwrap_or_else(loopgate::auth::keys::generate_key);
            let hash = loopgate::auth::keys::hash_key(&key);
            let mut names: Vec<&str> = Vec::new();
            for s in scopes {
                if !names.contains(&s.name()) {
                    names.push(s.name());
                }
            }
            println!("key:  {key}");
            println!("hash: {hash}");
            if generated {
                println!("(the key is shown only now: give it to the client; the config keeps only the hash)");
            }
            println!(
                "\n[[auth.keys]]\nid = {}\nhash = {}\nscopes = [{}]",
                toml_str(&id),
                toml_str(&hash),
                names
                    .iter()
                    .map(|n| toml_str(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Cmd::Upgrade {
            config,
            pid,
            timeout_secs,
        } => {
            if let Err(code) = init_logging() {
                return code;
            }
            match loopgate::daemon::upgrade(loopgate::daemon::UpgradeOptions {
                config,
                pid,
                timeout: std::time::Duration::from_secs(timeout_secs.max(1)),
            }) {
                Ok(new) => {
                    println!(
                        "loopgate upgrade: pid {new} serves; the old instance drains and exits"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loopgate upgrade: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Install {
            prefix,
            sysconfdir,
            unitdir,
            no_daemon_reload,
        } => match loopgate::install::install(&loopgate::install::InstallOptions {
            prefix,
            sysconfdir,
            unitdir,
            daemon_reload: !no_daemon_reload,
        }) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loopgate install: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn vault_rotate(config: Option<PathBuf>) -> Result<String, String> {
    let cfg =
        loopgate::config::GatewayConfig::load(config.as_deref()).map_err(|e| e.to_string())?;
    let file = cfg
        .vault
        .master_key_file
        .as_deref()
        .map(|f| cfg.resolve_path(f));
    let master = loopgate::auth::provider_keys::MasterKeys::load(file.as_deref())?;
    let storage: loopgate::store::StorageConfig = toml::Value::Table(cfg.storage.clone())
        .try_into()
        .map_err(|e| format!("[storage]: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = loopgate::store::open(&storage)
            .await
            .map_err(|e| e.to_string())?;
        let r = loopgate::auth::provider_keys::rotate(store.as_ref(), &master).await?;
        let kid = master.kid().unwrap_or_default();
        let mut out = format!(
            "re-encrypted {} provider key(s) under master key {kid}; {} already under it",
            r.reencrypted, r.unchanged
        );
        if r.failed.is_empty() {
            Ok(out)
        } else {
            out.push_str(&format!(
                "; {} could not be decrypted (set the key they were stored under as LOOPGATE_VAULT_KEY_PREVIOUS):\n  {}",
                r.failed.len(),
                r.failed.join("\n  ")
            ));
            Err(out)
        }
    })
}

fn check(config: Option<PathBuf>) -> Result<String, String> {
    let cfg =
        loopgate::config::GatewayConfig::load(config.as_deref()).map_err(|e| e.to_string())?;
    // The same build `serve` and reload run: what passes here serves.
    let rt = loopgate::server::start_runtime(cfg)?;
    let mut out = format!(
        "ok: {} provider profiles ({} active: {}), {} catalog models, {} routing rules, {} keys",
        rt.known.len(),
        rt.providers.len(),
        rt.active_names().collect::<Vec<_>>().join(", "),
        rt.catalog.len(),
        rt.config.routes.len(),
        rt.keys.len()
    );
    for w in &rt.warnings {
        out.push_str("\nwarning: ");
        out.push_str(w);
    }
    Ok(out)
}
