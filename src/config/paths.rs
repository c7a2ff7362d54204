//! Where the daemon keeps its files: the state directory and the paths under it.
//!
//! State directory, first that is set:
//! 1. `LOOPGATE_STATE_DIR`
//! 2. `server.state_dir` (relative: to the config file's directory)
//! 3. `$STATE_DIRECTORY` (systemd `StateDirectory=`; the first entry if several)
//! 4. `$XDG_STATE_HOME/loopgate` (only an absolute `XDG_STATE_HOME`, per the XDG spec)
//! 5. `$HOME/.local/state/loopgate`
//!
//! Each file under it: its env override, else its config key, else the default name in
//! the state directory — `LOOPGATE_DB` / `storage.sqlite_path` / `loopgate.db`,
//! `storage.spill_path` / `loopgate-spill.jsonl`, `LOOPGATE_PID_FILE` / `server.pid_file` /
//! `loopgate.pid`, `LOOPGATE_UPGRADE_SOCK` / `server.upgrade_sock` / `upgrade.sock`.

use std::path::{Path, PathBuf};

/// The state directory and the rule that chose it (for the startup log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    pub path: PathBuf,
    pub from: &'static str,
}

/// Resolve the state directory. `configured` is `server.state_dir`, already resolved
/// against the config file's directory; `env` reads the environment.
pub fn state_dir(
    configured: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StateDir, String> {
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if let Some(v) = var("LOOPGATE_STATE_DIR") {
        return Ok(StateDir {
            path: PathBuf::from(v),
            from: "LOOPGATE_STATE_DIR",
        });
    }
    if let Some(p) = configured {
        return Ok(StateDir {
            path: p,
            from: "server.state_dir",
        });
    }
    if let Some(v) = var("STATE_DIRECTORY") {
        // systemd joins several StateDirectory= entries with ':'.
        let first = v.split(':').next().unwrap_or(&v).to_string();
        return Ok(StateDir {
            path: PathBuf::from(first),
            from: "STATE_DIRECTORY",
        });
    }
    if let Some(v) = var("XDG_STATE_HOME").filter(|v| Path::new(v).is_absolute()) {
        return Ok(StateDir {
            path: Path::new(&v).join("loopgate"),
            from: "XDG_STATE_HOME",
        });
    }
    if let Some(v) = var("HOME") {
        return Ok(StateDir {
            path: Path::new(&v).join(".local/state/loopgate"),
            from: "HOME",
        });
    }
    Err("no state directory: set LOOPGATE_STATE_DIR or server.state_dir (or STATE_DIRECTORY, XDG_STATE_HOME, HOME)".into())
}

/// Longest path a unix socket address holds (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn precedence_is_env_then_config_then_systemd_then_xdg_then_home() {
        let all = [
            ("LOOPGATE_STATE_DIR", "/a"),
            ("STATE_DIRECTORY", "/var/lib/loopgate:/var/lib/other"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/home/u"),
        ];
        let d = state_dir(Some("/cfg".into()), &with(&all)).unwrap();
        assert_eq!((d.path, d.from), ("/a".into(), "LOOPGATE_STATE_DIR"));
        let d = state_dir(Some("/cfg".into()), &with(&all[1..])).unwrap();
        assert_eq!((d.path, d.from), ("/cfg".into(), "server.state_dir"));
        let d = state_dir(None, &with(&all[1..])).unwrap();
        assert_eq!(
            (d.path, d.from),
            ("/var/lib/loopgate".into(), "STATE_DIRECTORY")
        );
        let d = state_dir(None, &with(&all[2..])).unwrap();
        assert_eq!((d.path, d.from), ("/x/loopgate".into(), "XDG_STATE_HOME"));
        let d = state_dir(None, &with(&all[3..])).unwrap();
        assert_eq!(
            (d.path, d.from),
            ("/home/u/.local/state/loopgate".into(), "HOME")
        );
        // A relative XDG_STATE_HOME is invalid per the spec and ignored; empty values too.
        let d = state_dir(
            None,
            &with(&[
                ("XDG_STATE_HOME", "rel"),
                ("STATE_DIRECTORY", " "),
                ("HOME", "/h"),
            ]),
        )
        .unwrap();
        assert_eq!(d.path, PathBuf::from("/h/.local/state/loopgate"));
        let e = state_dir(None, &with(&[])).unwrap_err();
        assert!(e.contains("LOOPGATE_STATE_DIR"), "{e}");
    }
}
