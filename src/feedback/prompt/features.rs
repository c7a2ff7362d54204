//! In-process prompt features: feature-hashed word unigrams and bigrams plus a few structural
//! signals, in a fixed [`DIM`]-dimensional vector.
//!
//! Why hashing: no vocabulary to ship or grow (memory stays fixed whatever clients send), one
//! pass over the bytes, no allocation. Which words matter is *learned online*: the snapshot
//! carries inverse document frequencies measured over the route's own labelled prompts
//! ([`super::index`]), so a few-shot prefix or a system prompt every request shares weighs
//! nothing, and the words that tell prompts apart dominate the similarity.
//!
//! Cost is bounded: at most [`HEAD`] bytes from the start and [`TAIL`] bytes from the end of the
//! last user message (the question usually sits at the end, after any examples) and [`HEAD`]
//! bytes of the system prompt are hashed; lengths and turn counts are always exact.

use serde_json::Value;

/// Dimensions of a feature vector.
pub const DIM: usize = 128;
/// Dimensions reserved for structural features (the last ones).
pub const STRUCT: usize = 8;
/// Dimensions hashed words land in.
pub const HASHED: usize = DIM - STRUCT;
/// Bytes hashed from the start of the last user message and of the system prompt.
pub const HEAD: usize = 256;
/// Bytes hashed from the end of the last user message.
pub const TAIL: usize = 1536;

/// Raw (un-weighted) features of one prompt: signed term counts per hashed dimension and the
/// structural signals in [0, 1]. `Copy`, on the stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawFeatures {
    pub v: [f32; DIM],
}

impl Default for RawFeatures {
    fn default() -> Self {
        RawFeatures { v: [0.0; DIM] }
    }
}

/// Names of the structural dimensions (trace and docs).
pub const STRUCT_NAMES: [&str; STRUCT] = [
    "length",
    "digits",
    "code_syntax",
    "options",
    "lines",
    "turns",
    "non_ascii",
    "question",
];

/// Features of an OpenAI `messages` array (string or text-part contents; other shapes skipped).
pub fn raw_features(messages: &[Value]) -> RawFeatures {
    let mut last_user: Option<&Value> = None;
    let mut system: Option<&Value> = None;
    let mut turns = 0u32;
    let mut chars = 0usize;
    for m in messages {
        match m.get("role").and_then(Value::as_str) {
            Some("user") => {
                turns += 1;
                last_user = m.get("content");
            }
            Some("assistant") => turns += 1,
            Some("system" | "developer") if system.is_none() => system = m.get("content"),
            _ => {}
        }
    }
    let mut h = Hasher::default();
    if let Some(c) = system {
        for_text(c, &mut |t| {
            chars += t.len();
            h.scan(clip(t, 0, HEAD.min(t.len())), 0.5);
        });
    }
    if let Some(c) = last_user {
        for_text(c, &mut |t| {
            chars += t.len();
            h.text(t);
        });
    }
    h.finish(chars, turns)
}

/// Features of one plain user prompt.
pub fn text_features(text: &str) -> RawFeatures {
    let mut h = Hasher::default();
    h.text(text);
    h.finish(text.len(), 1)
}

fn for_text(c: &Value, f: &mut impl FnMut(&str)) {
    match c {
        Value::String(t) => f(t),
        Value::Array(parts) => {
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    f(t);
                }
            }
        }
        _ => {}
    }
}

/// `t[a..b]` moved inward to char boundaries.
fn clip(t: &str, mut a: usize, mut b: usize) -> &str {
    while a < t.len() && !t.is_char_boundary(a) {
        a += 1;
    }
    while b > a && !t.is_char_boundary(b) {
        b -= 1;
    }
    t.get(a..b).unwrap_or("")
}

struct Hasher {
    v: [f32; DIM],
    digits: u32,
    code: u32,
    options: u32,
    lines: u32,
    non_ascii: u32,
    questions: u32,
    scanned: u32,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            v: [0.0; DIM],
            digits: 0,
            code: 0,
            options: 0,
            lines: 0,
            non_ascii: 0,
            questions: 0,
            scanned: 0,
        }
    }
}

