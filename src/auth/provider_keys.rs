//! Provider API keys added at runtime (`/v1/providers/{name}/keys`).
//!
//! - **At rest**: each secret is sealed with ChaCha20-Poly1305 (the `chacha20poly1305`
//!   crate) under a 32-byte master key from `LOOPGATE_VAULT_KEY`, `LOOPGATE_VAULT_KEY_FILE`
//!   or `vault.master_key_file`; the provider name and key id are the associated data, so a
//!   ciphertext cannot be moved to another row. The store holds the ciphertext, the master
//!   key's fingerprint (`kid`), the last four characters, the label and the weight — never
//!   the secret. Without a master key nothing can be added (never plaintext).
//! - **In process**: every gateway mirrors the decrypted keys in an [`ArcSwap`] table that
//!   the virtual keys' background poll (`virtual_keys::RefreshService`, every 250 ms)
//!   rebuilds from the store, so an add or a delete on one gateway reaches every gateway
//!   on the same store within one refresh.
//! - **Per request**: a weighted random choice among the provider's keys that are not
//!   cooling down ([`ProviderKeys::pick`]); a key the provider answers 401/403 or 429 to is
//!   left out for a while ([`ProviderKeys::reject`]), on this gateway.
//! - **Rotation of the master key**: [`rotate`] (`loopgate vault rotate`) re-encrypts every
//!   row under the current key, reading rows sealed under `LOOPGATE_VAULT_KEY_PREVIOUS`;
//!   gateways accept both keys meanwhile.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use dashmap::DashMap;
use rand::{Rng, RngCore};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::VaultConfig;
use crate::error::GatewayError;
use crate::providers::Secret;
use crate::store::{ProviderKeyRow, Store};

/// The master key itself (base64 or hex of 32 bytes).
pub const ENV_KEY: &str = "LOOPGATE_VAULT_KEY";
/// A file holding the master key.
pub const ENV_KEY_FILE: &str = "LOOPGATE_VAULT_KEY_FILE";
/// The master key being rotated away from: rows sealed under it are still read.
pub const ENV_KEY_PREVIOUS: &str = "LOOPGATE_VAULT_KEY_PREVIOUS";

const BLOB_PREFIX: &str = "v1.";
const NONCE_LEN: usize = 12;
/// Longest accepted provider key.
pub const MAX_SECRET_BYTES: usize = 4096;
pub const MAX_WEIGHT: u64 = 1000;
const MAX_LABEL: usize = 256;
/// Fields of `POST /v1/providers/{name}/keys`.
pub const FIELDS: &[&str] = &["key", "weight", "label"];

/// One master key and its public fingerprint.
pub struct MasterKey {
    cipher: ChaCha20Poly1305,
    /// 16 hex digits of a SHA-256 over a domain tag and the key: names the key in the
    /// store without revealing it.
    pub kid: String,
}

impl MasterKey {
    /// Parse 32 bytes written as 64 hex digits or base64 (standard or URL-safe).
    pub fn parse(text: &str, source: &str) -> Result<MasterKey, String> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).ok()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .ok()
                .or_else(|| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(t.trim_end_matches('='))
                        .ok()
                })
        };
        match bytes {
            Some(b) if b.len() == 32 => {
                let mut h = Sha256::new();
                h.update(b"loopgate vault key id\0");
                h.update(&b);
                let kid = hex::encode(&h.finalize()[..8]);
                Ok(MasterKey {
                    cipher: ChaCha20Poly1305::new(Key::from_slice(&b)),
                    kid,
                })
            }
            _ => Err(format!(
                "{source} must hold a master key of 32 random bytes, as base64 or 64 hex digits \
                 (generate one with `loopgate vault new-key`)"
            )),
        }
    }

    fn seal(&self, aad: &[u8], secret: &str) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad,
                },
            )
            .map_err(|_| "encryption failed".to_string())?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(format!(
            "{BLOB_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        ))
    }

    fn open(&self, aad: &[u8], blob: &str) -> Result<Secret, OpenError> {
        let raw = blob
            .strip_prefix(BLOB_PREFIX)
            .and_then(|b| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(b)
                    .ok()
            })
            .filter(|r| r.len() > NONCE_LEN)
            .ok_or(OpenError::Corrupt)?;
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| OpenError::Corrupt)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| OpenError::Corrupt)
    }
}

