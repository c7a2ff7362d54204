//! Incremental Server-Sent Events decoder.
//!
//! Upstream chunk boundaries do not follow event boundaries: a `data:` line can be split
//! anywhere, even inside a UTF-8 sequence or between `\r` and `\n`. The decoder carries
//! the partial line between calls and yields whole events only.

use super::DialectError;

/// Largest line we are willing to buffer; a provider never sends one this long, garbage might.
pub const MAX_LINE: usize = 32 * 1024 * 1024;

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; empty means the default `message` type.
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    /// The previous chunk ended with `\r`; a leading `\n` in the next one belongs to it.
    pending_cr: bool,
    event: String,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; whole events are appended to `events`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        events: &mut Vec<SseEvent>,
    ) -> Result<(), DialectError> {
        // An empty chunk must not clear a pending `\r` (its `\n` may come next).
        if input.is_empty() {
            return Ok(());
        }
        if self.pending_cr {
            if input.first() == Some(&b'\n') {
                input = &input[1..];
            }
            self.pending_cr = false;
        }
        while !input.is_empty() {
            match input.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(pos) => {
                    let term = input[pos];
                    if self.line.is_empty() {
                        self.process_line_slice(&input[..pos], events)?;
                    } else {
                        self.line.extend_from_slice(&input[..pos]);
                        let line = std::mem::take(&mut self.line);
                        self.process_line_slice(&line, events)?;
                        self.line = line;
                        self.line.clear();
                    }
                    input = &input[pos + 1..];
                    if term == b'\r' {
                        if input.is_empty() {
                            self.pending_cr = true;
                        } else if input[0] == b'\n' {
                            input = &input[1..];
                        }
                    }
                }
                None => {
                    if self.line.len() + input.len() > MAX_LINE {
                        return Err(DialectError::Malformed("SSE line exceeds 32 MiB".into()));
                    }
                    self.line.extend_from_slice(input);
                    break;
                }
            }
        }
        Ok(())
    }

    /// End of input: dispatch a final event that lacked its blank line (lenient, as
    /// several providers end the stream right after the last `data:` line).
    pub fn finish(&mut self, events: &mut Vec<SseEvent>) -> Result<(), DialectError> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line_slice(&line, events)?;
        }
        self.dispatch(events);
        Ok(())
    }

    /// True if bytes of an unfinished line or event are buffered.
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        if self.has_data {
            events.push(SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data),
            });
        }
        self.event.clear();
        self.has_data = false;
    }

    fn process_line_slice(
        &mut self,
        line: &[u8],
        events: &mut Vec<SseEvent>,
    ) -> Result<(), DialectError> {
        if line.is_empty() {
            self.dispatch(events);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // comment / keep-alive
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = std::str::from_utf8(value)
            .map_err(|_| DialectError::Malformed("SSE line is not UTF-8".into()))?;
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            _ => {} // id, retry and unknown fields carry nothing we need
        }
        Ok(())
    }
}

/// Incremental newline-delimited JSON splitter (Ollama native, some embeddings APIs).
#[derive(Debug, Default)]
pub struct NdjsonDecoder {
    line: Vec<u8>,
}

impl NdjsonDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; each complete non-empty line is appended to `lines`.
    pub fn feed(&mut self, mut input: &[u8], lines: &mut Vec<Vec<u8>>) -> Result<(), DialectError> {
        while let Some(pos) = input.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&input[..pos]);
            let line = std::mem::take(&mut self.line);
            let trimmed = line.trim_ascii();
            if !trimmed.is_empty() {
                lines.push(trimmed.to_vec());
            }
            input = &input[pos + 1..];
        }
        if self.line.len() + input.len() > MAX_LINE {
            return Err(DialectError::Malformed("NDJSON line exceeds 32 MiB".into()));
        }
        self.line.extend_from_slice(input);
        Ok(())
    }

    /// End of input: a last line without its newline.
    pub fn finish(&mut self, lines: &mut Vec<Vec<u8>>) {
        let line = std::mem::take(&mut self.line);
        let trimmed = line.trim_ascii();
        if !trimmed.is_empty() {
            lines.push(trimmed.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut ev = Vec::new();
        for c in chunks {
            d.feed(c, &mut ev).unwrap();
        }
        d.finish(&mut ev).unwrap();
        ev
    }

    #[test]
    fn parses_events_and_comments() {
        let ev = decode_all(&[
            b": ping\n\nevent: message_start\ndata: {\"a\":1}\n\ndata: x\ndata: y\n\n",
        ]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].event, "message_start");
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert_eq!(ev[1].data, "x\ny");
    }

    #[test]
    fn crlf_split_across_chunks() {
        let ev = decode_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(
            ev.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn ndjson_lines() {
        let mut d = NdjsonDecoder::new();
        let mut l = Vec::new();
        d.feed(b"{\"a\":1}\n{\"b\"", &mut l).unwrap();
        d.feed(b":2}\n\n", &mut l).unwrap();
        d.finish(&mut l);
        assert_eq!(l, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
    }

    proptest! {
        #[test]
        fn any_split_gives_same_events(cuts in proptest::collection::vec(0usize..200, 0..8)) {
            let input: &[u8] = b"event: a\r\ndata: {\"x\":\"\xc3\xa9t\xc3\xa9\"}\r\n\r\n: c\n\ndata: 1\ndata: 2\n\nevent: z\ndata: [DONE]\n\n";
            let whole = decode_all(&[input]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts { chunks.push(&input[last..c]); last = c; }
            chunks.push(&input[last..]);
            prop_assert_eq!(decode_all(&chunks), whole);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = SseDecoder::new();
            let mut ev = Vec::new();
            let _ = d.feed(&data, &mut ev);
            let _ = d.finish(&mut ev);
            let mut n = NdjsonDecoder::new();
            let mut l = Vec::new();
            let _ = n.feed(&data, &mut l);
            n.finish(&mut l);
        }
    }
}