/// Lower-cased ASCII letters and digits; 0 for every other byte.
static ALNUM: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() {
            t[c] = b.to_ascii_lowercase();
        }
        c += 1;
    }
    t
};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn mix(h: u64) -> u64 {
    let h = (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^ (h >> 32)
}

impl Hasher {
    fn text(&mut self, t: &str) {
        if t.len() <= HEAD + TAIL {
            self.scan(t, 1.0);
        } else {
            self.scan(clip(t, 0, HEAD), 1.0);
            self.scan(clip(t, t.len() - TAIL, t.len()), 1.0);
        }
    }

    #[inline]
    fn add(&mut self, h: u64, w: f32) {
        let m = mix(h);
        // Multiply-shift range reduction (no division).
        let d = (((m >> 32) * HASHED as u64) >> 32) as usize;
        self.v[d] += if m & 1 == 0 { w } else { -w };
    }

    /// One pass: lower-cased ASCII alphanumeric words (a non-ASCII char is a word of its own),
    /// each word and each adjacent pair hashed into the vector with weight `w`.
    fn scan(&mut self, t: &str, w: f32) {
        let b = t.as_bytes();
        self.scanned += b.len() as u32;
        let mut word = 0u64;
        let mut len = 0u32;
        let mut prev = 0u64;
        let mut line_start = true;
        let flush = |s: &mut Hasher, word: &mut u64, len: &mut u32, prev: &mut u64| {
            if *len > 0 {
                let h = word.wrapping_mul(K) ^ u64::from(*len);
                s.add(h, w);
                if *prev != 0 {
                    s.add(prev.rotate_left(17) ^ h.wrapping_mul(3), w * 0.5);
                }
                *prev = h;
                *word = 0;
                *len = 0;
            }
        };
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            let l = ALNUM[c as usize];
            if l != 0 {
                // An option label at a line start: `A)` / `A.` / `(A)`.
                if line_start {
                    if c.is_ascii_uppercase() && matches!(b.get(i + 1), Some(b')' | b'.')) {
                        self.options += 1;
                    }
                    line_start = false;
                }
                self.digits += u32::from(l <= b'9');
                word = word.rotate_left(7) ^ u64::from(l);
                len += 1;
                i += 1;
                continue;
            }
            flush(self, &mut word, &mut len, &mut prev);
            if c >= 0x80 {
                // Each non-ASCII character is a token (CJK has no spaces).
                let start = i;
                i += 1;
                while i < b.len() && b[i] & 0xC0 == 0x80 {
                    i += 1;
                }
                self.non_ascii += 1;
                let mut h = 0xCBF2_9CE4_8422_2325u64;
                for &x in &b[start..i] {
                    h = (h ^ u64::from(x)).wrapping_mul(0x100_0000_01B3);
                }
                self.add(h, w);
                prev = 0;
                line_start = false;
                continue;
            }
            match c {
                b'\n' => {
                    self.lines += 1;
                    line_start = true;
                    prev = 0;
                }
                b'{' | b'}' | b';' | b'=' | b'`' | b'<' | b'>' | b'[' | b']' => {
                    self.code += 1;
                    line_start = false;
                }
                b'?' => {
                    self.questions += 1;
                    line_start = false;
                }
                b' ' | b'\t' | b'\r' => {}
                b'(' if line_start => {}
                _ => line_start = false,
            }
            i += 1;
        }
        flush(self, &mut word, &mut len, &mut prev);
    }

    fn finish(mut self, chars: usize, turns: u32) -> RawFeatures {
        let n = self.scanned.max(1) as f32;
        let s = [
            ((chars as f32 + 1.0).ln() / 12.0).min(1.0),
            (self.digits as f32 / n * 8.0).min(1.0),
            (self.code as f32 / n * 20.0).min(1.0),
            (self.options as f32 / 4.0).min(1.0),
            (self.lines as f32 / 40.0).min(1.0),
            (turns.saturating_sub(1) as f32 / 6.0).min(1.0),
            (self.non_ascii as f32 / n * 2.0).min(1.0),
            (self.questions as f32 / 3.0).min(1.0),
        ];
        self.v[HASHED..].copy_from_slice(&s);
        RawFeatures { v: self.v }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cos(a: &RawFeatures, b: &RawFeatures) -> f32 {
        let dot: f32 = a.v[..HASHED]
            .iter()
            .zip(&b.v[..HASHED])
            .map(|(x, y)| x * y)
            .sum();
        let na: f32 = a.v[..HASHED].iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.v[..HASHED].iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    }

    #[test]
    fn similar_prompts_are_closer_than_unrelated_ones() {
        let a = text_features("Write a python function that reverses a linked list.");
        let b = text_features("Write a python function that sorts a linked list in place.");
        let c = text_features("Which planet is closest to the sun?\nA) Venus\nB) Mercury\nC) Mars");
        assert!(cos(&a, &b) > 0.5, "{}", cos(&a, &b));
        assert!(cos(&a, &c) < 0.3, "{}", cos(&a, &c));
        assert!(
            c.v[HASHED + 3] > 0.5,
            "options counted: {:?}",
            &c.v[HASHED..]
        );
        assert_eq!(
            a,
            text_features("Write a python function that reverses a linked list.")
        );
    }

    #[test]
    fn messages_use_the_last_user_turn_and_bounded_scan() {
        let m = [
            json!({"role": "system", "content": "You are terse."}),
            json!({"role": "user", "content": "hello"}),
            json!({"role": "assistant", "content": "hi"}),
            json!({"role": "user", "content": [{"type": "text", "text": "Solve 2+2"}]}),
        ];
        let f = raw_features(&m);
        assert!(f.v[HASHED + 5] > 0.0, "turns");
        // Huge prompts are cut to head + tail, and never split a UTF-8 character.
        let huge = format!("{}é{}", "word ".repeat(10_000), "é".repeat(2_000));
        let f = text_features(&huge);
        assert!(f.v.iter().all(|x| x.is_finite()));
        // Garbage shapes are skipped.
        let f = raw_features(&[json!(1), json!({"role": "user", "content": {"x": 1}})]);
        assert!(f.v[..HASHED].iter().all(|x| *x == 0.0));
    }
}