/// Why a stored key cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// No master key is configured.
    NoMasterKey,
    /// Sealed under a master key that is neither the current nor the previous one.
    UnknownKey(String),
    /// The ciphertext does not authenticate under the key its `kid` names.
    Corrupt,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::NoMasterKey => write!(f, "no master key is configured (set {ENV_KEY} or {ENV_KEY_FILE})"),
            OpenError::UnknownKey(kid) => write!(
                f,
                "it was encrypted under master key {kid}, which is neither {ENV_KEY} nor {ENV_KEY_PREVIOUS} on this gateway"
            ),
            OpenError::Corrupt => f.write_str("its ciphertext does not authenticate under the master key it names"),
        }
    }
}

/// The current master key (seals and opens) and the previous one (opens only).
#[derive(Default)]
pub struct MasterKeys {
    current: Option<MasterKey>,
    previous: Option<MasterKey>,
}

fn aad(provider: &str, id: &str) -> Vec<u8> {
    format!("loopgate provider key\0{provider}\0{id}").into_bytes()
}

impl MasterKeys {
    /// From the environment (`LOOPGATE_VAULT_KEY`, then `LOOPGATE_VAULT_KEY_FILE`), else
    /// `file` (`vault.master_key_file`, resolved by the caller); the previous key from
    /// `LOOPGATE_VAULT_KEY_PREVIOUS`. No key at all is fine (the endpoints say what to
    /// set); a malformed or unreadable one is an error.
    pub fn load(file: Option<&Path>) -> Result<MasterKeys, String> {
        Self::load_with(|k| std::env::var(k).ok(), file)
    }

    pub fn load_with(
        var: impl Fn(&str) -> Option<String>,
        file: Option<&Path>,
    ) -> Result<MasterKeys, String> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let read = |p: &Path, what: &str| {
            std::fs::read_to_string(p)
                .map_err(|e| format!("{what} {}: {e}", p.display()))
                .and_then(|t| MasterKey::parse(&t, &format!("{what} {}", p.display())))
        };
        let current = match (var(ENV_KEY), var(ENV_KEY_FILE)) {
            (Some(v), _) => Some(MasterKey::parse(&v, ENV_KEY)?),
            (None, Some(f)) => Some(read(Path::new(&f), ENV_KEY_FILE)?),
            (None, None) => match file {
                Some(p) => Some(read(p, "vault.master_key_file")?),
                None => None,
            },
        };
        let previous = var(ENV_KEY_PREVIOUS)
            .map(|v| MasterKey::parse(&v, ENV_KEY_PREVIOUS))
            .transpose()?;
        if previous.is_some() && current.is_none() {
            return Err(format!(
                "{ENV_KEY_PREVIOUS} is set without a current master key ({ENV_KEY} or {ENV_KEY_FILE})"
            ));
        }
        Ok(MasterKeys { current, previous })
    }

    pub fn is_set(&self) -> bool {
        self.current.is_some()
    }

    /// The current key's fingerprint.
    pub fn kid(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.kid.as_str())
    }

    /// Encrypt a secret for one row: `(kid, blob)`.
    pub fn seal(
        &self,
        provider: &str,
        id: &str,
        secret: &str,
    ) -> Result<(String, String), OpenError> {
        let k = self.current.as_ref().ok_or(OpenError::NoMasterKey)?;
        let blob = k
            .seal(&aad(provider, id), secret)
            .map_err(|_| OpenError::Corrupt)?;
        Ok((k.kid.clone(), blob))
    }

    /// Decrypt a row's secret with the key its `kid` names.
    pub fn open(&self, row: &ProviderKeyRow) -> Result<Secret, OpenError> {
        if self.current.is_none() {
            return Err(OpenError::NoMasterKey);
        }
        let key = [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find(|k| k.kid == row.kid)
            .ok_or_else(|| OpenError::UnknownKey(row.kid.clone()))?;
        key.open(&aad(&row.provider, &row.id), &row.secret)
    }
}

/// A new key as `POST /v1/providers/{name}/keys` gives it.
pub struct NewKey {
    pub secret: Secret,
    pub weight: u32,
    pub label: Option<String>,
}

fn bad(field: &str, what: &str) -> GatewayError {
    GatewayError::invalid(format!("'{field}' {what}"), Some(field))
}

