//! Rewriting the `model` field of an OpenAI-style SSE stream as it passes, line by line:
//! each complete line is emitted as soon as it arrives, nothing waits for the stream's end.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// Sets `model` in every `data: {json}` line to the provider-qualified ID the client asked
/// for. Lines that are not JSON objects (`data: [DONE]`, comments, `event:`) pass unchanged.
pub struct ModelRewriter {
    model: String,
    pending: BytesMut,
}

impl ModelRewriter {
    /// A rewriter that writes `model` into every chunk.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
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
        let (body, cr) = match body.strip_suffix(b"\r") {
            Some(b) => (b, true),
            None => (body, false),
        };
        if let Some(payload) = body.strip_prefix(b"data:") {
            let payload = payload.strip_prefix(b" ").unwrap_or(payload);
            if payload.first() == Some(&b'{')
                && let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(payload)
                && map.contains_key("model")
            {
                map.insert("model".to_owned(), Value::String(self.model.clone()));
                if let Ok(json) = serde_json::to_vec(&map) {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&json);
                    if cr {
                        out.extend_from_slice(b"\r");
                    }
                    if line.ends_with(b"\n") {
                        out.extend_from_slice(b"\n");
                    }
                    return;
                }
            }
        }
        out.extend_from_slice(line);
    }
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
    fn leaves_comments_and_non_json_alone() {
        let mut r = ModelRewriter::new("m");
        let input = b": keep-alive\r\nevent: x\r\ndata: not json\r\n\r\n";
        assert_eq!(&r.push(input)[..], input);
        assert_eq!(&r.push(b"data: {\"a\":1}")[..], b"");
        assert_eq!(&r.finish()[..], b"data: {\"a\":1}");
    }
}
