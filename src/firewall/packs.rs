//! Built-in rule packs. Patterns are ASCII-only (`(?-u)` where it matters) so the lazy DFA
//! handles the whole set in one pass, and every match span lies on character boundaries.

use super::config::Action;

/// A post-match check that rejects look-alikes (a card number must pass Luhn, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    None,
    Luhn,
    Iban,
    UsSsn,
}

pub struct Builtin {
    pub id: &'static str,
    pub pattern: &'static str,
    pub check: Check,
}

pub struct Pack {
    pub name: &'static str,
    pub default_action: Action,
    pub rules: &'static [Builtin],
}

const fn r(id: &'static str, pattern: &'static str) -> Builtin {
    Builtin {
        id,
        pattern,
        check: Check::None,
    }
}

const fn rc(id: &'static str, pattern: &'static str, check: Check) -> Builtin {
    Builtin { id, pattern, check }
}

pub const INJECTION: &[Builtin] = &[
    r(
        "injection.ignore_instructions",
        r"(?i)\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)*(?:previous|prior|above|earlier|preceding|system)\s+(?:instructions|prompts?|rules|directions|guidelines)",
    ),
    r(
        "injection.reveal_prompt",
        r"(?i)\b(?:reveal|print|show|repeat|output|leak)\s+(?:me\s+)?(?:your|the)\s+(?:system\s+prompt|hidden\s+instructions|initial\s+instructions)",
    ),
    r(
        "injection.jailbreak_persona",
        r"(?i)\b(?:you\s+are\s+now\s+(?:DAN|in\s+developer\s+mode|unfiltered|jailbroken)|do\s+anything\s+now|developer\s+mode\s+enabled|jailbreak\s+mode)",
    ),
    r(
        "injection.no_restrictions",
        r"(?i)\b(?:pretend|act\s+as\s+if|imagine)\s+(?:that\s+)?you\s+(?:have\s+no|are\s+free\s+of|are\s+not\s+bound\s+by)\s+(?:restrictions|rules|filters|guidelines|limits)",
    ),
];

pub const PII: &[Builtin] = &[
    r(
        "pii.email",
        r"(?-u)\b[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}\b",
    ),
    r(
        "pii.phone",
        r"(?-u)(?:\+[1-9]\d{0,2}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){2,4}\b|\b\(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4}\b)",
    ),
    rc(
        "pii.payment_card",
        r"(?-u)\b\d(?:[ \-]?\d){12,18}\b",
        Check::Luhn,
    ),
    rc(
        "pii.iban",
        r"(?-u)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        Check::Iban,
    ),
    rc("pii.us_ssn", r"(?-u)\b\d{3}-\d{2}-\d{4}\b", Check::UsSsn),
    r(
        "pii.uk_nino",
        r"(?-u)\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
    ),
];

pub const SECRETS: &[Builtin] = &[
    r(
        "secrets.anthropic_key",
        r"(?-u)\bsk-ant-[A-Za-z0-9_\-]{20,}",
    ),
    r(
        "secrets.openai_key",
        r"(?-u)\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
    ),
    r(
        "secrets.aws_access_key",
        r"(?-u)\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    ),
    r(
        "secrets.github_token",
        r"(?-u)\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    ),
    r("secrets.google_api_key", r"(?-u)\bAIza[0-9A-Za-z_\-]{35}"),
    r(
        "secrets.slack_token",
        r"(?-u)\bxox[abposr]-[A-Za-z0-9\-]{10,}",
    ),
    r(
        "secrets.stripe_key",
        r"(?-u)\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
    ),
    r(
        "secrets.private_key",
        r"(?-u)-----BEGIN [A-Z ]{0,20}PRIVATE KEY(?: BLOCK)?-----[A-Za-z0-9+/=\s:\-,]*(?:-----END [A-Z ]{0,20}PRIVATE KEY(?: BLOCK)?-----)?",
    ),
    r(
        "secrets.jwt",
        r"(?-u)\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    ),
    r(
        "secrets.bearer_token",
        r"(?-u)(?i:\bbearer)\s+[A-Za-z0-9._~+/\-]{20,}=*",
    ),
];

pub const PACKS: &[Pack] = &[
    Pack {
        name: "injection",
        default_action: Action::Block,
        rules: INJECTION,
    },
    Pack {
        name: "pii",
        default_action: Action::Redact,
        rules: PII,
    },
    Pack {
        name: "secrets",
        default_action: Action::Redact,
        rules: SECRETS,
    },
];

pub fn pack(name: &str) -> Option<&'static Pack> {
    PACKS.iter().find(|p| p.name == name)
}

/// Luhn checksum over the digits of `s` (separators ignored), 13 to 19 digits.
pub fn luhn(s: &[u8]) -> bool {
    let digits: usize = s.iter().filter(|b| b.is_ascii_digit()).count();
    if !(13..=19).contains(&digits) {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in s
        .iter()
        .rev()
        .filter(|b| b.is_ascii_digit())
        .map(|b| u32::from(b - b'0'))
        .enumerate()
    {
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
    }
    sum.is_multiple_of(10)
}

/// ISO 13616 IBAN check: move the first four characters to the end, letters to numbers,
/// the whole number mod 97 must be 1.
pub fn iban(s: &[u8]) -> bool {
    let chars: Vec<u8> = s.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&chars.len()) {
        return false;
    }
    let mut rem = 0u32;
    for &c in chars[4..].iter().chain(chars[..4].iter()) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000.
pub fn us_ssn(s: &[u8]) -> bool {
    if s.len() != 11 {
        return false;
    }
    let area = &s[0..3];
    area != b"000" && area != b"666" && area[0] != b'9' && &s[4..6] != b"00" && &s[7..11] != b"0000"
}

impl Check {
    pub fn accepts(self, m: &[u8]) -> bool {
        match self {
            Check::None => true,
            Check::Luhn => luhn(m),
            Check::Iban => iban(m),
            Check::UsSsn => us_ssn(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn(b"4111 1111 1111 1111"));
        assert!(luhn(b"5500-0000-0000-0004"));
        assert!(!luhn(b"4111 1111 1111 1112"));
        assert!(!luhn(b"1234"));
        assert!(iban(b"GB82 WEST 1234 5698 7654 32"));
        assert!(iban(b"DE89370400440532013000"));
        assert!(!iban(b"GB82 WEST 1234 5698 7654 33"));
        assert!(us_ssn(b"123-45-6789"));
        assert!(!us_ssn(b"000-45-6789"));
        assert!(!us_ssn(b"912-45-6789"));
    }
}