/// Validate a `POST` body; errors name the field.
pub fn parse_new_key(obj: &Map<String, Value>) -> Result<NewKey, GatewayError> {
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(GatewayError::invalid(
            format!("Unknown field '{k}' (allowed: key, weight, label)."),
            Some(k),
        ));
    }
    let secret = match obj.get("key") {
        None | Some(Value::Null) => return Err(bad("key", "is required: the provider's API key")),
        Some(Value::String(s)) if s.is_empty() => return Err(bad("key", "must not be empty")),
        Some(Value::String(s))
            if s.len() <= MAX_SECRET_BYTES && s.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            Secret::new(s.clone())
        }
        Some(_) => {
            return Err(bad(
                "key",
                &format!("must be a string of printable ASCII without spaces, at most {MAX_SECRET_BYTES} bytes"),
            ))
        }
    };
    let weight = match obj.get("weight") {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|w| (1..=MAX_WEIGHT).contains(&w)) => {
            n.as_u64().unwrap_or(1) as u32
        }
        Some(_) => {
            return Err(bad(
                "weight",
                &format!("must be a whole number from 1 to {MAX_WEIGHT}"),
            ))
        }
    };
    let label = match obj.get("label") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_LABEL => Some(s.clone()),
        Some(_) => {
            return Err(bad(
                "label",
                &format!("must be a non-empty string of at most {MAX_LABEL} bytes"),
            ))
        }
    };
    Ok(NewKey {
        secret,
        weight,
        label,
    })
}

/// The last four characters shown in listings (none for keys shorter than 16).
pub fn last4(secret: &str) -> String {
    if secret.len() >= 16 {
        secret[secret.len() - 4..].to_string()
    } else {
        String::new()
    }
}

/// A decrypted key as the request path sees it.
pub struct LiveKey {
    pub id: String,
    pub provider: String,
    pub weight: u32,
    secret: Secret,
    /// The sealed form it was read from (a row re-read unchanged is not decrypted again).
    blob: String,
}

impl LiveKey {
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
}

impl std::fmt::Debug for LiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKey")
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field("weight", &self.weight)
            .finish()
    }
}

#[derive(Default)]
struct ProviderSet {
    keys: Vec<Arc<LiveKey>>,
    /// Rows of this provider that could not be decrypted.
    unreadable: usize,
}

/// A key left out until `until_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cooldown {
    pub until_ms: i64,
    /// `unauthorized` (401/403) or `rate_limited` (429).
    pub reason: &'static str,
}

/// What a request signs with.
#[derive(Debug)]
pub enum Pick {
    /// The provider has no runtime keys: its own credential (env var).
    None,
    Key(Arc<LiveKey>),
    /// Every runtime key is cooling down: the provider's own credential.
    AllCooling,
    /// Runtime keys exist but none can be decrypted here: an error, never a silent switch.
    Unreadable(usize),
}

/// The in-process mirror of the store's provider keys, with this gateway's cooldowns.
pub struct ProviderKeys {
    master: MasterKeys,
    cfg: VaultConfig,
    table: ArcSwap<HashMap<String, ProviderSet>>,
    cooldowns: DashMap<String, Cooldown>,
    /// Ids whose decryption failure was logged (once per key).
    logged: Mutex<HashSet<String>>,
    /// Providers whose gauges were set (so a provider without keys goes back to 0).
    gauged: Mutex<HashSet<String>>,
    /// False until the first read of the store (see [`ProviderKeys::wait_loaded`]).
    loaded: AtomicBool,
    load_done: tokio::sync::Notify,
    /// Providers with at least one decrypted key, republished when that set changes (the
    /// config reload service rebuilds the routing snapshot on it: activation by key).
    keyed: tokio::sync::watch::Sender<BTreeSet<String>>,
}

impl Default for ProviderKeys {
    /// No store behind it: empty and loaded.
    fn default() -> Self {
        ProviderKeys::new(MasterKeys::default(), VaultConfig::default(), false)
    }
}

