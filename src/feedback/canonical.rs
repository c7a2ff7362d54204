//! RFC 8785 (JCS) canonical JSON, the form the decision signature covers.
//!
//! Why not only the `serde_json_canonicalizer` crate: it buffers every key and value in its own
//! `Vec`, re-parses each key and boxes a writer per write, which made canonicalising one decision
//! trace (11 candidates) ~130 µs — nine tenths of signing it, on every routed request. Building a
//! `serde_json::Value` first and walking it was still a third of the cost (a `String` per key and
//! string value, a map per object). So this is a `serde::Serializer` that writes the canonical
//! form directly: each object's members are written in the order they come, their spans
//! remembered, and only an object whose keys did not come sorted is re-emitted in UTF-16 order
//! from a scratch copy (nested objects are ordered before their parent, in place, so the
//! parent's spans stay valid). Numbers go through `ryu-js`, the ECMAScript number form the crate
//! uses too. The crate stays the reference: `tests::matches_the_reference_crate` compares both on
//! generated values (and `decision::tests` on real traces), so any difference is a test failure,
//! not a silent signature change. A non-finite float becomes `null`, as serde_json writes it in
//! the stored JSON text, so the text and its signature agree.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Display;

use serde::ser::{self, Serialize};
use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("not serialisable as JSON: {0}")]
    Serialise(#[from] serde_json::Error),
    #[error("NaN and ±Infinity have no JSON form")]
    NonFinite,
    #[error("a map key must be a string, an integer or a bool")]
    KeyNotString,
    #[error("{0}")]
    Custom(String),
}

impl ser::Error for CanonicalError {
    fn custom<T: Display>(msg: T) -> Self {
        CanonicalError::Custom(msg.to_string())
    }
}

/// The canonical bytes of any serialisable value, written in one pass.
pub fn to_vec(v: &(impl Serialize + ?Sized)) -> Result<Vec<u8>, CanonicalError> {
    let mut w = Writer {
        out: Vec::with_capacity(8192),
        scratch: Vec::new(),
        spans: Vec::new(),
    };
    v.serialize(&mut w)?;
    Ok(w.out)
}

/// The canonical bytes of a JSON value.
pub fn value_to_vec(v: &Value) -> Result<Vec<u8>, CanonicalError> {
    to_vec(v)
}

/// One object member as written: its key and the byte span of `"key":value` in the output.
struct Member {
    key: Cow<'static, str>,
    start: usize,
    end: usize,
}

struct Writer {
    out: Vec<u8>,
    /// Copy of an unsorted object's members while they are re-emitted.
    scratch: Vec<u8>,
    /// Spare member lists, reused across objects (an object per candidate, signal, row).
    spans: Vec<Vec<Member>>,
}

impl Writer {
    fn number(&mut self, f: f64) {
        if f.is_finite() {
            let mut buf = ryu_js::Buffer::new();
            self.out.extend_from_slice(buf.format_finite(f).as_bytes());
        } else {
            // As `serde_json::to_value` / `to_string` render it: the stored text says null.
            self.out.extend_from_slice(b"null");
        }
    }

    // serde_json escapes exactly what JCS does (`"`, `\`, the C0 controls, with the short
    // forms \b \t \n \f \r and lowercase \u00xx) and nothing else. Most strings (every
    // field name, model and route names) need no escape: those are copied as they are.
    fn string(&mut self, s: &str) -> Result<(), CanonicalError> {
        if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            serde_json::to_writer(&mut self.out, s)?;
        } else {
            self.out.reserve(s.len() + 2);
            self.out.push(b'"');
            self.out.extend_from_slice(s.as_bytes());
            self.out.push(b'"');
        }
        Ok(())
    }

    fn object(&mut self) -> Object<'_> {
        self.out.push(b'{');
        let open = self.out.len();
        let members = self.spans.pop().unwrap_or_default();
        Object {
            w: self,
            open,
            members,
            sorted: true,
            pending: None,
            outer: false,
            raw: false,
            dynamic: false,
        }
    }
}

/// JCS sorts member names by their UTF-16 code units. UTF-8 bytes sort like code points, and
/// code points like UTF-16 units except for characters above U+FFFF against U+E000–U+FFFF, so
/// the bytes decide unless the first difference is outside ASCII.
fn utf16_order(a: &str, b: &str) -> Ordering {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    match x.iter().zip(y).position(|(p, q)| p != q) {
        None => x.len().cmp(&y.len()),
        Some(i) if x[i] < 0x80 && y[i] < 0x80 => x[i].cmp(&y[i]),
        Some(_) => a.encode_utf16().cmp(b.encode_utf16()),
    }
}

