//! Embeddings on Gemini (AI Studio): `models/{m}:batchEmbedContents`, at most
//! [`BATCH`] texts a request, so longer inputs are split. The answer carries no token counts.

use serde_json::{Value, json};

use crate::formats::TranslateError;
use crate::formats::openai::embeddings::{Parsed, vector};

/// Most requests one `batchEmbedContents` call takes.
pub const BATCH: usize = 100;

/// The path of a model's `batchEmbedContents`.
pub fn path(model: &str) -> String {
    format!("v1beta/models/{model}:batchEmbedContents")
}

/// One batch's body.
pub fn request(model: &str, texts: &[String], parsed: &Parsed) -> Value {
    let requests: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut r =
                json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}});
            if let Some(d) = parsed.dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    json!({"requests": requests})
}

/// One batch's vectors, in order.
pub fn response(body: &[u8], expected: usize) -> Result<Vec<Vec<f64>>, TranslateError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| TranslateError::InvalidUpstream(e.to_string()))?;
    let vectors: Option<Vec<Vec<f64>>> = value
        .get("embeddings")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| e.get("values").and_then(vector))
                .collect()
        })
        .unwrap_or(None);
    match vectors {
        Some(v) if v.len() == expected => Ok(v),
        _ => Err(TranslateError::InvalidUpstream(format!(
            "batchEmbedContents did not answer {expected} embeddings"
        ))),
    }
}
