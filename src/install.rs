//! `loopgate install`: put this binary, the systemd unit and a starting configuration in
//! place, so that the only edit left is the provider keys in `/etc/loopgate/env`.
//!
//! Existing `gateway.toml` and `env` files are never overwritten; the binary and the unit
//! are (the binary through a rename, so a running instance keeps its old inode and a
//! `systemctl reload loopgate` then upgrades to the new one without downtime).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The unit shipped in `systemd/`, for the default paths.
pub const UNIT: &str = include_str!("../systemd/loopgate.service");

pub struct InstallOptions {
    /// The binary goes to `<prefix>/bin/loopgate`.
    pub prefix: PathBuf,
    /// Config in `<sysconfdir>/loopgate/`.
    pub sysconfdir: PathBuf,
    pub unitdir: PathBuf,
    /// Run `systemctl daemon-reload` afterwards (only when systemd is running).
    pub daemon_reload: bool,
}

/// The unit with its paths pointed at where this install puts things.
pub fn unit_for(bin: &Path, confdir: &Path) -> String {
    UNIT.replace("/usr/local/bin/loopgate", &bin.to_string_lossy())
        .replace("/etc/loopgate/", &format!("{}/", confdir.to_string_lossy()))
}

/// The embedded configuration as a file of its own: the compiled-in provider profiles and
/// catalog (no `filters_dir`), state under the state directory.
pub fn starting_config() -> String {
    let mut out = String::from(
        "# Written by `loopgate install`. Every key: README.md, \"Configuration reference\".\n\
         # Provider keys do not go here: /etc/loopgate/env.\n",
    );
    for line in crate::config::EMBEDDED_CONFIG.lines() {
        if line.trim_start().starts_with("filters_dir") {
            out.push_str("# filters_dir = \"filters\"           # unset: the provider profiles compiled into the binary\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The environment file: every provider variable, commented out.
pub fn env_template() -> String {
    let mut out = String::from(
        "# loopgate environment (systemd EnvironmentFile=). Mode 0600: it holds secrets.\n\
         # Uncomment the providers you use; each variable set activates its provider.\n\
         # After a change: systemctl restart loopgate (or reload: zero-downtime).\n\n\
         # Gateway key with every scope (or configure hashed keys, `loopgate hash-key`):\n\
         # LOOPGATE_MASTER_KEY=\n\
         # Key that signs routing decisions (any long random string):\n\
         # LOOPGATE_DECISION_KEY=\n\n",
    );
    let mut vars: Vec<String> = Vec::new();
    if let Ok(profiles) = crate::routing::table::embedded_profiles() {
        for p in &profiles {
            for v in p.activation_vars() {
                if !vars.iter().any(|x| x == v) {
                    vars.push(v.to_string());
                }
            }
        }
    }
    for v in vars {
        out.push_str(&format!("# {v}=\n"));
    }
    out
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let tmp = path.with_extension("loopgate-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn mkdir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Install; returns what was done, one line per file, and the next steps.
pub fn install(opts: &InstallOptions) -> Result<String, String> {
    let bindir = opts.prefix.join("bin");
    let bin = bindir.join("loopgate");
    let confdir = opts.sysconfdir.join("loopgate");
    let mut report = Vec::new();
    mkdir(&bindir)?;
    mkdir(&confdir)?;
    mkdir(&opts.unitdir)?;

    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let bytes = std::fs::read(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let tmp = bin.with_extension("loopgate-tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    report.push(format!("installed {}", bin.display()));

    let cfg = confdir.join("gateway.toml");
    if cfg.exists() {
        report.push(format!("kept      {} (exists)", cfg.display()));
    } else {
        write_file(&cfg, &starting_config(), 0o644)?;
        report.push(format!("wrote     {}", cfg.display()));
    }
    let env = confdir.join("env");
    if env.exists() {
        report.push(format!("kept      {} (exists)", env.display()));
    } else {
        write_file(&env, &env_template(), 0o600)?;
        report.push(format!(
            "wrote     {} (mode 0600: put provider keys here)",
            env.display()
        ));
    }
    let unit = opts.unitdir.join("loopgate.service");
    write_file(&unit, &unit_for(&bin, &confdir), 0o644)?;
    report.push(format!("installed {}", unit.display()));

    if opts.daemon_reload && Path::new("/run/systemd/system").is_dir() {
        match std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status()
        {
            Ok(s) if s.success() => report.push("ran       systemctl daemon-reload".into()),
            Ok(s) => report.push(format!("systemctl daemon-reload failed ({s})")),
            Err(e) => report.push(format!("systemctl daemon-reload: {e}")),
        }
    }
    report.push(String::new());
    report.push(format!(
        "next: add provider keys to {}, then: systemctl enable --now loopgate",
        env.display()
    ));
    report.push("upgrade later with: loopgate install && systemctl reload loopgate".into());
    Ok(report.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_config_loads_with_the_compiled_in_profiles() {
        let text = starting_config();
        assert!(!text
            .lines()
            .any(|l| l.trim_start().starts_with("filters_dir")));
        let cfg = crate::config::GatewayConfig::parse(&text, "installed").unwrap();
        assert!(cfg.server.filters_dir.is_none());
    }

    #[test]
    fn unit_paths_follow_the_install_paths() {
        let u = unit_for(
            Path::new("/opt/lg/bin/loopgate"),
            Path::new("/opt/etc/loopgate"),
        );
        assert!(
            u.contains("ExecStart=/opt/lg/bin/loopgate serve -c /opt/etc/loopgate/gateway.toml")
        );
        assert!(u.contains("EnvironmentFile=-/opt/etc/loopgate/env"));
        assert!(!u.contains("/usr/local/bin"));
    }

    #[test]
    fn env_template_lists_provider_variables_commented_out() {
        let t = env_template();
        assert!(t.contains("# OPENAI_API_KEY="), "{t}");
        assert!(t.lines().all(|l| l.is_empty() || l.starts_with('#')));
    }
}
