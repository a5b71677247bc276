//! Embeddings on Cohere: `v2/embed` with `embedding_types: ["float"]`, at most [`BATCH`] texts
//! a request, so longer inputs are split. Usage from `meta.billed_units.input_tokens`.

use serde_json::{Value, json};

use crate::formats::TranslateError;
use crate::formats::openai::embeddings::{Parsed, vector};

/// Most texts one `v2/embed` call takes.
pub const BATCH: usize = 96;

/// The path of the embed endpoint.
pub const PATH: &str = "v2/embed";

/// One batch's body (`input_type: search_document`: OpenAI's API has no query/document split).
pub fn request(model: &str, texts: &[String], parsed: &Parsed) -> Value {
    let mut body = json!({
        "model": model, "texts": texts, "input_type": "search_document",
        "embedding_types": ["float"],
    });
    if let Some(d) = parsed.dimensions {
        body["output_dimension"] = json!(d);
    }
    body
}

/// One batch's vectors and input tokens (Cohere v2 `embed`, and Cohere Embed on Bedrock, whose
/// `embeddings` is either `{float: [...]}` or a plain list).
pub fn response(
    body: &[u8],
    expected: usize,
) -> Result<(Vec<Vec<f64>>, Option<u64>), TranslateError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| TranslateError::InvalidUpstream(e.to_string()))?;
    let list = value
        .pointer("/embeddings/float")
        .or_else(|| value.get("embeddings").filter(|e| e.is_array()));
    let vectors: Option<Vec<Vec<f64>>> = list
        .and_then(Value::as_array)
        .and_then(|l| l.iter().map(vector).collect());
    let tokens = value
        .pointer("/meta/billed_units/input_tokens")
        .and_then(Value::as_u64);
    match vectors {
        Some(v) if v.len() == expected => Ok((v, tokens)),
        _ => Err(TranslateError::InvalidUpstream(format!(
            "embed did not answer {expected} float embeddings"
        ))),
    }
}
