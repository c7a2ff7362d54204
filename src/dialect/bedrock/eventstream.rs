//! AWS event-stream binary framing (`application/vnd.amazon.eventstream`).
//!
//! Every message is
//! `total_len:u32 | headers_len:u32 | prelude_crc:u32 | headers | payload | message_crc:u32`
//! (big endian). `prelude_crc` is the CRC32 of the first 8 bytes, `message_crc` the CRC32
//! of everything before it. A header is `name_len:u8 | name | type:u8 | value`.
//!
//! The decoder is incremental: upstream chunks split frames anywhere, so it buffers until
//! a whole message is present, verifies both CRCs, and never trusts a length before the
//! prelude CRC vouched for it.

use super::super::DialectError;

/// Prelude (12 bytes) + message CRC (4 bytes).
const MIN_MESSAGE: usize = 16;
/// AWS caps payloads at 16 MiB and headers at 128 KiB; anything larger is garbage.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024 + 128 * 1024 + MIN_MESSAGE;
const MAX_HEADERS: usize = 128 * 1024;

/// A header value, one variant per wire type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Types 0 (true) and 1 (false).
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Short(i16),
    /// Type 4.
    Int(i32),
    /// Type 5.
    Long(i64),
    /// Type 6: u16 length + bytes.
    Bytes(Vec<u8>),
    /// Type 7: u16 length + UTF-8.
    String(String),
    /// Type 8: milliseconds since the epoch.
    Timestamp(i64),
    /// Type 9: 16 bytes.
    Uuid([u8; 16]),
}

impl HeaderValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// A string header's value (`:message-type`, `:event-type`, `:exception-type`, ...).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_str())
    }
}

/// Incremental decoder. After an error it stays failed: the stream has lost framing.
#[derive(Debug, Default)]
pub struct EventStreamDecoder {
    buf: Vec<u8>,
    /// Read position in `buf`; consumed bytes are dropped lazily to avoid quadratic copies.
    pos: usize,
    failed: bool,
}

fn malformed(msg: impl Into<String>) -> DialectError {
    DialectError::Malformed(format!("event stream: {}", msg.into()))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl EventStreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; whole, verified messages are appended to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Message>) -> Result<(), DialectError> {
        if self.failed {
            return Err(malformed("decoder already failed"));
        }
        self.buf.extend_from_slice(input);
        let r = self.drain(out);
        if r.is_err() {
            self.failed = true;
            self.buf.clear();
            self.pos = 0;
        }
        r
    }

    /// True when bytes of an unfinished message are buffered.
    pub fn has_partial(&self) -> bool {
        self.buf.len() > self.pos
    }

    fn drain(&mut self, out: &mut Vec<Message>) -> Result<(), DialectError> {
        loop {
            let avail = &self.buf[self.pos..];
            if avail.len() < 12 {
                break;
            }
            let total = be32(&avail[0..4]) as usize;
            let headers_len = be32(&avail[4..8]) as usize;
            let prelude_crc = be32(&avail[8..12]);
            if crc32fast::hash(&avail[0..8]) != prelude_crc {
                return Err(malformed("prelude CRC mismatch"));
            }
            if !(MIN_MESSAGE..=MAX_MESSAGE).contains(&total) {
                return Err(malformed(format!("message length {total} out of range")));
            }
            if headers_len > MAX_HEADERS || headers_len + MIN_MESSAGE > total {
                return Err(malformed(format!(
                    "headers length {headers_len} out of range"
                )));
            }
            if avail.len() < total {
                break;
            }
            let frame = &avail[..total];
            let msg_crc = be32(&frame[total - 4..]);
            if crc32fast::hash(&frame[..total - 4]) != msg_crc {
                return Err(malformed("message CRC mismatch"));
            }
            let headers = parse_headers(&frame[12..12 + headers_len])?;
            let payload = frame[12 + headers_len..total - 4].to_vec();
            out.push(Message { headers, payload });
            self.pos += total;
        }
        // Compact once the consumed prefix dominates the buffer.
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(())
    }
}

fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, HeaderValue)>, DialectError> {
    let mut headers = Vec::new();
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], DialectError> {
        if b.len() < n {
            return Err(malformed("header runs past its section"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    while !b.is_empty() {
        let name_len = take(&mut b, 1)?[0] as usize;
        if name_len == 0 {
            return Err(malformed("empty header name"));
        }
        let name = std::str::from_utf8(take(&mut b, name_len)?)
            .map_err(|_| malformed("header name is not UTF-8"))?
            .to_string();
        let ty = take(&mut b, 1)?[0];
        let value = match ty {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(take(&mut b, 1)?[0] as i8),
            3 => {
                let v = take(&mut b, 2)?;
                HeaderValue::Short(i16::from_be_bytes([v[0], v[1]]))
            }
            4 => HeaderValue::Int(be32(take(&mut b, 4)?) as i32),
            5 | 8 => {
                let v = take(&mut b, 8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(v);
                let n = i64::from_be_bytes(a);
                if ty == 5 {
                    HeaderValue::Long(n)
                } else {
                    HeaderValue::Timestamp(n)
                }
            }
            6 | 7 => {
                let l = take(&mut b, 2)?;
                let len = u16::from_be_bytes([l[0], l[1]]) as usize;
                let v = take(&mut b, len)?;
                if ty == 6 {
                    HeaderValue::Bytes(v.to_vec())
                } else {
                    HeaderValue::String(
                        std::str::from_utf8(v)
                            .map_err(|_| malformed("string header is not UTF-8"))?
                            .to_string(),
                    )
                }
            }
            9 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(take(&mut b, 16)?);
                HeaderValue::Uuid(a)
            }
            t => return Err(malformed(format!("unknown header type {t}"))),
        };
        headers.push((name, value));
    }
    Ok(headers)
}

fn encode_header(name: &str, value: &HeaderValue, out: &mut Vec<u8>) {
    // Names longer than 255 bytes cannot be framed; truncating keeps the encoder total.
    let name = &name.as_bytes()[..name.len().min(255)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    match value {
        HeaderValue::Bool(true) => out.push(0),
        HeaderValue::Bool(false) => out.push(1),
        HeaderValue::Byte(v) => {
            out.push(2);
            out.push(*v as u8);
        }
        HeaderValue::Short(v) => {
            out.push(3);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Int(v) => {
            out.push(4);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Long(v) => {
            out.push(5);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Bytes(v) => {
            let v = &v[..v.len().min(u16::MAX as usize)];
            out.push(6);
            out.extend_from_slice(&(v.len() as u16).to_be_bytes());
            out.extend_from_slice(v);
        }
        HeaderValue::String(v) => {
            let v = &v.as_bytes()[..v.len().min(u16::MAX as usize)];
            out.push(7);
            out.extend_from_slice(&(v.len() as u16).to_be_bytes());
            out.extend_from_slice(v);
        }
        HeaderValue::Timestamp(v) => {
            out.push(8);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Uuid(v) => {
            out.push(9);
            out.extend_from_slice(v);
        }
    }
}

/// Encode one message with correct CRCs (for tests and the mock Bedrock server).
pub fn encode_frame(headers: &[(&str, HeaderValue)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        encode_header(name, value, &mut h);
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out[..8]);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A Bedrock stream event frame: `:event-type`, `:content-type`, `:message-type: event`.
pub fn event_frame(event_type: &str, payload: &[u8]) -> Vec<u8> {
    encode_frame(
        &[
            (":event-type", HeaderValue::String(event_type.into())),
            (
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            (":message-type", HeaderValue::String("event".into())),
        ],
        payload,
    )
}

/// A Bedrock exception frame (`:message-type: exception`).
pub fn exception_frame(exception_type: &str, message: &str) -> Vec<u8> {
    let payload = serde_json::json!({ "message": message }).to_string();
    encode_frame(
        &[
            (
                ":exception-type",
                HeaderValue::String(exception_type.into()),
            ),
            (
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            (":message-type", HeaderValue::String("exception".into())),
        ],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_types() -> Vec<(&'static str, HeaderValue)> {
        vec![
            ("t", HeaderValue::Bool(true)),
            ("f", HeaderValue::Bool(false)),
            ("b", HeaderValue::Byte(-3)),
            ("s", HeaderValue::Short(-300)),
            ("i", HeaderValue::Int(70000)),
            ("l", HeaderValue::Long(-1 << 40)),
            ("ba", HeaderValue::Bytes(vec![0, 1, 255])),
            (":event-type", HeaderValue::String("messageStart".into())),
            ("ts", HeaderValue::Timestamp(1_700_000_000_000)),
            ("u", HeaderValue::Uuid([7; 16])),
        ]
    }

    fn sample_stream() -> Vec<u8> {
        let mut v = encode_frame(&all_types(), b"{\"role\":\"assistant\"}");
        v.extend(event_frame(
            "contentBlockDelta",
            b"{\"contentBlockIndex\":0,\"delta\":{\"text\":\"Hi\"}}",
        ));
        v.extend(encode_frame(&[], b""));
        v.extend(exception_frame("throttlingException", "slow down"));
        v
    }

    fn decode_chunks(chunks: &[&[u8]]) -> Result<Vec<Message>, DialectError> {
        let mut d = EventStreamDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn roundtrip_every_header_type() {
        let msgs = decode_chunks(&[&sample_stream()]).unwrap();
        assert_eq!(msgs.len(), 4);
        let expected: Vec<(String, HeaderValue)> = all_types()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        assert_eq!(msgs[0].headers, expected);
        assert_eq!(msgs[0].payload, b"{\"role\":\"assistant\"}");
        assert_eq!(msgs[1].header_str(":event-type"), Some("contentBlockDelta"));
        assert_eq!(msgs[2], Message::default());
        assert_eq!(
            msgs[3].header_str(":exception-type"),
            Some("throttlingException")
        );
    }

    #[test]
    fn known_vector_from_the_spec() {
        // AWS's published "int32_header" test vector: header event-type=0x0000A00C, payload {'foo':'bar'}.
        let frame = hex::decode(
            "0000002d0000001041c424b80a6576656e742d74797065040000a00c7b27666f6f273a27626172277d36f480a0",
        )
        .unwrap();
        let msgs = decode_chunks(&[&frame]).unwrap();
        assert_eq!(
            msgs[0].headers,
            vec![("event-type".to_string(), HeaderValue::Int(0xA00C))]
        );
        assert_eq!(msgs[0].payload, b"{'foo':'bar'}");
        assert_eq!(
            encode_frame(
                &[("event-type", HeaderValue::Int(0xA00C))],
                b"{'foo':'bar'}"
            ),
            frame
        );
    }

    /// More of AWS's published event-stream vectors (as shipped in the AWS SDKs' fixtures).
    #[test]
    fn published_vectors() {
        let foo_bar: &[u8] = b"{'foo':'bar'}";
        let empty = [
            0u8, 0, 0, 16, 0, 0, 0, 0, 5, 194, 72, 235, 125, 152, 200, 255,
        ];
        assert_eq!(decode_chunks(&[&empty]).unwrap(), vec![Message::default()]);
        assert_eq!(encode_frame(&[], b""), empty);
        let no_headers = [
            0u8, 0, 0, 29, 0, 0, 0, 0, 253, 82, 140, 90, 123, 39, 102, 111, 111, 39, 58, 39, 98,
            97, 114, 39, 125, 195, 101, 57, 54,
        ];
        assert_eq!(decode_chunks(&[&no_headers]).unwrap()[0].payload, foo_bar);
        let one_str: Vec<u8> = {
            let mut v = vec![0u8, 0, 0, 61, 0, 0, 0, 32, 7, 253, 131, 150, 12];
            v.extend_from_slice(b"content-type");
            v.extend_from_slice(&[7, 0, 16]);
            v.extend_from_slice(b"application/json");
            v.extend_from_slice(foo_bar);
            v.extend_from_slice(&[141, 156, 8, 177]);
            v
        };
        let m = &decode_chunks(&[&one_str]).unwrap()[0];
        assert_eq!(m.header_str("content-type"), Some("application/json"));
        assert_eq!(m.payload, foo_bar);
        assert_eq!(
            encode_frame(
                &[(
                    "content-type",
                    HeaderValue::String("application/json".into())
                )],
                foo_bar
            ),
            one_str
        );
        // Negative vectors: corrupted header length, total length, payload, header byte.
        let mut bad_header_len = one_str.clone();
        bad_header_len[6] = 1;
        let mut bad_len = no_headers.to_vec();
        bad_len[0] = 1;
        let mut bad_payload = no_headers.to_vec();
        bad_payload[24] = 141;
        let mut bad_header = one_str.clone();
        bad_header[20] = b'+';
        for (name, v) in [
            ("header_len", bad_header_len),
            ("length", bad_len),
            ("payload", bad_payload),
            ("headers", bad_header),
        ] {
            assert!(decode_chunks(&[&v]).is_err(), "corrupted_{name} must fail");
        }
    }

    #[test]
    fn crc_errors_are_detected() {
        let good = event_frame("messageStop", b"{\"stopReason\":\"end_turn\"}");
        let mut bad_prelude = good.clone();
        bad_prelude[3] ^= 1;
        assert!(decode_chunks(&[&bad_prelude]).is_err());
        let mut bad_msg = good.clone();
        let n = bad_msg.len();
        bad_msg[n - 6] ^= 0x20;
        assert!(decode_chunks(&[&bad_msg]).is_err());
        // A failed decoder stays failed.
        let mut d = EventStreamDecoder::new();
        let mut out = Vec::new();
        assert!(d.feed(&bad_msg, &mut out).is_err());
        assert!(d.feed(&good, &mut out).is_err());
    }

    #[test]
    fn oversized_length_is_rejected_before_buffering() {
        let mut prelude = Vec::new();
        prelude.extend_from_slice(&(u32::MAX).to_be_bytes());
        prelude.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&prelude);
        prelude.extend_from_slice(&crc.to_be_bytes());
        assert!(decode_chunks(&[&prelude]).is_err());
    }

    #[test]
    fn partial_frame_waits() {
        let f = event_frame("messageStart", b"{}");
        let mut d = EventStreamDecoder::new();
        let mut out = Vec::new();
        d.feed(&f[..f.len() - 1], &mut out).unwrap();
        assert!(out.is_empty() && d.has_partial());
        d.feed(&f[f.len() - 1..], &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(!d.has_partial());
    }

    proptest! {
        #[test]
        fn any_split_gives_same_messages(cuts in proptest::collection::vec(0usize..2000, 0..10)) {
            let input = sample_stream();
            let whole = decode_chunks(&[&input]).unwrap();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts { chunks.push(&input[last..c]); last = c; }
            chunks.push(&input[last..]);
            prop_assert_eq!(decode_chunks(&chunks).unwrap(), whole);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1024), split in 0usize..1024) {
            let split = split.min(data.len());
            let _ = decode_chunks(&[&data[..split], &data[split..]]);
        }

        #[test]
        fn corrupted_byte_is_an_error_or_ignored(pos in 0usize..10_000, bit in 0u8..8) {
            let mut input = sample_stream();
            let pos = pos % input.len();
            input[pos] ^= 1 << bit;
            // Every byte is covered by a CRC, so a flipped bit must be reported.
            prop_assert!(decode_chunks(&[&input]).is_err());
        }
    }
}
