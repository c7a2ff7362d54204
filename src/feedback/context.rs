//! Cheap prompt-context features for contextual routing.
//!
//! Per-route posteriors average over every kind of prompt a route sees; a cheap model that is as
//! good as the baseline on short chat but much worse on maths never gets promoted, because the
//! route-level gap is too large. [`features`] reads the OpenAI `messages` array once and derives a
//! few signals (length, task type, code, maths, script, multi-turn); [`Features::key`] maps them
//! to one of a fixed, small set of [`ContextKey`] buckets (11), so per-(route, bucket) posteriors
//! collect enough evidence to be useful.
//!
//! Design constraints:
//! - **Fast and allocation-free**: one pass over the bytes of the user/system text, words matched
//!   against fixed keyword lists from a stack buffer. At most [`SCAN_LIMIT`] bytes per message are
//!   inspected for keywords and syntax (lengths are always counted fully), so cost is bounded
//!   even for huge prompts. Typical prompts take ~1 µs in a release build.
//! - **Pure and deterministic**: the same messages always give the same key, so a decision and
//!   its feedback land in the same bucket, on every instance.
//! - **Heuristic, not tuned**: thresholds are round numbers fixed a priori (≈100 and ≈500
//!   tokens; "at least three of A–D options"), not fitted to any benchmark. Assistant messages are
//!   ignored (model output says little about what the user asks for) except to detect multi-turn.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bytes of each message inspected for keywords and syntax.
pub const SCAN_LIMIT: usize = 16 * 1024;

/// Estimated tokens below which a prompt is `short` (≈ 400 Latin characters).
pub const SHORT_TOKENS: u32 = 100;
/// Estimated tokens from which a prompt is `long` (≈ 2,000 Latin characters).
pub const LONG_TOKENS: u32 = 500;

/// The routing bucket of a prompt. Stable names (see [`ContextKey::as_str`]) are stored with
/// decisions and feedback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContextKey {
    /// Mostly non-Latin script (Cyrillic, CJK, Arabic, ...): a language hint.
    NonLatin,
    /// Multiple-choice question (≥ 3 of the options A–D), short stem.
    Mcq,
    /// Multiple-choice question with a long stem or passage (≥ 100 estimated tokens).
    McqLong,
    /// Multiple-choice question with numbers and maths.
    McqMath,
    /// Maths: word problems, calculations, equations.
    Math,
    /// Code in the prompt (fences, syntax) or a request for code.
    Code,
    /// Extract or reformat information (JSON, tables, fields).
    Extraction,
    /// Creative or persuasive writing, rewriting, role-play.
    Writing,
    /// Any other conversation with earlier turns.
    ChatMulti,
    /// Any other single-turn prompt of ≥ 100 estimated tokens.
    ChatLong,
    /// Any other short single-turn prompt.
    ChatShort,
}

impl ContextKey {
    pub const ALL: [ContextKey; 11] = [
        ContextKey::NonLatin,
        ContextKey::Mcq,
        ContextKey::McqLong,
        ContextKey::McqMath,
        ContextKey::Math,
        ContextKey::Code,
        ContextKey::Extraction,
        ContextKey::Writing,
        ContextKey::ChatMulti,
        ContextKey::ChatLong,
        ContextKey::ChatShort,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ContextKey::NonLatin => "non-latin",
            ContextKey::Mcq => "mcq",
            ContextKey::McqLong => "mcq-long",
            ContextKey::McqMath => "mcq-math",
            ContextKey::Math => "math",
            ContextKey::Code => "code",
            ContextKey::Extraction => "extraction",
            ContextKey::Writing => "writing",
            ContextKey::ChatMulti => "chat-multi",
            ContextKey::ChatLong => "chat-long",
            ContextKey::ChatShort => "chat-short",
        }
    }

    /// Dense index in [`ContextKey::ALL`] (for per-bucket arrays).
    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<ContextKey> {
        ContextKey::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ContextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Length class by estimated tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Length {
    /// < [`SHORT_TOKENS`].
    Short,
    /// < [`LONG_TOKENS`].
    Medium,
    /// ≥ [`LONG_TOKENS`].
    Long,
}

/// Dominant script of the letters in the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Script {
    Latin,
    Cyrillic,
    Greek,
    /// Hebrew or Arabic.
    RightToLeft,
    /// Devanagari and other Indic scripts, Thai.
    Indic,
    /// Chinese, Japanese, Korean.
    Cjk,
    Other,
}

