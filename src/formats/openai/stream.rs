//! Rewriting the `model` field of an OpenAI-style SSE stream as it passes, line by line:
//! each complete line is emitted as soon as it arrives, nothing waits for the stream's end.

use bytes::{Bytes, BytesMut};

/// Sets `model` in every `data: {json}` line to the provider-qualified ID the client asked
/// for. Lines that are not JSON objects (`data: [DONE]`, comments, `event:`) pass unchanged.
pub struct ModelRewriter {
    /// The asked ID as a JSON string literal, quotes included.
    encoded: String,
    pending: BytesMut,
}

impl ModelRewriter {
    /// A rewriter that writes `model` into every chunk.
    pub fn new(model: impl Into<String>) -> Self {
        let model: String = model.into();
        Self {
            encoded: serde_json::to_string(&model).unwrap_or_else(|_| "\"\"".to_owned()),
            pending: BytesMut::new(),
        }
    }

    /// Feed bytes as they arrive; returns what can be sent now (every complete line).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Bytes::new();
        };
        let complete = self.pending.split_to(end + 1);
        let mut out = BytesMut::with_capacity(complete.len() + 32);
        for line in complete.split_inclusive(|&b| b == b'\n') {
            self.rewrite_line(line, &mut out);
        }
        out.freeze()
    }

    /// The stream ended: whatever is left (an unterminated last line) goes out as it is.
    pub fn finish(&mut self) -> Bytes {
        let rest = self.pending.split();
        let mut out = BytesMut::new();
        self.rewrite_line(&rest, &mut out);
        out.freeze()
    }

    fn rewrite_line(&self, line: &[u8], out: &mut BytesMut) {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if let Some(payload) = body.strip_prefix(b"data:") {
            let payload = payload.strip_prefix(b" ").unwrap_or(payload);
            if payload.first() == Some(&b'{')
                && let Some((start, end)) = top_level_string(payload, b"model")
            {
                // Splice the asked ID in place of the upstream's: no parse, no re-encode.
                // `payload` is a suffix of `body`, which is a prefix of `line`.
                let offset = body.len() - payload.len();
                out.extend_from_slice(&line[..offset + start]);
                out.extend_from_slice(self.encoded.as_bytes());
                out.extend_from_slice(&line[offset + end..]);
                return;
            }
        }
        out.extend_from_slice(line);
    }
}

/// The byte span (quotes included) of the string value of top-level `key` in a JSON object,
/// found by a single scan that respects strings and nesting; `None` when the key is absent,
/// not at the top level, or its value is not a string.
fn top_level_string(json: &[u8], key: &[u8]) -> Option<(usize, usize)> {
    // The end (exclusive) of the string starting at `at` (a `"`), honouring escapes.
    fn string_end(json: &[u8], at: usize) -> Option<usize> {
        let mut i = at + 1;
        while i < json.len() {
            match json[i] {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
        None
    }
    let skip_ws = |mut i: usize| {
        while i < json.len() && json[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let end = string_end(json, i)?;
                if depth == 1 && &json[i + 1..end - 1] == key {
                    let colon = skip_ws(end);
                    if json.get(colon) == Some(&b':') {
                        let value = skip_ws(colon + 1);
                        if json.get(value) != Some(&b'"') {
                            return None;
                        }
                        return Some((value, string_end(json, value)?));
                    }
                }
                i = end;
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_model_in_each_chunk_as_lines_complete() {
        let mut r = ModelRewriter::new("openai:gpt-x");
        let a = r.push(b"data: {\"id\":\"1\",\"model\":\"gpt-x\",\"choices\":[]}\n\nda");
        assert_eq!(
            &a[..],
            b"data: {\"id\":\"1\",\"model\":\"openai:gpt-x\",\"choices\":[]}\n\n"
        );
        let b = r.push(b"ta: [DONE]\n\n");
        assert_eq!(&b[..], b"data: [DONE]\n\n");
        assert!(r.finish().is_empty());
    }

    #[test]
    fn only_the_top_level_model_string_is_replaced() {
        let mut r = ModelRewriter::new("openai:m\"x");
        let line = br#"data: {"id":"1","choices":[{"delta":{"content":"\"model\": \"no\"","model":"inner"}}],"model" : "up"}"#;
        let out = r.push(&[&line[..], b"\n\n"].concat());
        assert_eq!(
            std::str::from_utf8(&out).unwrap_or_default(),
            "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"\\\"model\\\": \\\"no\\\"\",\"model\":\"inner\"}}],\"model\" : \"openai:m\\\"x\"}\n\n"
        );
        let json = &out[6..out.len() - 2];
        let parsed: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
        assert_eq!(parsed["model"], "openai:m\"x");
        assert_eq!(parsed["choices"][0]["delta"]["model"], "inner");
        // A chunk without a top-level model string passes untouched.
        let plain = b"data: {\"model\":null,\"x\":{\"model\":\"y\"}}\n\n";
        assert_eq!(&r.push(plain)[..], &plain[..]);
    }

    #[test]
    fn leaves_comments_and_non_json_alone() {
        let mut r = ModelRewriter::new("m");
        let input = b": keep-alive\r\nevent: x\r\ndata: not json\r\n\r\n";
        assert_eq!(&r.push(input)[..], input);
        assert_eq!(&r.push(b"data: {\"a\":1}")[..], b"");
        assert_eq!(&r.finish()[..], b"data: {\"a\":1}");
    }
}