/// An open object: members are appended as they come and ordered at `finish`.
struct Object<'a> {
    w: &'a mut Writer,
    /// Offset of the first byte after `{`.
    open: usize,
    members: Vec<Member>,
    sorted: bool,
    /// A map key written, its value not yet: (key, start of the member).
    pending: Option<(Cow<'static, str>, usize)>,
    /// A struct variant: close the `{"variant":` wrapper too.
    outer: bool,
    /// serde_json's `RawValue` (a struct with one field of JSON text): no braces of its own.
    raw: bool,
    /// Some key came from a map (may repeat), not a struct's field list.
    dynamic: bool,
}

impl Object<'_> {
    fn key(&mut self, key: &str) -> Result<usize, CanonicalError> {
        if !self.members.is_empty() {
            self.w.out.push(b',');
        }
        let start = self.w.out.len();
        self.w.string(key)?;
        self.w.out.push(b':');
        if let Some(last) = self.members.last() {
            if utf16_order(&last.key, key) != Ordering::Less {
                self.sorted = false;
            }
        }
        Ok(start)
    }

    fn close_member(&mut self, key: Cow<'static, str>, start: usize) {
        let end = self.w.out.len();
        self.members.push(Member { key, start, end });
    }

    fn field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        if self.raw {
            let Value::String(text) = serde_json::to_value(value)? else {
                return Err(CanonicalError::Custom("a RawValue holds JSON text".into()));
            };
            let parsed: Value = serde_json::from_str(&text)?;
            return parsed.serialize(&mut *self.w);
        }
        let start = self.key(key)?;
        value.serialize(&mut *self.w)?;
        self.close_member(Cow::Borrowed(key), start);
        Ok(())
    }

    fn finish(mut self) -> Result<(), CanonicalError> {
        if self.raw {
            self.w.spans.push(std::mem::take(&mut self.members));
            return Ok(());
        }
        if !self.sorted {
            let w = &mut *self.w;
            if self.dynamic {
                // Two members with one name (a map, a flattened struct): the JSON value would
                // keep the last; so do we.
                self.members.sort_by(|a, b| utf16_order(&a.key, &b.key));
                self.members.dedup_by(|later, earlier| {
                    if later.key == earlier.key {
                        std::mem::swap(later, earlier);
                        true
                    } else {
                        false
                    }
                });
            } else {
                // A struct's field names are distinct.
                self.members
                    .sort_unstable_by(|a, b| utf16_order(&a.key, &b.key));
            }
            w.scratch.clear();
            w.scratch.extend_from_slice(&w.out[self.open..]);
            w.out.truncate(self.open);
            for (i, m) in self.members.iter().enumerate() {
                if i > 0 {
                    w.out.push(b',');
                }
                w.out
                    .extend_from_slice(&w.scratch[m.start - self.open..m.end - self.open]);
            }
        }
        self.w.out.push(b'}');
        if self.outer {
            self.w.out.push(b'}');
        }
        self.members.clear();
        let members = std::mem::take(&mut self.members);
        self.w.spans.push(members);
        Ok(())
    }
}

/// The struct (and field) name serde_json gives a `RawValue` (feature `raw_value`).
const RAW_VALUE: &str = "$serde_json::private::RawValue";

/// Integer methods of the serializer: each writes its value as the double JCS makes of it.
macro_rules! as_double {
    ($($method:ident: $t:ty),* $(,)?) => {
        $(
            #[allow(clippy::cast_precision_loss)] // JCS: every JSON number is an IEEE double
            fn $method(self, v: $t) -> Result<(), CanonicalError> {
                self.serialize_f64(v as f64)
            }
        )*
    };
}

/// Integer and bool map keys, written as text (as serde_json does).
macro_rules! key_as_text {
    ($($method:ident: $t:ty),* $(,)?) => {
        $(
            fn $method(self, v: $t) -> Result<String, CanonicalError> {
                Ok(v.to_string())
            }
        )*
    };
}