/// Everything [`features`] measured. `Copy`, no heap.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// Characters of user and system text (all of it, not only the scanned part).
    pub chars: u32,
    /// Estimated tokens: ASCII bytes / 4 + non-ASCII characters (CJK is ~1 token per char).
    pub est_tokens: u32,
    pub length: Length,
    pub user_turns: u16,
    /// An earlier user or assistant turn precedes the last user message.
    pub multi_turn: bool,
    pub mcq: bool,
    pub has_code: bool,
    pub has_math: bool,
    pub extraction: bool,
    pub writing: bool,
    pub script: Script,
}

impl Features {
    /// The bucket: first match of non-Latin, multiple choice, code, maths, extraction, writing,
    /// multi-turn, then chat by length.
    pub fn key(&self) -> ContextKey {
        if self.script != Script::Latin {
            ContextKey::NonLatin
        } else if self.mcq {
            if self.has_math {
                ContextKey::McqMath
            } else if self.length != Length::Short {
                ContextKey::McqLong
            } else {
                ContextKey::Mcq
            }
        } else if self.has_code {
            ContextKey::Code
        } else if self.has_math {
            ContextKey::Math
        } else if self.extraction {
            ContextKey::Extraction
        } else if self.writing {
            ContextKey::Writing
        } else if self.multi_turn {
            ContextKey::ChatMulti
        } else if self.length != Length::Short {
            ContextKey::ChatLong
        } else {
            ContextKey::ChatShort
        }
    }
}

/// Features of an OpenAI chat `messages` array. Unknown shapes are skipped, never an error:
/// `content` may be a string or an array of parts (`{"type": "text", "text": ...}`).
pub fn features(messages: &[Value]) -> Features {
    let mut s = Scan::default();
    let mut user_turns: u16 = 0;
    let mut assistant_turns: u16 = 0;
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "user" => user_turns = user_turns.saturating_add(1),
            "assistant" => {
                assistant_turns = assistant_turns.saturating_add(1);
                continue;
            }
            "system" | "developer" => {}
            _ => continue,
        }
        match m.get("content") {
            Some(Value::String(t)) => s.text(t),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        s.text(t);
                    }
                }
            }
            _ => {}
        }
    }
    s.finish(user_turns, user_turns > 1 || assistant_turns > 0)
}

/// Shorthand: `features(messages).key()`.
pub fn context_key(messages: &[Value]) -> ContextKey {
    features(messages).key()
}

/// Features of one plain user prompt (tests, offline tools).
pub fn text_features(text: &str) -> Features {
    let mut s = Scan::default();
    s.text(text);
    s.finish(1, false)
}

/// Counters of the single pass.
#[derive(Default)]
struct Scan {
    chars: u64,
    ascii: u64,
    non_ascii: u64,
    latin_letters: u64,
    non_latin: [u32; 6],
    numbers: u32,
    math_ops: u32,
    math_symbols: u32,
    math_words: u32,
    fences: u32,
    code_punct: u32,
    code_words: u32,
    lang_words: u32,
    extract_words: u32,
    write_words: u32,
    /// Option letters A–E seen as `A.`/`A)`/`A:` at a line start or as `(A)`.
    options: u8,
}

/// Which keyword list a word is in.
#[derive(Clone, Copy)]
enum Kw {
    Math,
    /// "how": "how many" / "how much" counts as maths.
    How,
    Code,
    Lang,
    Extract,
    Write,
}