/// Longest a request waits for the first read of the store after a start.
pub const FIRST_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl ProviderKeys {
    /// `from_store`: the table is filled by the store poll; until its first read a
    /// request waits (at most [`FIRST_LOAD_WAIT`]) rather than sign with the env key.
    pub fn new(master: MasterKeys, cfg: VaultConfig, from_store: bool) -> ProviderKeys {
        ProviderKeys {
            master,
            cfg,
            table: ArcSwap::from_pointee(HashMap::new()),
            cooldowns: DashMap::new(),
            logged: Mutex::new(HashSet::new()),
            gauged: Mutex::new(HashSet::new()),
            loaded: AtomicBool::new(!from_store),
            load_done: tokio::sync::Notify::new(),
            keyed: tokio::sync::watch::Sender::new(BTreeSet::new()),
        }
    }

    /// Providers with at least one key this gateway can decrypt (cooling down or not).
    pub fn keyed_providers(&self) -> BTreeSet<String> {
        self.keyed.borrow().clone()
    }

    /// Notified whenever [`ProviderKeys::keyed_providers`] changes.
    pub fn watch_keyed(&self) -> tokio::sync::watch::Receiver<BTreeSet<String>> {
        self.keyed.subscribe()
    }

    /// The store could not be read: stop holding requests for the first load (they sign
    /// with what this gateway has, the env keys, until the store answers).
    pub fn mark_loaded(&self) {
        if !self.loaded.swap(true, Ordering::AcqRel) {
            self.load_done.notify_waiters();
        }
    }

    /// Right after a start, before the poll's first read of the store: wait for it (at
    /// most [`FIRST_LOAD_WAIT`]), so the first requests do not sign with the env key when
    /// runtime keys exist. Afterwards one atomic load.
    pub async fn wait_loaded(&self) {
        if self.loaded.load(Ordering::Acquire) {
            return;
        }
        let done = self.load_done.notified();
        if self.loaded.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(FIRST_LOAD_WAIT, done).await;
    }

    pub fn master(&self) -> &MasterKeys {
        &self.master
    }

    /// Replace the mirror with the store's rows (decrypting only new or changed ones).
    pub fn replace(&self, rows: &[ProviderKeyRow]) {
        let old = self.table.load();
        let prev: HashMap<&str, &Arc<LiveKey>> = old
            .values()
            .flat_map(|s| s.keys.iter())
            .map(|k| (k.id.as_str(), k))
            .collect();
        let mut next: HashMap<String, ProviderSet> = HashMap::new();
        for row in rows {
            let set = next.entry(row.provider.clone()).or_default();
            let weight = u32::try_from(row.weight.clamp(1, MAX_WEIGHT as i64)).unwrap_or(1);
            if let Some(k) = prev
                .get(row.id.as_str())
                .filter(|k| k.blob == row.secret && k.weight == weight)
            {
                set.keys.push(Arc::clone(k));
                continue;
            }
            match self.master.open(row) {
                Ok(secret) => set.keys.push(Arc::new(LiveKey {
                    id: row.id.clone(),
                    provider: row.provider.clone(),
                    weight,
                    secret,
                    blob: row.secret.clone(),
                })),
                Err(e) => {
                    set.unreadable += 1;
                    let first = self
                        .logged
                        .lock()
                        .map(|mut l| l.insert(row.id.clone()))
                        .unwrap_or(false);
                    if first {
                        tracing::error!(
                            provider = %row.provider,
                            key_id = %row.id,
                            "provider key cannot be decrypted and is not used: {e}"
                        );
                    }
                }
            }
        }
        let live: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        self.cooldowns.retain(|id, _| live.contains(id.as_str()));
        let keyed: BTreeSet<String> = next
            .iter()
            .filter(|(_, set)| !set.keys.is_empty())
            .map(|(p, _)| p.clone())
            .collect();
        self.table.store(Arc::new(next));
        self.keyed.send_if_modified(|cur| {
            let changed = *cur != keyed;
            if changed {
                *cur = keyed;
            }
            changed
        });
        self.mark_loaded();
        self.publish_gauges(crate::auth::virtual_keys::now_ms());
    }

    fn cooling(&self, id: &str, now_ms: i64) -> Option<Cooldown> {
        self.cooldowns
            .get(id)
            .map(|c| *c)
            .filter(|c| c.until_ms > now_ms)
    }

    /// The key's cooldown in force, if any.
    pub fn cooldown(&self, id: &str, now_ms: i64) -> Option<Cooldown> {
        self.cooling(id, now_ms)
    }

    /// Whether this gateway holds the row decrypted.
    pub fn readable(&self, provider: &str, id: &str) -> bool {
        self.table
            .load()
            .get(provider)
            .is_some_and(|s| s.keys.iter().any(|k| k.id == id))
    }

    /// Choose the key a request to `provider` signs with: weighted at random among the
    /// keys not cooling down.
    pub fn pick(&self, provider: &str, now_ms: i64) -> Pick {
        let table = self.table.load();
        let Some(set) = table.get(provider) else {
            return Pick::None;
        };
        let ready: Vec<&Arc<LiveKey>> = set
            .keys
            .iter()
            .filter(|k| self.cooling(&k.id, now_ms).is_none())
            .collect();
        let total: u64 = ready.iter().map(|k| u64::from(k.weight)).sum();
        if total == 0 {
            return match (set.keys.is_empty(), set.unreadable) {
                (false, _) => Pick::AllCooling,
                (true, 0) => Pick::None,
                (true, n) => Pick::Unreadable(n),
            };
        }
        let mut r = rand::thread_rng().gen_range(0..total);
        for k in &ready {
            let w = u64::from(k.weight);
            if r < w {
                return Pick::Key(Arc::clone(k));
            }
            r -= w;
        }
        ready
            .last()
            .map_or(Pick::None, |k| Pick::Key(Arc::clone(k)))
    }

    /// The provider answered `status` to a request signed with `key`: on 401/403 or 429
    /// cool the key down (429: the provider's `retry-after` when given, else the
    /// configured default; bounded by `vault.max_cooldown_secs`) and return true.
    pub fn reject(
        &self,
        key: &LiveKey,
        status: u16,
        retry_after: Option<&str>,
        now_ms: i64,
    ) -> bool {
        let (reason, secs) = match status {
            401 | 403 => ("unauthorized", self.cfg.cooldown_unauthorized_secs),
            429 => (
                "rate_limited",
                retry_after
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map_or(self.cfg.cooldown_rate_limited_secs, |s| s.ceil() as u64),
            ),
            _ => return false,
        };
        let secs = secs.clamp(1, self.cfg.max_cooldown_secs);
        self.cooldowns.insert(
            key.id.clone(),
            Cooldown {
                until_ms: now_ms.saturating_add(secs as i64 * 1000),
                reason,
            },
        );
        let m = crate::metrics::metrics();
        m.provider_key_cooldowns
            .with_label_values(&[key.provider.as_str(), reason])
            .inc();
        tracing::warn!(
            provider = %key.provider,
            key_id = %key.id,
            status,
            cooldown_secs = secs,
            "provider rejected a runtime key; it is left out until its cooldown ends"
        );
        self.publish_gauges(now_ms);
        true
    }

    /// Set the per-provider gauges (keys usable, keys cooling down).
    pub fn publish_gauges(&self, now_ms: i64) {
        let m = crate::metrics::metrics();
        let table = self.table.load();
        let Ok(mut gauged) = self.gauged.lock() else {
            return;
        };
        for p in gauged.iter().filter(|p| !table.contains_key(*p)) {
            m.provider_keys.with_label_values(&[p.as_str()]).set(0);
            m.provider_keys_cooling
                .with_label_values(&[p.as_str()])
                .set(0);
        }
        gauged.retain(|p| table.contains_key(p));
        for (p, set) in table.iter() {
            let cooling = set
                .keys
                .iter()
                .filter(|k| self.cooling(&k.id, now_ms).is_some())
                .count();
            m.provider_keys
                .with_label_values(&[p.as_str()])
                .set(set.keys.len() as i64);
            m.provider_keys_cooling
                .with_label_values(&[p.as_str()])
                .set(cooling as i64);
            gauged.insert(p.clone());
        }
    }
}