impl<'a> ser::Serializer for &'a mut Writer {
    type Ok = ();
    type Error = CanonicalError;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), CanonicalError> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    // JSON numbers are IEEE doubles in JCS: integers too are formatted as one.
    as_double! {
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
    }
    // serde_json takes 128-bit integers only within the 64-bit range.
    fn serialize_i128(self, v: i128) -> Result<(), CanonicalError> {
        match (i64::try_from(v), u64::try_from(v)) {
            (Ok(i), _) => self.serialize_i64(i),
            (_, Ok(u)) => self.serialize_u64(u),
            _ => Err(CanonicalError::Custom("number out of range".into())),
        }
    }
    fn serialize_u128(self, v: u128) -> Result<(), CanonicalError> {
        match u64::try_from(v) {
            Ok(u) => self.serialize_u64(u),
            Err(_) => Err(CanonicalError::Custom("number out of range".into())),
        }
    }
    fn serialize_f32(self, v: f32) -> Result<(), CanonicalError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), CanonicalError> {
        self.number(v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), CanonicalError> {
        self.string(v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), CanonicalError> {
        self.string(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), CanonicalError> {
        use ser::SerializeSeq;
        let mut a = self.serialize_seq(Some(v.len()))?;
        for b in v {
            a.serialize_element(b)?;
        }
        a.end()
    }
    fn serialize_none(self) -> Result<(), CanonicalError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CanonicalError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), CanonicalError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), CanonicalError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), CanonicalError> {
        self.string(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        let mut o = self.object();
        o.field(variant, value)?;
        o.finish()
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'a>, CanonicalError> {
        self.out.push(b'[');
        Ok(Array {
            w: self,
            first: true,
            close: b"]",
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Array<'a>, CanonicalError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Array<'a>, CanonicalError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Array<'a>, CanonicalError> {
        // `{"variant":[...]}`: one member, so nothing to sort.
        self.out.push(b'{');
        self.string(variant)?;
        self.out.extend_from_slice(b":[");
        Ok(Array {
            w: self,
            first: true,
            close: b"]}",
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, CanonicalError> {
        Ok(self.object())
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, CanonicalError> {
        if name == RAW_VALUE {
            // A `RawValue`: one field holding JSON text, written as the value it parses to.
            let members = self.spans.pop().unwrap_or_default();
            let open = self.out.len();
            return Ok(Object {
                w: self,
                open,
                members,
                sorted: true,
                pending: None,
                outer: false,
                raw: true,
                dynamic: false,
            });
        }
        Ok(self.object())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, CanonicalError> {
        // `{"variant":{...}}`: the outer object has one member; the inner one is sorted.
        self.out.push(b'{');
        self.string(variant)?;
        self.out.push(b':');
        let mut o = self.object();
        o.outer = true;
        Ok(o)
    }
}

/// An open array (or the `[...]` of a tuple variant, closed with `]}`).
struct Array<'a> {
    w: &'a mut Writer,
    first: bool,
    close: &'static [u8],
}

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        if !self.first {
            self.w.out.push(b',');
        }
        self.first = false;
        value.serialize(&mut *self.w)
    }
    fn close(self) -> Result<(), CanonicalError> {
        self.w.out.extend_from_slice(self.close);
        Ok(())
    }
}

// serde asks for one trait per compound shape; arrays and structs each write the same way.
macro_rules! array_shape {
    ($shape:ident, $add:ident) => {
        impl ser::$shape for Array<'_> {
            type Ok = ();
            type Error = CanonicalError;
            fn $add<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CanonicalError> {
                self.element(v)
            }
            fn end(self) -> Result<(), CanonicalError> {
                self.close()
            }
        }
    };
}
array_shape!(SerializeSeq, serialize_element);
array_shape!(SerializeTuple, serialize_element);
array_shape!(SerializeTupleStruct, serialize_field);
array_shape!(SerializeTupleVariant, serialize_field);

macro_rules! struct_shape {
    ($shape:ident) => {
        impl ser::$shape for Object<'_> {
            type Ok = ();
            type Error = CanonicalError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                v: &T,
            ) -> Result<(), CanonicalError> {
                self.field(key, v)
            }
            fn end(self) -> Result<(), CanonicalError> {
                self.finish()
            }
        }
    };
}
struct_shape!(SerializeStruct);
struct_shape!(SerializeStructVariant);

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), CanonicalError> {
        let key: String = key.serialize(MapKey)?;
        self.dynamic = true;
        let start = self.key(&key)?;
        self.pending = Some((Cow::Owned(key), start));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CanonicalError> {
        let (key, start) = self
            .pending
            .take()
            .ok_or_else(|| CanonicalError::Custom("map value without a key".into()))?;
        v.serialize(&mut *self.w)?;
        self.close_member(key, start);
        Ok(())
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish()
    }
}

/// A map key as serde_json accepts it: a string, or an integer or bool written as text.
struct MapKey;