/// Keyword lists (lower case, ≤ [`MAX_WORD`] letters).
const KEYWORDS: &[(&[u8], Kw)] = &[
    (b"solve", Kw::Math),
    (b"calculate", Kw::Math),
    (b"compute", Kw::Math),
    (b"evaluate", Kw::Math),
    (b"equation", Kw::Math),
    (b"equations", Kw::Math),
    (b"integral", Kw::Math),
    (b"derivative", Kw::Math),
    (b"probability", Kw::Math),
    (b"sum", Kw::Math),
    (b"percent", Kw::Math),
    (b"percentage", Kw::Math),
    (b"average", Kw::Math),
    (b"total", Kw::Math),
    (b"remainder", Kw::Math),
    (b"divisible", Kw::Math),
    (b"prime", Kw::Math),
    (b"fraction", Kw::Math),
    (b"ratio", Kw::Math),
    (b"simplify", Kw::Math),
    (b"polynomial", Kw::Math),
    (b"sqrt", Kw::Math),
    (b"log", Kw::Math),
    (b"theorem", Kw::Math),
    (b"prove", Kw::Math),
    (b"area", Kw::Math),
    (b"volume", Kw::Math),
    (b"radius", Kw::Math),
    (b"profit", Kw::Math),
    (b"cost", Kw::Math),
    (b"costs", Kw::Math),
    (b"price", Kw::Math),
    (b"how", Kw::How),
    (b"def", Kw::Code),
    (b"fn", Kw::Code),
    (b"function", Kw::Code),
    (b"class", Kw::Code),
    (b"return", Kw::Code),
    (b"import", Kw::Code),
    (b"include", Kw::Code),
    (b"void", Kw::Code),
    (b"const", Kw::Code),
    (b"println", Kw::Code),
    (b"printf", Kw::Code),
    (b"console", Kw::Code),
    (b"lambda", Kw::Code),
    (b"elif", Kw::Code),
    (b"struct", Kw::Code),
    (b"impl", Kw::Code),
    (b"async", Kw::Code),
    (b"await", Kw::Code),
    (b"code", Kw::Code),
    (b"program", Kw::Code),
    (b"script", Kw::Code),
    (b"implement", Kw::Code),
    (b"algorithm", Kw::Code),
    (b"debug", Kw::Code),
    (b"compile", Kw::Code),
    (b"bug", Kw::Code),
    (b"regex", Kw::Code),
    (b"python", Kw::Lang),
    (b"javascript", Kw::Lang),
    (b"typescript", Kw::Lang),
    (b"java", Kw::Lang),
    (b"rust", Kw::Lang),
    (b"golang", Kw::Lang),
    (b"sql", Kw::Lang),
    (b"html", Kw::Lang),
    (b"css", Kw::Lang),
    (b"bash", Kw::Lang),
    (b"cpp", Kw::Lang),
    (b"kotlin", Kw::Lang),
    (b"swift", Kw::Lang),
    (b"extract", Kw::Extract),
    (b"extraction", Kw::Extract),
    (b"json", Kw::Extract),
    (b"yaml", Kw::Extract),
    (b"csv", Kw::Extract),
    (b"parse", Kw::Extract),
    (b"table", Kw::Extract),
    (b"tabulate", Kw::Extract),
    (b"xml", Kw::Extract),
    (b"write", Kw::Write),
    (b"compose", Kw::Write),
    (b"draft", Kw::Write),
    (b"story", Kw::Write),
    (b"poem", Kw::Write),
    (b"essay", Kw::Write),
    (b"email", Kw::Write),
    (b"letter", Kw::Write),
    (b"blog", Kw::Write),
    (b"slogan", Kw::Write),
    (b"lyrics", Kw::Write),
    (b"pretend", Kw::Write),
    (b"imagine", Kw::Write),
    (b"roleplay", Kw::Write),
    (b"persona", Kw::Write),
    (b"character", Kw::Write),
    (b"persuasive", Kw::Write),
    (b"rewrite", Kw::Write),
    (b"rephrase", Kw::Write),
    (b"limerick", Kw::Write),
    (b"haiku", Kw::Write),
];