/// What [`rotate`] did.
#[derive(Debug, Default)]
pub struct Rotated {
    /// Rows re-encrypted under the current key.
    pub reencrypted: usize,
    /// Rows already under the current key (checked to decrypt).
    pub unchanged: usize,
    /// Rows that could not be decrypted, with why (never the secret).
    pub failed: Vec<String>,
}

/// Re-encrypt every stored provider key under the current master key, reading rows
/// sealed under the previous one. Rows that cannot be read are reported and left as they
/// are.
pub async fn rotate(store: &dyn Store, master: &MasterKeys) -> Result<Rotated, String> {
    let Some(kid) = master.kid() else {
        return Err(format!(
            "no master key: set {ENV_KEY} (the new key) and {ENV_KEY_PREVIOUS} (the old one)"
        ));
    };
    let rows = store.provider_keys().await.map_err(|e| e.to_string())?;
    let mut out = Rotated::default();
    for row in rows {
        let secret = match master.open(&row) {
            Ok(s) => s,
            Err(e) => {
                out.failed
                    .push(format!("{} ({}): {e}", row.id, row.provider));
                continue;
            }
        };
        if row.kid == kid {
            out.unchanged += 1;
            continue;
        }
        let (kid, blob) = master
            .seal(&row.provider, &row.id, secret.expose())
            .map_err(|e| e.to_string())?;
        let new = ProviderKeyRow {
            kid,
            secret: blob,
            updated_ms: crate::auth::virtual_keys::now_ms().max(row.updated_ms),
            ..row
        };
        store
            .put_provider_key(&new)
            .await
            .map_err(|e| e.to_string())?;
        out.reencrypted += 1;
    }
    Ok(out)
}

