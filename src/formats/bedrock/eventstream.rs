//! A decoder for the AWS event-stream framing (`application/vnd.amazon.eventstream`), which
//! Bedrock's ConverseStream answers in.
//!
//! One message on the wire:
//!
//! ```text
//! total length (u32 BE) │ headers length (u32 BE) │ prelude CRC32 (of the 8 bytes before)
//! headers: { name length (u8), name, type (u8), value } …
//! payload (total − headers − 16 bytes)
//! message CRC32 (of everything before it)
//! ```
//!
//! [`Decoder::push`] takes bytes as they arrive, in any split, and returns every message
//! completed by them. A CRC mismatch or an impossible length is an error, after which the
//! decoder yields nothing more (the stream cannot be resynchronised).

/// Largest message accepted (AWS limits event-stream messages to 16 MiB).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

const PRELUDE: usize = 12;

/// A header value. Only strings matter to Bedrock; the other types are decoded to be skipped
/// correctly and kept for completeness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Types 0 and 1.
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Int16(i16),
    /// Type 4.
    Int32(i32),
    /// Type 5.
    Int64(i64),
    /// Type 6.
    Bytes(Vec<u8>),
    /// Type 7.
    String(String),
    /// Type 8: milliseconds since the epoch.
    Timestamp(i64),
    /// Type 9.
    Uuid([u8; 16]),
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Headers in wire order.
    pub headers: Vec<(String, HeaderValue)>,
    /// The payload bytes (JSON for Bedrock).
    pub payload: Vec<u8>,
}

impl Message {
    /// A string header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Why a stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Lengths that cannot be right.
    #[error("event-stream message with an invalid length ({0} bytes)")]
    Length(usize),
    /// A CRC did not match.
    #[error("event-stream {0} checksum mismatch")]
    Checksum(&'static str),
    /// A header could not be read.
    #[error("event-stream header could not be read: {0}")]
    Header(&'static str),
    /// The stream ended inside a message.
    #[error("the event stream ended in the middle of a message")]
    Truncated,
}

/// Incremental decoder.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    failed: bool,
}

impl Decoder {
    /// Feed bytes; returns the messages they complete, or the error that ends the stream.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Message, DecodeError>> {
        let mut out = Vec::new();
        if self.failed {
            return out;
        }
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            let available = &self.buf[start..];
            if available.len() < PRELUDE {
                break;
            }
            let total = be32(&available[0..4]);
            if !(PRELUDE + 4..=MAX_MESSAGE).contains(&total) {
                self.failed = true;
                out.push(Err(DecodeError::Length(total)));
                break;
            }
            if crc32(&available[0..8]) != be32(&available[8..12]) as u32 {
                self.failed = true;
                out.push(Err(DecodeError::Checksum("prelude")));
                break;
            }
            if available.len() < total {
                break;
            }
            match decode(&available[..total]) {
                Ok(message) => out.push(Ok(message)),
                Err(e) => {
                    self.failed = true;
                    out.push(Err(e));
                    break;
                }
            }
            start += total;
        }
        if self.failed {
            self.buf.clear();
        } else {
            self.buf.drain(..start);
        }
        out
    }

    /// The upstream stream ended: an error when it ended inside a message.
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        if self.failed || self.buf.is_empty() {
            Ok(())
        } else {
            self.buf.clear();
            self.failed = true;
            Err(DecodeError::Truncated)
        }
    }
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// Decode one whole message (`bytes.len()` is its total length, prelude CRC checked).
fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let total = bytes.len();
    let headers_len = be32(&bytes[4..8]);
    if headers_len > total - PRELUDE - 4 {
        return Err(DecodeError::Length(headers_len));
    }
    let crc_at = total - 4;
    if crc32(&bytes[..crc_at]) != be32(&bytes[crc_at..]) as u32 {
        return Err(DecodeError::Checksum("message"));
    }
    let headers = decode_headers(&bytes[PRELUDE..PRELUDE + headers_len])?;
    Ok(Message {
        headers,
        payload: bytes[PRELUDE + headers_len..crc_at].to_vec(),
    })
}

