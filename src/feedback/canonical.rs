//! RFC 8785 (JCS) canonical JSON, the form the decision signature covers.
//!
//! Why not only the `serde_json_canonicalizer` crate: it buffers every key and value in its own
//! `Vec`, re-parses each key and boxes a writer per write, which made canonicalising one decision
//! trace (11 candidates) ~130 µs — nine tenths of signing it, on every routed request. This
//! writer walks a `serde_json::Value` once (keys sorted in place by UTF-16 code units, numbers
//! through `ryu-js`, the ECMAScript number form the crate uses too). The crate stays the
//! reference: `tests::matches_the_reference_crate` compares both on generated values (and
//! `decision::tests` on real traces), so any difference is a test failure, not a silent
//! signature change. A non-finite float inside a serialised struct becomes `null`, as
//! serde_json writes it in the stored JSON text, so the text and its signature agree.

use std::cmp::Ordering;

use serde::Serialize;
use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("not serialisable as JSON: {0}")]
    Serialise(#[from] serde_json::Error),
    #[error("NaN and ±Infinity have no JSON form")]
    NonFinite,
}

/// The canonical bytes of any serialisable value.
pub fn to_vec(v: &impl Serialize) -> Result<Vec<u8>, CanonicalError> {
    let value = serde_json::to_value(v)?;
    value_to_vec(&value)
}

/// The canonical bytes of a JSON value.
pub fn value_to_vec(v: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(4096);
    write(v, &mut out)?;
    Ok(out)
}

fn write(v: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // JSON numbers are IEEE doubles in JCS: integers too are formatted as one.
            let f = n.as_f64().ok_or(CanonicalError::NonFinite)?;
            if !f.is_finite() {
                return Err(CanonicalError::NonFinite);
            }
            let mut buf = ryu_js::Buffer::new();
            out.extend_from_slice(buf.format_finite(f).as_bytes());
        }
        // serde_json escapes exactly what JCS does (`"`, `\`, the C0 controls, with the short
        // forms \b \t \n \f \r and lowercase \u00xx) and nothing else.
        Value::String(s) => serde_json::to_writer(&mut *out, s)?,
        Value::Array(items) => {
            out.push(b'[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(x, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| utf16_order(a.0, b.0));
            out.push(b'{');
            for (i, (k, x)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                write(x, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// JCS sorts member names by their UTF-16 code units (not by code points: the two differ for
/// characters above U+FFFF against U+E000–U+FFFF). ASCII names compare as bytes.
fn utf16_order(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn reference(v: &Value) -> Vec<u8> {
        serde_json_canonicalizer::to_vec(v).unwrap()
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            prop_oneof![
                Just(1e21),
                Just(1e-7),
                Just(-0.0),
                Just(0.1 + 0.2),
                Just(5e-324),
                Just(9007199254740993.0)
            ]
            .prop_map(|f| json!(f)),
            "\\PC{0,12}".prop_map(Value::String),
            "[\u{0}-\u{1f}\"\\\\/\u{7f}\u{2028}\u{e000}\u{1f600}a-z]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            "[a-z_]{0,6}",
                            "[\u{e000}\u{ffff}\u{1f600}\u{10000}é\"\\\\\u{1}a-c]{1,4}"
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn matches_the_reference_crate(v in arb_json()) {
            prop_assert_eq!(value_to_vec(&v).unwrap(), reference(&v));
        }
    }

    #[test]
    fn rfc8785_examples_and_edge_cases() {
        // RFC 8785 §3.2.2.3 number samples and §3.2.3 sorting (UTF-16 order: U+1F600 sorts
        // before U+E000 although its code point is larger).
        let v: Value = serde_json::from_str(
            "{\"numbers\": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
              \"\u{e000}\": 1, \"\u{1f600}\": 2, \"a\": \"\\u0001\\n\\\"\\\\/\u{7f}\"}",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(value_to_vec(&v).unwrap()).unwrap(),
            "{\"a\":\"\\u0001\\n\\\"\\\\/\u{7f}\",\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
        assert_eq!(value_to_vec(&v).unwrap(), reference(&v));
        assert!(matches!(
            to_vec(&f64::NAN).map(|v| String::from_utf8(v).unwrap()),
            Ok(ref s) if s == "null"
        ));
    }
}
