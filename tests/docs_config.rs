//! The configuration reference (`docs/configuration.md`) lists exactly the keys the code
//! accepts: every key a config type deserializes is documented, and every documented key
//! exists.
//!
//! The accepted keys come from the config types themselves, not from a hand-kept list:
//! `KeyTracer` is a serde `Deserializer` that answers each `deserialize_struct` call by
//! feeding back every field name serde's derive declares (the same list `deny_unknown_fields`
//! checks against), recursing into nested tables, maps (`<name>`) and arrays of tables (`[]`).
//! A field added to a config struct shows up here without touching this file.
//!
//! The documented keys are the backticked entries of the `key` column of every markdown
//! table in the reference, written as dotted paths (`server.listen`,
//! `routes.<name>.constraints.max_regression`, `auth.keys[].id`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Tables typed loosely in `GatewayConfig` (parsed later by their owner) and the type that
/// really reads them. Their traced `<table>.<*>` entry is replaced by the type's keys.
fn loose_tables() -> Vec<(&'static str, BTreeSet<String>)> {
    vec![(
        "storage",
        trace::<loopgate::store::StorageConfig>("storage"),
    )]
}

#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for TraceError {}
impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TraceError(msg.to_string())
    }
}

/// Placeholder for a key the user names (a map key); docs spell it `<name>`, `<model>`, ...
const ANY: &str = "<*>";

/// Deserializes any config type with dummy values, recording the dotted path of every key.
/// A key is recorded when its value is something you write (a scalar, an array, an enum);
/// a table records its own keys instead.
struct KeyTracer<'a> {
    path: String,
    keys: &'a RefCell<BTreeSet<String>>,
    /// False for elements of an array: `candidates = [...]` is one key, not `candidates[]`.
    record: bool,
}

impl<'a> KeyTracer<'a> {
    fn child(&self, segment: &str) -> KeyTracer<'a> {
        let path = if self.path.is_empty() {
            segment.to_string()
        } else {
            format!("{}.{segment}", self.path)
        };
        KeyTracer {
            path,
            keys: self.keys,
            record: true,
        }
    }
    fn element(&self) -> KeyTracer<'a> {
        KeyTracer {
            path: format!("{}[]", self.path),
            keys: self.keys,
            record: false,
        }
    }
    fn leaf(&self) {
        if self.record && !self.path.is_empty() {
            self.keys.borrow_mut().insert(self.path.clone());
        }
    }
}

