//! Gateway keys: stored as SHA-256 hashes, looked up by the hash of the presented key.
//!
//! Gateway keys are long random tokens, so a plain SHA-256 is the right tool (a slow
//! password hash would only add latency); the table is keyed by digest, so lookup time
//! reveals nothing useful about stored keys.

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::auth::{Caller, Scope};
use crate::config::KeyConfig;

/// A key as the request path needs it.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub id: String,
    pub scopes: Vec<Scope>,
    pub project: Option<String>,
    pub route: Option<String>,
    pub zero_retention: bool,
}

impl KeyEntry {
    pub fn caller(&self) -> Caller {
        Caller {
            key_id: Some(self.id.clone()),
            scopes: self.scopes.clone(),
            project: self.project.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<[u8; 32], Arc<KeyEntry>>,
}

/// `sha256:<hex>` -> digest.
/// The stored form `sha256:<hex>` as bytes (defined with the configuration that holds it).
pub use crate::config::parse_key_hash as parse_hash;

pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The stored form of a key.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(digest(key)))
}

/// A new random gateway key: `lg-` and 43 base64url characters (256 bits).
pub fn generate_key() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!(
        "lg-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

impl KeyTable {
    pub fn build(keys: &[KeyConfig], master_key: Option<&str>) -> KeyTable {
        let mut by_hash = HashMap::new();
        for k in keys {
            if let Some(h) = parse_hash(&k.hash) {
                by_hash.insert(
                    h,
                    Arc::new(KeyEntry {
                        id: k.id.clone(),
                        scopes: k.scopes.clone(),
                        project: k.project.clone(),
                        route: k.route.clone(),
                        zero_retention: k.zero_retention,
                    }),
                );
            }
        }
        if let Some(m) = master_key.filter(|m| !m.is_empty()) {
            by_hash.insert(
                digest(m),
                Arc::new(KeyEntry {
                    id: "master".into(),
                    scopes: vec![Scope::Inference, Scope::Read, Scope::Admin],
                    project: None,
                    route: None,
                    zero_retention: false,
                }),
            );
        }
        KeyTable { by_hash }
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn lookup(&self, presented: &str) -> Option<&Arc<KeyEntry>> {
        self.by_hash.get(&digest(presented))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_roundtrip_and_lookup() {
        let k = generate_key();
        assert!(k.starts_with("lg-") && k.len() > 40);
        let cfg = KeyConfig {
            id: "a".into(),
            hash: hash_key(&k),
            scopes: vec![Scope::Inference],
            project: Some("p".into()),
            route: None,
            zero_retention: false,
            firewall: None,
        };
        let t = KeyTable::build(&[cfg], Some("master-secret"));
        assert_eq!(t.lookup(&k).map(|e| e.id.as_str()), Some("a"));
        assert_eq!(t.lookup("master-secret").map(|e| e.scopes.len()), Some(3));
        assert!(t.lookup("nope").is_none());
        assert!(parse_hash("sha256:zz").is_none());
    }
}