/// A word of ≤ 16 ASCII letters packed into an integer (byte i at bits 8i..8i+8): one integer
/// comparison instead of a string comparison.
const fn pack(w: &[u8]) -> u128 {
    let mut v = 0u128;
    let mut i = 0;
    while i < w.len() && i < 16 {
        v |= (w[i] as u128) << (8 * i);
        i += 1;
    }
    v
}

/// [`KEYWORDS`] packed and sorted at compile time, for a binary search per word.
static KEYWORD_TABLE: [(u128, Kw); KEYWORDS.len()] = {
    let mut t = [(0u128, Kw::Math); KEYWORDS.len()];
    let mut i = 0;
    while i < KEYWORDS.len() {
        t[i] = (pack(KEYWORDS[i].0), KEYWORDS[i].1);
        // Insertion sort.
        let mut j = i;
        while j > 0 && t[j - 1].0 > t[j].0 {
            let tmp = t[j];
            t[j] = t[j - 1];
            t[j - 1] = tmp;
            j -= 1;
        }
        i += 1;
    }
    t
};

/// Bit of a packed word in [`KEYWORD_FILTER`].
const fn filter_bit(packed: u128) -> usize {
    let h = (packed as u64 ^ (packed >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 54) as usize
}

/// A 1,024-bit Bloom filter of the keywords: most words (`the`, `of`, ...) are rejected with
/// one bit test instead of a binary search.
static KEYWORD_FILTER: [u64; 16] = {
    let mut f = [0u64; 16];
    let mut i = 0;
    while i < KEYWORDS.len() {
        let b = filter_bit(pack(KEYWORDS[i].0));
        f[b / 64] |= 1 << (b % 64);
        i += 1;
    }
    f
};

fn keyword(packed: u128) -> Option<Kw> {
    let b = filter_bit(packed);
    if KEYWORD_FILTER[b / 64] & (1 << (b % 64)) == 0 {
        return None;
    }
    KEYWORD_TABLE
        .binary_search_by(|(k, _)| k.cmp(&packed))
        .ok()
        .map(|i| KEYWORD_TABLE[i].1)
}

const MANY: u128 = pack(b"many");
const MUCH: u128 = pack(b"much");

const MAX_WORD: usize = 12;

impl Scan {
    fn text(&mut self, t: &str) {
        let all = t.as_bytes();
        // Lengths count everything (one vectorisable pass); only the scanned prefix feeds
        // keywords and syntax.
        let (mut chars, mut ascii) = (0u64, 0u64);
        for &c in all {
            chars += u64::from(c & 0xC0 != 0x80);
            ascii += u64::from(c < 0x80);
        }
        self.chars += chars;
        self.ascii += ascii;
        self.non_ascii += chars - ascii;

        let mut end = all.len().min(SCAN_LIMIT);
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        let b = &all[..end];
        let mut word = 0u128;
        let mut wlen = 0usize;
        let mut wlong = false;
        let mut prev_how = false;
        let mut line_start = true;
        let mut i = 0usize;
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_alphabetic() {
                self.latin_letters += 1;
                if wlen < MAX_WORD {
                    word |= u128::from(c.to_ascii_lowercase()) << (8 * wlen);
                    wlen += 1;
                } else {
                    wlong = true;
                }
                // An option letter at a line start: `A.`, `A)`, `A:` followed by a space/end.
                if line_start && wlen == 1 && (b'A'..=b'E').contains(&c) {
                    let next = b.get(i + 1).copied();
                    let after = b.get(i + 2).copied();
                    if matches!(next, Some(b'.' | b')' | b':'))
                        && matches!(after, None | Some(b' ' | b'\t' | b'\n' | b'\r'))
                    {
                        self.options |= 1 << (c - b'A');
                    }
                }
                line_start = false;
                i += 1;
                continue;
            }
            if wlen > 0 {
                if !wlong {
                    self.word(word, &mut prev_how);
                } else {
                    prev_how = false;
                }
                word = 0;
                wlen = 0;
                wlong = false;
            }
            if c.is_ascii_digit() {
                let prev_digit = i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.');
                if !prev_digit {
                    self.numbers += 1;
                }
                line_start = false;
                i += 1;
                continue;
            }
            if c >= 0x80 {
                // Decode the code point only for non-ASCII bytes (rare in English text).
                if let Some(ch) = t.get(i..end).and_then(|r| r.chars().next()) {
                    self.non_ascii_char(ch);
                    i += ch.len_utf8();
                } else {
                    i += 1;
                }
                line_start = false;
                continue;
            }
            match c {
                b'\n' => line_start = true,
                b' ' | b'\t' | b'\r' => {}
                b'(' => {
                    // `(A)` anywhere marks an option.
                    if let (Some(l), Some(b')')) = (b.get(i + 1), b.get(i + 2)) {
                        if (b'A'..=b'E').contains(l) {
                            self.options |= 1 << (l - b'A');
                        }
                    }
                    line_start = false;
                }
                b'`' => {
                    if b[i..].starts_with(b"```") {
                        self.fences += 1;
                        i += 3;
                        line_start = false;
                        continue;
                    }
                    line_start = false;
                }
                // Braces, and semicolons ending a line (prose uses `;` mid-line).
                b'{' | b'}' => {
                    self.code_punct += 1;
                    line_start = false;
                }
                b';' => {
                    if matches!(b.get(i + 1), None | Some(b'\n' | b'\r')) {
                        self.code_punct += 1;
                    }
                    line_start = false;
                }
                b'+' | b'-' | b'*' | b'/' | b'=' | b'^' | b'<' | b'>' | b'%' => {
                    // An operator next to a number (allowing one space): `3 + 4`, `x^2`, `=5`.
                    let near = |j: Option<usize>| {
                        j.and_then(|j| b.get(j)).is_some_and(|x| x.is_ascii_digit())
                    };
                    if near(i.checked_sub(1))
                        || near(i.checked_sub(2))
                        || near(Some(i + 1))
                        || near(Some(i + 2))
                    {
                        self.math_ops += 1;
                    }
                    line_start = false;
                }
                b'\\' => {
                    if b[i..].starts_with(b"\\frac") || b[i..].starts_with(b"\\sqrt") {
                        self.math_symbols += 1;
                    }
                    line_start = false;
                }
                _ => line_start = false,
            }
            i += 1;
        }
        if wlen > 0 && !wlong {
            self.word(word, &mut prev_how);
        }
    }

    fn word(&mut self, w: u128, prev_how: &mut bool) {
        let was_how = std::mem::replace(prev_how, false);
        if was_how && (w == MANY || w == MUCH) {
            self.math_words += 1;
            return;
        }
        match keyword(w) {
            Some(Kw::Math) => self.math_words += 1,
            Some(Kw::How) => *prev_how = true,
            Some(Kw::Code) => self.code_words += 1,
            Some(Kw::Lang) => self.lang_words += 1,
            Some(Kw::Extract) => self.extract_words += 1,
            Some(Kw::Write) => self.write_words += 1,
            None => {}
        }
    }

    fn non_ascii_char(&mut self, ch: char) {
        let u = ch as u32;
        let slot = match u {
            // Mathematical operators, arrows, super/subscripts, ² ³ × ÷ π (before the Latin and
            // Greek ranges that contain some of them).
            0x2200..=0x22FF | 0x2070..=0x209F | 0x00B2 | 0x00B3 | 0x00D7 | 0x00F7 | 0x03C0 => {
                self.math_symbols += 1;
                return;
            }
            0x00C0..=0x024F | 0x1E00..=0x1EFF => {
                self.latin_letters += 1;
                return;
            }
            0x0370..=0x03FF => 0,
            0x0400..=0x052F => 1,
            0x0590..=0x06FF | 0x0750..=0x077F => 2,
            0x0900..=0x0E7F => 3,
            0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF => 4,
            _ if ch.is_alphabetic() => 5,
            _ => return,
        };
        self.non_latin[slot] = self.non_latin[slot].saturating_add(1);
    }

    fn finish(&self, user_turns: u16, multi_turn: bool) -> Features {
        let est = self.ascii / 4 + self.non_ascii;
        let est_tokens = u32::try_from(est).unwrap_or(u32::MAX);
        let length = if est_tokens < SHORT_TOKENS {
            Length::Short
        } else if est_tokens < LONG_TOKENS {
            Length::Medium
        } else {
            Length::Long
        };
        let non_latin: u64 = self.non_latin.iter().map(|&x| u64::from(x)).sum();
        let letters = self.latin_letters + non_latin;
        // Non-Latin when more than 30% of the letters are (CJK letters count once per char,
        // Latin letters once per letter: CJK text is dense, so this errs towards non-Latin).
        let script = if non_latin * 10 > letters * 3 {
            let (slot, _) = self
                .non_latin
                .iter()
                .enumerate()
                .fold(
                    (5, 0u32),
                    |best, (i, &n)| if n > best.1 { (i, n) } else { best },
                );
            match slot {
                0 => Script::Greek,
                1 => Script::Cyrillic,
                2 => Script::RightToLeft,
                3 => Script::Indic,
                4 => Script::Cjk,
                _ => Script::Other,
            }
        } else {
            Script::Latin
        };
        let mcq = (self.options & 0b1111).count_ones() >= 3;
        let has_code = self.fences >= 2
            || self.code_words + 2 * self.lang_words + u32::from(self.code_punct >= 4) * 2 >= 3
            || (self.lang_words >= 1 && self.code_words >= 1);
        let has_math = (self.numbers >= 2 && self.math_words >= 1)
            || self.math_ops >= 2
            || self.math_symbols >= 1;
        Features {
            chars: u32::try_from(self.chars).unwrap_or(u32::MAX),
            est_tokens,
            length,
            user_turns,
            multi_turn,
            mcq,
            has_code,
            has_math,
            extraction: self.extract_words >= 1,
            writing: self.write_words >= 1,
            script,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(t: &str) -> ContextKey {
        text_features(t).key()
    }

    #[test]
    fn names_are_stable_and_parse_back() {
        assert!(ContextKey::ALL.len() <= 12);
        for (i, k) in ContextKey::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(ContextKey::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
        }
        assert_eq!(ContextKey::parse("nope"), None);
    }

    #[test]
    fn multiple_choice() {
        let q = "Find the degree for the given field extension Q(sqrt(2), sqrt(3)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:";
        let f = text_features(q);
        assert!(f.mcq && f.has_math, "{f:?}");
        assert_eq!(f.key(), ContextKey::McqMath);
        let q = "Which of these is a mammal?\nA. Shark\nB. Dolphin\nC. Trout\nD. Eel\nAnswer:";
        assert_eq!(key(q), ContextKey::Mcq);
        let long = format!(
            "{}\n(A) yes (B) no (C) maybe (D) never",
            "The passage says a thing. ".repeat(30)
        );
        assert_eq!(key(&long), ContextKey::McqLong);
        // Two options are not a multiple-choice question; letters inside words don't count.
        assert!(!text_features("A. yes\nB. no").mcq);
        assert!(!text_features("A cat.\nBig dog.\nCats: many.\nDogs").mcq);
    }

    #[test]
    fn math_code_extraction_writing_chat() {
        let gsm = "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins with 4. How much in dollars does she make every day?";
        assert_eq!(key(gsm), ContextKey::Math);
        assert_eq!(key("What is 12 * 7 + 3?"), ContextKey::Math);
        assert_eq!(key("Solve x² = 9"), ContextKey::Math);
        assert_eq!(
            key("Develop a Python program that reads all the text files under a directory."),
            ContextKey::Code
        );
        assert_eq!(
            key("Why does this fail?\n```\nfn main() { let x = 1; }\n```"),
            ContextKey::Code
        );
        assert_eq!(
            key("Extract the names and dates from this text and return them as JSON."),
            ContextKey::Extraction
        );
        assert_eq!(
            key("Compose an engaging travel blog post about a recent trip to Hawaii."),
            ContextKey::Writing
        );
        assert_eq!(
            key("Hi! What should I cook tonight?"),
            ContextKey::ChatShort
        );
        assert_eq!(
            key(&"Tell me more about the history of the region and its people. ".repeat(10)),
            ContextKey::ChatLong
        );
        // "how" alone is not maths.
        assert_eq!(key("How are you?"), ContextKey::ChatShort);
    }

    #[test]
    fn script_and_turns_from_messages() {
        let m = [json!({"role": "user", "content": "Привет, как дела? Расскажи мне о погоде."})];
        let f = features(&m);
        assert_eq!(
            (f.script, f.key()),
            (Script::Cyrillic, ContextKey::NonLatin)
        );
        let m = [json!({"role": "user", "content": "请帮我写一首关于春天的诗"})];
        assert_eq!(features(&m).script, Script::Cjk);
        // Accents are Latin.
        let m = [json!({"role": "user", "content": "Où est la bibliothèque? Ça va très bien."})];
        assert_eq!(features(&m).script, Script::Latin);
        let m = [
            json!({"role": "system", "content": "You are helpful."}),
            json!({"role": "user", "content": "Tell me a fun fact."}),
            json!({"role": "assistant", "content": "Octopuses have three hearts."}),
            json!({"role": "user", "content": [{"type": "text", "text": "Another one?"}]}),
        ];
        let f = features(&m);
        assert_eq!((f.user_turns, f.multi_turn), (2, true));
        assert_eq!(f.key(), ContextKey::ChatMulti);
        // Garbage shapes are skipped, never a panic.
        let m = [
            json!(1),
            json!({"role": 5}),
            json!({"role": "user", "content": {"x": 1}}),
        ];
        assert_eq!(features(&m).key(), ContextKey::ChatShort);
        assert_eq!(features(&[]).chars, 0);
    }

    #[test]
    fn length_buckets_and_scan_limit() {
        assert_eq!(text_features("short").length, Length::Short);
        assert_eq!(text_features(&"word ".repeat(100)).length, Length::Medium);
        let huge = "a".repeat(SCAN_LIMIT * 8);
        let f = text_features(&huge);
        assert_eq!(f.length, Length::Long);
        assert_eq!(f.chars as usize, SCAN_LIMIT * 8);
        // A multi-byte char straddling the limit does not panic.
        let s = format!("{}é{}", "a".repeat(SCAN_LIMIT - 1), "b".repeat(10));
        let _ = text_features(&s);
    }

    /// Not a benchmark: a loose bound that catches accidental quadratic work or per-word
    /// allocation (release builds take ~1 µs for this prompt; the replay bench reports it).
    #[test]
    fn fast_enough() {
        let m = [json!({"role": "user", "content":
            "The following are multiple choice questions about physics.\nA ball is thrown upward at 12 m/s. How long until it returns?\nA. 1.2 s\nB. 2.4 s\nC. 3.6 s\nD. 4.8 s\nAnswer:"})];
        let n = 2_000u32;
        let t = std::time::Instant::now();
        let mut acc = 0usize;
        for _ in 0..n {
            acc += context_key(std::hint::black_box(&m)).index();
        }
        let per = t.elapsed() / n;
        assert!(acc > 0);
        assert!(
            per < std::time::Duration::from_micros(200),
            "{per:?} per prompt"
        );
    }
}
