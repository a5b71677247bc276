//! OpenAI embeddings on the Model Router: the request every target reads ([`Parsed`]), and the
//! `list` of `embedding` objects every target's vectors are answered as ([`answer`]), with
//! `encoding_format: base64` as OpenAI encodes it (little-endian `f32`, base64).
//!
//! OpenAI-family targets get the client's body with `model` rewritten; the other formats'
//! `embeddings` modules build their own requests from [`Parsed`].

use base64::Engine;
use serde_json::{Value, json};

use crate::formats::TranslateError;

/// Most inputs one request may carry (OpenAI's own limit).
pub const MAX_INPUTS: usize = 2048;

/// An embeddings request, as the non-OpenAI targets read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The texts, in order.
    pub inputs: Vec<String>,
    /// `dimensions`, when asked.
    pub dimensions: Option<u64>,
    /// `encoding_format: base64`.
    pub base64: bool,
}

fn invalid(param: &str, reason: impl Into<String>) -> TranslateError {
    TranslateError::Unsupported {
        param: param.to_owned(),
        reason: reason.into(),
    }
}

/// Check the fields every target shares: `encoding_format` and the number of inputs.
pub fn check(body: &Value) -> Result<bool, TranslateError> {
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => return Err(invalid("encoding_format", "use \"float\" or \"base64\"")),
    };
    let count = match body.get("input") {
        Some(Value::String(_)) => 1,
        Some(Value::Array(items)) => items.len(),
        _ => {
            return Err(invalid(
                "input",
                "is required: a string or a list of strings",
            ));
        }
    };
    if count == 0 || count > MAX_INPUTS {
        return Err(invalid(
            "input",
            format!("send between 1 and {MAX_INPUTS} inputs (got {count})"),
        ));
    }
    Ok(base64)
}

/// Read a request for a target that takes text only.
pub fn parse(body: &Value) -> Result<Parsed, TranslateError> {
    let base64 = check(body)?;
    let inputs = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(invalid(
                    "input",
                    "token arrays are only accepted by OpenAI-family providers; send strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    if inputs.iter().any(String::is_empty) {
        return Err(invalid("input", "an input is empty"));
    }
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|d| (1..=65536).contains(d)) {
            Some(d) => Some(d),
            None => return Err(invalid("dimensions", "must be a positive integer")),
        },
    };
    Ok(Parsed {
        inputs,
        dimensions,
        base64,
    })
}

/// A vector as OpenAI's base64 encoding: little-endian `f32`s.
pub fn encode_base64(vector: &[f64]) -> String {
    let bytes: Vec<u8> = vector
        .iter()
        .flat_map(|f| (*f as f32).to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The OpenAI `list` of embeddings.
pub fn answer(vectors: &[Vec<f64>], base64: bool, model: &str, tokens: u64) -> Value {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                Value::String(encode_base64(v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

/// The body an OpenAI-family target gets: the client's, with `model` as the provider names it.
pub fn forward_body(body: &Value, model: &str) -> Value {
    let mut body = body.clone();
    body["model"] = Value::String(model.to_owned());
    body
}

/// An OpenAI-family answer as the client gets it: `model` is what the client asked for.
pub fn forward_answer(mut answer: Value, asked: &str) -> Value {
    if answer.is_object() {
        answer["model"] = Value::String(asked.to_owned());
    }
    answer
}

/// A rough token count for targets that report none: about four characters a token.
pub fn estimate_tokens(inputs: &[String]) -> u64 {
    inputs
        .iter()
        .map(|s| (s.chars().count() as u64).div_ceil(4).max(1))
        .sum()
}

/// Read a list of numbers as a vector (kept as the provider wrote them; base64 narrows to `f32`).
pub fn vector(value: &Value) -> Option<Vec<f64>> {
    value.as_array()?.iter().map(Value::as_f64).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
        let a = answer(&[vec![1.0, 0.5]], true, "m", 3);
        assert_eq!(a["data"][0]["embedding"], "AACAPwAAAD8=");
        assert_eq!(a["usage"]["prompt_tokens"], 3);
    }

    #[test]
    fn inputs_are_checked() {
        assert!(parse(&json!({"input": []})).is_err());
        assert!(parse(&json!({"input": [[1, 2]]})).is_err());
        assert!(parse(&json!({"input": "x", "encoding_format": "int8"})).is_err());
        let p = parse(&json!({"input": ["a", "b"], "dimensions": 8, "encoding_format": "base64"}))
            .unwrap();
        assert_eq!((p.inputs.len(), p.dimensions, p.base64), (2, Some(8), true));
    }
}