fn decode_headers(mut b: &[u8]) -> Result<Vec<(String, HeaderValue)>, DecodeError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
        if b.len() < n {
            return Err(DecodeError::Header("a header runs past the header block"));
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Ok(head)
    }
    fn array<const N: usize>(b: &mut &[u8]) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(take(b, N)?);
        Ok(out)
    }
    let mut headers = Vec::new();
    while !b.is_empty() {
        let name_len = usize::from(take(&mut b, 1)?[0]);
        let name = std::str::from_utf8(take(&mut b, name_len)?)
            .map_err(|_| DecodeError::Header("a header name is not UTF-8"))?
            .to_owned();
        let value = match take(&mut b, 1)?[0] {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(array(&mut b)?)),
            3 => HeaderValue::Int16(i16::from_be_bytes(array(&mut b)?)),
            4 => HeaderValue::Int32(i32::from_be_bytes(array(&mut b)?)),
            5 => HeaderValue::Int64(i64::from_be_bytes(array(&mut b)?)),
            6 => {
                let len = usize::from(u16::from_be_bytes(array(&mut b)?));
                HeaderValue::Bytes(take(&mut b, len)?.to_vec())
            }
            7 => {
                let len = usize::from(u16::from_be_bytes(array(&mut b)?));
                let s = std::str::from_utf8(take(&mut b, len)?)
                    .map_err(|_| DecodeError::Header("a string header is not UTF-8"))?;
                HeaderValue::String(s.to_owned())
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(array(&mut b)?)),
            9 => HeaderValue::Uuid(array(&mut b)?),
            _ => return Err(DecodeError::Header("unknown header value type")),
        };
        headers.push((name, value));
    }
    Ok(headers)
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE 802.3), as the event-stream framing uses.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for b in bytes {
        c = CRC_TABLE[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The AWS event-stream test vector "all_headers" would be ideal; this builds frames with
    /// the documented layout and checks the CRC against the well-known value of "123456789".
    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        for (name, value) in headers {
            h.push(name.len() as u8);
            h.extend_from_slice(name.as_bytes());
            h.push(7);
            h.extend_from_slice(&(value.len() as u16).to_be_bytes());
            h.extend_from_slice(value.as_bytes());
        }
        let total = 16 + h.len() + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let prelude_crc = crc32(&out);
        out.extend_from_slice(&prelude_crc.to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn decodes_in_any_split() {
        let mut bytes = frame(
            &[(":event-type", "messageStart")],
            br#"{"role":"assistant"}"#,
        );
        bytes.extend(frame(&[(":event-type", "messageStop")], b"{}"));
        for size in [1, 3, 13, bytes.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(size) {
                got.extend(d.push(chunk));
            }
            assert!(d.finish().is_ok());
            let got: Vec<Message> = got.into_iter().map(Result::unwrap).collect();
            assert_eq!(got.len(), 2, "{size}");
            assert_eq!(got[0].header(":event-type"), Some("messageStart"));
            assert_eq!(got[0].payload, br#"{"role":"assistant"}"#);
            assert_eq!(got[1].header(":event-type"), Some("messageStop"));
        }
    }

    #[test]
    fn corruption_and_truncation_are_errors() {
        let mut bytes = frame(&[(":event-type", "messageStart")], b"{}");
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        let mut d = Decoder::default();
        assert_eq!(d.push(&bytes), vec![Err(DecodeError::Checksum("message"))]);
        assert!(d.push(&bytes).is_empty(), "nothing after an error");

        let bytes = frame(&[(":event-type", "messageStart")], b"{}");
        let mut d = Decoder::default();
        assert!(d.push(&bytes[..bytes.len() - 1]).is_empty());
        assert_eq!(d.finish(), Err(DecodeError::Truncated));

        let mut d = Decoder::default();
        let mut bad = bytes.clone();
        bad[9] ^= 1;
        assert_eq!(d.push(&bad), vec![Err(DecodeError::Checksum("prelude"))]);
    }
}