impl ser::Serializer for MapKey {
    type Ok = String;
    type Error = CanonicalError;
    type SerializeSeq = ser::Impossible<String, CanonicalError>;
    type SerializeTuple = ser::Impossible<String, CanonicalError>;
    type SerializeTupleStruct = ser::Impossible<String, CanonicalError>;
    type SerializeTupleVariant = ser::Impossible<String, CanonicalError>;
    type SerializeMap = ser::Impossible<String, CanonicalError>;
    type SerializeStruct = ser::Impossible<String, CanonicalError>;
    type SerializeStructVariant = ser::Impossible<String, CanonicalError>;

    key_as_text! {
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128,
    }
    fn serialize_f32(self, _v: f32) -> Result<String, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_f64(self, _v: f64) -> Result<String, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_char(self, v: char) -> Result<String, CanonicalError> {
        Ok(v.to_string())
    }
    fn serialize_str(self, v: &str) -> Result<String, CanonicalError> {
        Ok(v.to_string())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<String, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_none(self) -> Result<String, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _v: &T) -> Result<String, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_unit(self) -> Result<String, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, CanonicalError> {
        Ok(variant.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        v: &T,
    ) -> Result<String, CanonicalError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _v: &T,
    ) -> Result<String, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, CanonicalError> {
        Err(CanonicalError::KeyNotString)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, CanonicalError> {
        Err(CanonicalError::KeyNotString)
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

    /// Every shape serde can hand a serializer, with fields deliberately out of order.
    #[derive(serde::Serialize)]
    struct Shapes {
        zeta: u64,
        alpha: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        nested: Vec<Inner>,
        variants: Vec<Variant>,
        tuple: (i8, char, bool),
        map: std::collections::BTreeMap<u32, String>,
        raw: Box<serde_json::value::RawValue>,
        #[serde(flatten)]
        flat: Flat,
        value: Value,
        unit: (),
        bytes: serde_bytes_like::Bytes,
    }
    #[derive(serde::Serialize)]
    struct Inner {
        y: f32,
        x: i64,
        #[serde(rename = "\u{e000}")]
        private_use: u8,
        #[serde(rename = "\u{1f600}")]
        emoji: u8,
    }
    #[derive(serde::Serialize)]
    struct Flat {
        m: &'static str,
        b: u128,
    }
    #[derive(serde::Serialize)]
    enum Variant {
        Unit,
        Newtype(f64),
        Tuple(u8, String),
        Struct { z: u8, a: Option<u8> },
    }
    mod serde_bytes_like {
        pub struct Bytes(pub Vec<u8>);
        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }

    #[test]
    fn structs_write_as_their_json_value_would() {
        let v = Shapes {
            zeta: u64::MAX,
            alpha: Some(f64::NAN),
            skipped: None,
            nested: vec![
                Inner {
                    y: 0.1,
                    x: -3,
                    private_use: 1,
                    emoji: 2,
                },
                Inner {
                    y: 1e30,
                    x: i64::MIN,
                    private_use: 3,
                    emoji: 4,
                },
            ],
            variants: vec![
                Variant::Unit,
                Variant::Newtype(5e-324),
                Variant::Tuple(7, "t\n\"".into()),
                Variant::Struct { z: 1, a: None },
            ],
            tuple: (-8, '\u{1}', true),
            map: [(10, "ten".to_string()), (9, "nine".to_string())].into(),
            raw: serde_json::value::RawValue::from_string(
                "{\"q\": [1.50, {\"b\":1,\"a\":2}]}".into(),
            )
            .unwrap(),
            flat: Flat {
                m: "flat",
                b: 1 << 60,
            },
            value: json!({"k": [1, 2.5, null], "c": {"y": "z", "x": -0.0}}),
            unit: (),
            bytes: serde_bytes_like::Bytes(vec![0, 255]),
        };
        let direct = to_vec(&v).unwrap();
        assert_eq!(direct, reference(&serde_json::to_value(&v).unwrap()));
        // Spans reorder correctly after a nested object was itself reordered.
        assert!(String::from_utf8(direct)
            .unwrap()
            .starts_with("{\"alpha\":null,\"b\":"));
    }

    #[test]
    fn a_map_key_must_be_text() {
        let mut m = std::collections::HashMap::new();
        m.insert(vec![1u8], 1);
        assert!(matches!(to_vec(&m), Err(CanonicalError::KeyNotString)));
        assert!(to_vec(&(1u128 << 70)).is_err() && serde_json::to_value(1u128 << 70).is_err());
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