macro_rules! scalar {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
            self.leaf();
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for KeyTracer<'_> {
    type Error = TraceError;

    scalar! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i8(0),
        deserialize_i16 => visit_i16(0),
        deserialize_i32 => visit_i32(0),
        deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u8(0),
        deserialize_u16 => visit_u16(0),
        deserialize_u32 => visit_u32(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f32(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str(""),
        deserialize_string => visit_str(""),
        deserialize_bytes => visit_bytes(b""),
        deserialize_byte_buf => visit_bytes(b""),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str(""),
        // A loosely typed value (`toml::Value`): a leaf as far as this type knows.
        deserialize_any => visit_str(""),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf();
        visitor.visit_seq(Elements {
            tracer: self.element(),
            left: 1,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.leaf();
        visitor.visit_seq(Elements {
            tracer: self.element(),
            left: len,
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_map(Fields {
            parent: self,
            names: vec![ANY],
            next: 0,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_map(Fields {
            parent: self,
            names: fields.to_vec(),
            next: 0,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.leaf();
        let first = variants
            .first()
            .ok_or_else(|| TraceError(format!("enum {name} has no variant")))?;
        // A unit variant: every enum in the config is a plain string choice.
        visitor.visit_enum(IntoDeserializer::<TraceError>::into_deserializer(*first))
    }
}

/// The keys of a struct (its declared fields) or of a map (one user-named key).
struct Fields<'a> {
    parent: KeyTracer<'a>,
    names: Vec<&'static str>,
    next: usize,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        let Some(name) = self.names.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(IntoDeserializer::<TraceError>::into_deserializer(*name))
            .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        let name = self.names[self.next];
        self.next += 1;
        seed.deserialize(self.parent.child(name))
    }
}

/// One element of an array (or each element of a fixed-size tuple).
struct Elements<'a> {
    tracer: KeyTracer<'a>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let tracer = KeyTracer {
            path: self.tracer.path.clone(),
            keys: self.tracer.keys,
            record: false,
        };
        seed.deserialize(tracer).map(Some)
    }
}

/// Every key `T` accepts, under `prefix`.
fn trace<T: for<'de> Deserialize<'de>>(prefix: &str) -> BTreeSet<String> {
    let keys = RefCell::new(BTreeSet::new());
    let tracer = KeyTracer {
        path: prefix.to_string(),
        keys: &keys,
        record: true,
    };
    if let Err(e) = T::deserialize(tracer) {
        panic!(
            "tracing the keys of {} failed: {e}",
            std::any::type_name::<T>()
        );
    }
    keys.into_inner()
}

/// Every key `GatewayConfig` accepts, with loosely typed tables expanded.
fn accepted_keys() -> BTreeSet<String> {
    let mut keys = trace::<loopgate::config::GatewayConfig>("");
    for (table, typed) in loose_tables() {
        let loose = format!("{table}.{ANY}");
        if keys.remove(&loose) || keys.remove(table) {
            keys.extend(typed);
        }
    }
    keys
}

/// `routes.<name>.baseline` and `routes.<*>.baseline` compare equal.
fn normalise(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut rest = key;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        match rest[start..].find('>') {
            Some(end) => {
                out.push_str(ANY);
                rest = &rest[start + end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn cells(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    t.split('|').map(|c| c.trim().to_string()).collect()
}

/// Backticked entries of the `key` column of every table, with the line they are on.
fn documented_keys(markdown: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut key_col: Option<usize> = None;
    let mut in_fence = false;
    for (i, line) in markdown.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !t.starts_with('|') {
            key_col = None;
            continue;
        }
        let row = cells(t);
        match key_col {
            None => {
                // A header row: is there a `key` column?
                key_col = row.iter().position(|c| c.eq_ignore_ascii_case("key"));
                if key_col.is_none() {
                    key_col = Some(usize::MAX); // a table without one: skip its rows
                }
            }
            Some(usize::MAX) => {}
            Some(col) => {
                let Some(cell) = row.get(col) else { continue };
                if cell.chars().all(|c| matches!(c, '-' | ':' | ' ')) {
                    continue; // the separator row
                }
                for (n, span) in cell.split('`').enumerate() {
                    if n % 2 == 1 && !span.is_empty() {
                        out.push((span.to_string(), i + 1));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_accepted_config_key_is_documented_and_every_documented_key_exists() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let documented = documented_keys(&doc);
    let accepted = accepted_keys();

    // The tracer must see the whole tree; a few keys from each level prove it did.
    for probe in [
        "server.listen",
        "auth.keys[].scopes",
        "fallbacks.<*>",
        "routes.<*>.targets[].weight",
        "routes.<*>.constraints.max_regression",
        "routing.posterior.signal_weights",
        "webhook.events",
        "storage.project_retention_days.<*>",
    ] {
        assert!(
            accepted.contains(probe),
            "the key tracer missed {probe}; it saw: {accepted:#?}"
        );
    }

    let documented_norm: BTreeSet<String> = documented.iter().map(|(k, _)| normalise(k)).collect();
    let undocumented: Vec<&String> = accepted
        .iter()
        .filter(|k| !documented_norm.contains(*k))
        .collect();
    let unknown: Vec<String> = documented
        .iter()
        .filter(|(k, _)| !accepted.contains(&normalise(k)))
        .map(|(k, line)| format!("{k} (docs/configuration.md:{line})"))
        .collect();
    let mut seen = BTreeSet::new();
    let duplicated: Vec<String> = documented
        .iter()
        .filter(|(k, _)| !seen.insert(normalise(k)))
        .map(|(k, line)| format!("{k} (docs/configuration.md:{line})"))
        .collect();

    let mut problems = String::new();
    if !undocumented.is_empty() {
        problems.push_str(&format!(
            "\nkeys the code accepts but docs/configuration.md does not document (add a row to a `key` table):\n  {}\n",
            undocumented.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
        ));
    }
    if !unknown.is_empty() {
        problems.push_str(&format!(
            "\nkeys docs/configuration.md documents but the code does not accept:\n  {}\n",
            unknown.join("\n  ")
        ));
    }
    if !duplicated.is_empty() {
        problems.push_str(&format!(
            "\nkeys documented twice:\n  {}\n",
            duplicated.join("\n  ")
        ));
    }
    assert!(
        problems.is_empty(),
        "configuration reference out of date (`<*>` = a name you choose, `[]` = an array entry):{problems}"
    );
}

#[test]
fn the_tracer_sees_nested_tables_maps_arrays_and_options() {
    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
        b: Option<String>,
    }
    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        One,
        Two,
    }
    #[allow(dead_code)]
    #[derive(Deserialize)]
    struct Outer {
        top: bool,
        inner: Inner,
        by_name: std::collections::BTreeMap<String, Inner>,
        list: Vec<Inner>,
        names: Vec<String>,
        kind: Kind,
        maybe: Option<Inner>,
        pair: [f64; 2],
        #[serde(skip)]
        hidden: u8,
    }
    let got = trace::<Outer>("x");
    let want: BTreeSet<String> = [
        "x.top",
        "x.inner.a",
        "x.inner.b",
        "x.by_name.<*>.a",
        "x.by_name.<*>.b",
        "x.list",
        "x.list[].a",
        "x.list[].b",
        "x.names",
        "x.kind",
        "x.maybe.a",
        "x.maybe.b",
        "x.pair",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
}

#[test]
fn documented_keys_come_from_key_columns_only() {
    let md = "\
| Variable | Overrides |
|---|---|
| `LOOPGATE_LISTEN` | `server.listen` |

| key | default | meaning |
|---|---|---|
| `server.listen` | `127.0.0.1:8080` | the API listener |
| `routes.<name>.mode` | `off` | `off`, `shadow` or `live` |

```
| key |
|---|
| `not.a.key` |
```
";
    let keys: Vec<String> = documented_keys(md).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["server.listen", "routes.<name>.mode"]);
    assert_eq!(normalise("routes.<name>.mode"), "routes.<*>.mode");
}
