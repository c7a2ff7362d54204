//! `loopgate`: serve, check, hash-key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Generate a new gateway key (or hash a given one) and print its config hash.
    HashKey {
        /// Hash this key instead of generating one.
        #[arg(long)]
        key: Option<String>,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOOPGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config, upgrade } => {
            init_logging();
            match loopgate::server::serve(loopgate::server::ServeOptions { config, upgrade }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loopgate: {e}");
                    ExitCode::from(2)
                }
            }
        }
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
        Cmd::HashKey { key } => {
            let key = key.unwrap_or_else(loopgate::routing::keys::generate_key);
            println!("key:  {key}");
            println!("hash: {}", loopgate::routing::keys::hash_key(&key));
            println!(
                "\n[[auth.keys]]\nid = \"my-app\"\nhash = \"{}\"\nscopes = [\"inference\"]",
                loopgate::routing::keys::hash_key(&key)
            );
            ExitCode::SUCCESS
        }
    }
}

fn check(config: Option<PathBuf>) -> Result<String, String> {
    let cfg =
        loopgate::config::GatewayConfig::load(config.as_deref()).map_err(|e| e.to_string())?;
    // The same build `serve` and reload run: what passes here serves.
    let rt = loopgate::routing::Runtime::build_checked(cfg, 1).map_err(|e| e.to_string())?;
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