/// A fresh random master key, base64.
pub fn new_master_key() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(cur: &str, prev: Option<&str>) -> MasterKeys {
        MasterKeys::load_with(
            |k| match k {
                ENV_KEY => Some(cur.to_string()),
                ENV_KEY_PREVIOUS => prev.map(str::to_string),
                _ => None,
            },
            None,
        )
        .unwrap_or_default()
    }

    fn row(m: &MasterKeys, id: &str, secret: &str, weight: i64) -> ProviderKeyRow {
        let (kid, blob) = m.seal("openai", id, secret).unwrap_or_default();
        ProviderKeyRow {
            id: id.into(),
            provider: "openai".into(),
            label: None,
            weight,
            last4: last4(secret),
            kid,
            secret: blob,
            created_ms: 1,
            updated_ms: 1,
        }
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let a = keys(&new_master_key(), None);
        let r = row(&a, "pk_1", "sk-abcdefghijklmnop", 1);
        assert!(!r.secret.contains("sk-abc"));
        assert_eq!(
            a.open(&r).map(|s| s.expose().to_string()),
            Ok("sk-abcdefghijklmnop".into())
        );
        // Moved to another row: the associated data no longer matches.
        let moved = ProviderKeyRow {
            id: "pk_2".into(),
            ..r.clone()
        };
        assert_eq!(a.open(&moved).err(), Some(OpenError::Corrupt));
        // Another master key does not know the row's kid.
        let b = keys(&new_master_key(), None);
        assert!(matches!(b.open(&r), Err(OpenError::UnknownKey(_))));
        assert_eq!(
            MasterKeys::default().open(&r).err(),
            Some(OpenError::NoMasterKey)
        );
    }

    #[test]
    fn master_key_formats() {
        let hex64 = "00".repeat(32);
        assert!(MasterKey::parse(&hex64, "x").is_ok());
        assert!(MasterKey::parse(&new_master_key(), "x").is_ok());
        let e = MasterKey::parse("short", ENV_KEY).err().unwrap_or_default();
        assert!(e.contains(ENV_KEY) && e.contains("32"), "{e}");
        let e = MasterKeys::load_with(|k| (k == ENV_KEY_PREVIOUS).then(new_master_key), None);
        assert!(e.is_err());
    }

    #[tokio::test]
    async fn rotation_reencrypts_under_the_new_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|_| std::process::abort());
        let store = crate::store::sqlite::SqliteStore::open(
            &dir.path().join("v.db").display().to_string(),
            1000,
        )
        .await
        .unwrap_or_else(|_| std::process::abort());
        let (old, new) = (new_master_key(), new_master_key());
        let a = keys(&old, None);
        let r = row(&a, "pk_1", "sk-rotate-me-0000000000", 2);
        assert!(store.put_provider_key(&r).await.is_ok());
        // Without the previous key the row cannot be read: reported, left alone.
        let only_new = keys(&new, None);
        let rep = rotate(&store, &only_new).await.unwrap_or_default();
        assert_eq!((rep.reencrypted, rep.failed.len()), (0, 1));
        let both = keys(&new, Some(&old));
        let rep = rotate(&store, &both).await.unwrap_or_default();
        assert_eq!(
            (rep.reencrypted, rep.unchanged, rep.failed.len()),
            (1, 0, 0)
        );
        let rows = store.provider_keys().await.unwrap_or_default();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            only_new.open(&rows[0]).map(|s| s.expose().to_string()),
            Ok("sk-rotate-me-0000000000".into())
        );
        assert!(
            a.open(&rows[0]).is_err(),
            "the old key alone no longer reads it"
        );
        let rep = rotate(&store, &both).await.unwrap_or_default();
        assert_eq!((rep.reencrypted, rep.unchanged), (0, 1));
    }

    #[test]
    fn weighted_pick_and_cooldown() {
        let m = keys(&new_master_key(), None);
        let rows = vec![
            row(&m, "pk_a", "sk-aaaaaaaaaaaaaaaaaaaa", 3),
            row(&m, "pk_b", "sk-bbbbbbbbbbbbbbbbbbbb", 1),
        ];
        let pk = ProviderKeys::new(m, VaultConfig::default(), true);
        pk.replace(&rows);
        let mut a = 0;
        for _ in 0..4000 {
            if let Pick::Key(k) = pk.pick("openai", 0) {
                a += usize::from(k.id == "pk_a");
            }
        }
        assert!((2700..3300).contains(&a), "{a} of 4000 on the weight-3 key");
        assert!(matches!(pk.pick("anthropic", 0), Pick::None));
        let first = match pk.pick("openai", 0) {
            Pick::Key(k) => k,
            other => panic!("{other:?}"),
        };
        assert!(pk.reject(&first, 429, Some("7"), 0));
        assert_eq!(pk.cooldown(&first.id, 0).map(|c| c.until_ms), Some(7000));
        for _ in 0..50 {
            match pk.pick("openai", 1000) {
                Pick::Key(k) => assert_ne!(k.id, first.id),
                other => panic!("{other:?}"),
            }
        }
        let other = match pk.pick("openai", 1000) {
            Pick::Key(k) => k,
            other => panic!("{other:?}"),
        };
        assert!(pk.reject(&other, 401, None, 1000));
        assert!(matches!(pk.pick("openai", 2000), Pick::AllCooling));
        assert!(!pk.reject(&other, 500, None, 1000));
        // The 429 cooldown ends at its retry-after; the 401 one lasts 300 s.
        assert!(matches!(pk.pick("openai", 8000), Pick::Key(k) if k.id == first.id));
        // A retry-after beyond the bound is capped.
        assert!(pk.reject(&first, 429, Some("999999"), 0));
        assert_eq!(
            pk.cooldown(&first.id, 0).map(|c| c.until_ms),
            Some(3_600_000)
        );
    }

    #[test]
    fn unreadable_rows_are_an_error_not_a_fallback() {
        let m = keys(&new_master_key(), None);
        let rows = vec![row(&m, "pk_a", "sk-aaaaaaaaaaaaaaaaaaaa", 1)];
        let pk = ProviderKeys::new(keys(&new_master_key(), None), VaultConfig::default(), true);
        pk.replace(&rows);
        assert!(matches!(pk.pick("openai", 0), Pick::Unreadable(1)));
        assert!(!pk.readable("openai", "pk_a"));
    }

    #[test]
    fn bad_input_names_the_field() {
        let p = |v: Value| {
            parse_new_key(v.as_object().unwrap_or(&Map::new()))
                .err()
                .and_then(|e| e.param().map(str::to_string))
                .unwrap_or_else(|| "ok".into())
        };
        assert_eq!(p(json!({})), "key");
        assert_eq!(p(json!({"key": ""})), "key");
        assert_eq!(p(json!({"key": "sk a"})), "key");
        assert_eq!(p(json!({"key": "sk-x", "weight": -1})), "weight");
        assert_eq!(p(json!({"key": "sk-x", "weight": 0})), "weight");
        assert_eq!(p(json!({"key": "sk-x", "weight": 1.5})), "weight");
        assert_eq!(p(json!({"key": "sk-x", "nope": 1})), "nope");
        assert_eq!(p(json!({"key": "sk-x", "label": 3})), "label");
        assert_eq!(p(json!({"key": "sk-x", "weight": 5, "label": "a"})), "ok");
    }
}
