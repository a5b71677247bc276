//! An incremental Server-Sent Events parser and encoder.
//!
//! Upstream bytes arrive in arbitrary chunks; [`SseParser::push`] returns the
//! events completed by each chunk and keeps the rest, so a translated stream
//! never waits for the whole upstream response. Follows the WHATWG
//! event-stream grammar: LF, CRLF or CR line ends (also split across chunks),
//! `:` comments, multi-line `data`, `event` names; `id` and `retry` are
//! accepted and ignored.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` name, when the upstream sent one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser: feed bytes with [`push`](Self::push), then call
/// [`finish`](Self::finish) at the end of the stream.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a leading `\n` belongs to that line end.
    pending_cr: bool,
    started: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feed the next bytes; returns every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut bytes = bytes;
        if !self.started && !bytes.is_empty() {
            // A UTF-8 byte order mark may open the stream; it may itself be
            // split, so wait until three bytes (or a line end) are buffered.
            self.line.extend_from_slice(bytes);
            if self.line.len() < 3 && !self.line.iter().any(|b| *b == b'\n' || *b == b'\r') {
                return out;
            }
            self.started = true;
            let mut buffered = std::mem::take(&mut self.line);
            if buffered.starts_with(&[0xEF, 0xBB, 0xBF]) {
                buffered.drain(..3);
            }
            return self.push_started(&buffered);
        }
        if self.pending_cr {
            self.pending_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        self.scan(bytes, &mut out);
        out
    }

    fn push_started(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.scan(bytes, &mut out);
        out
    }

    fn scan(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\n' => {
                    self.end_line(out);
                    i += 1;
                }
                b'\r' => {
                    self.end_line(out);
                    if i + 1 < bytes.len() {
                        if bytes[i + 1] == b'\n' {
                            i += 1;
                        }
                    } else {
                        self.pending_cr = true;
                    }
                    i += 1;
                }
                _ => {
                    let end = bytes[i..]
                        .iter()
                        .position(|b| *b == b'\n' || *b == b'\r')
                        .map_or(bytes.len(), |p| i + p);
                    self.line.extend_from_slice(&bytes[i..end]);
                    i = end;
                }
            }
        }
    }

    /// Bytes held for the event being read (its unfinished line and data so far), so a
    /// caller can cap what one upstream event may make it buffer.
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len()
    }

    /// End of stream: a last event without its closing blank line is still
    /// dispatched (some upstreams close the connection right after it).
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            let mut buffered = std::mem::take(&mut self.line);
            if buffered.starts_with(&[0xEF, 0xBB, 0xBF]) {
                buffered.drain(..3);
            }
            self.scan(&buffered, &mut out);
        }
        if !self.line.is_empty() {
            self.end_line(&mut out);
        }
        self.dispatch(&mut out);
        self.pending_cr = false;
        out
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return; // comment
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = match line.find(':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {} // id, retry and unknown fields
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if self.has_data {
            self.has_data = false;
            out.push(SseEvent {
                event: event.filter(|e| !e.is_empty()),
                data: std::mem::take(&mut self.data),
            });
        }
    }
}

/// Encode one `data:` event: `data: {payload}\n\n` (a payload with line
/// breaks becomes several `data:` lines, which parsers join back).
pub fn encode_data(payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    for line in payload.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// The terminating `data: [DONE]\n\n` frame of an OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    fn parse_in_chunks(input: &[u8], size: usize) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for chunk in input.chunks(size) {
            out.extend(p.push(chunk));
        }
        out.extend(p.finish());
        out
    }

    #[test]
    fn events_survive_any_split() {
        let input = "\u{feff}: comment\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\nevent: ping\rdata: x\r\rdata: line1\ndata: line2\nid: 7\nretry: 10\n\ndata:nospace\n\n";
        let expected = vec![
            ev(Some("message_start"), "{\"a\":1}"),
            ev(Some("ping"), "x"),
            ev(None, "line1\nline2"),
            ev(None, "nospace"),
        ];
        for size in 1..=input.len() {
            assert_eq!(
                parse_in_chunks(input.as_bytes(), size),
                expected,
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_name_resets() {
        let out = parse_in_chunks(b"event: a\n\ndata: b\n\n", 3);
        assert_eq!(out, vec![ev(None, "b")]);
    }

    #[test]
    fn finish_flushes_unterminated_event() {
        let out = parse_in_chunks(b"data: tail", 4);
        assert_eq!(out, vec![ev(None, "tail")]);
        let out = parse_in_chunks(b"da", 1);
        assert!(out.is_empty());
    }

    #[test]
    fn utf8_split_across_chunks() {
        let input = "data: héllo wörld ✓\n\n".as_bytes();
        for size in 1..input.len() {
            assert_eq!(
                parse_in_chunks(input, size),
                vec![ev(None, "héllo wörld ✓")]
            );
        }
    }

    #[test]
    fn encode_roundtrip() {
        let bytes = encode_data("{\"a\":\n1}");
        assert_eq!(bytes, b"data: {\"a\":\ndata: 1}\n\n");
        assert_eq!(parse_in_chunks(&bytes, 2), vec![ev(None, "{\"a\":\n1}")]);
    }
}
