//! Embeddings on Bedrock through `InvokeModel` (SigV4 like every Bedrock call): Amazon Titan
//! Text Embeddings (one text a call) and Cohere Embed (up to 96 texts a call, Cohere's body).

use serde_json::{Value, json};

use crate::formats::TranslateError;
use crate::formats::openai::embeddings::{Parsed, vector};

/// The embedding model families Bedrock serves through `InvokeModel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `amazon.titan-embed-text-*`: `{inputText}` → `{embedding, inputTextTokenCount}`.
    Titan,
    /// `cohere.embed-*`: Cohere's embed body.
    Cohere,
}

impl Family {
    /// The family of a model ID (inference-profile prefixes such as `us.` allowed).
    pub fn of(model: &str) -> Option<Self> {
        let bare = model.split_once('.').map_or(model, |(head, rest)| {
            if head.len() <= 4 && !head.contains('-') && rest.contains('.') {
                rest
            } else {
                model
            }
        });
        if bare.starts_with("amazon.titan-embed") {
            Some(Family::Titan)
        } else if bare.starts_with("cohere.embed") {
            Some(Family::Cohere)
        } else {
            None
        }
    }

    /// Most texts a call takes.
    pub fn batch(self) -> usize {
        match self {
            Family::Titan => 1,
            Family::Cohere => crate::formats::cohere::embeddings::BATCH,
        }
    }
}

/// The `InvokeModel` path of a model.
pub fn path(model: &str) -> String {
    let id = percent_encoding::utf8_percent_encode(model, percent_encoding::NON_ALPHANUMERIC);
    format!("model/{id}/invoke")
}

/// One call's body.
pub fn request(family: Family, texts: &[String], parsed: &Parsed) -> Value {
    match family {
        Family::Titan => {
            let mut body = json!({"inputText": texts.first().cloned().unwrap_or_default()});
            if let Some(d) = parsed.dimensions {
                body["dimensions"] = json!(d);
            }
            body
        }
        Family::Cohere => json!({
            "texts": texts, "input_type": "search_document", "embedding_types": ["float"],
        }),
    }
}

/// One call's vectors and input tokens.
pub fn response(
    family: Family,
    body: &[u8],
    expected: usize,
) -> Result<(Vec<Vec<f64>>, Option<u64>), TranslateError> {
    match family {
        Family::Titan => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| TranslateError::InvalidUpstream(e.to_string()))?;
            let v = value.get("embedding").and_then(vector).ok_or_else(|| {
                TranslateError::InvalidUpstream("Titan answered no `embedding`".to_owned())
            })?;
            let tokens = value.get("inputTextTokenCount").and_then(Value::as_u64);
            Ok((vec![v], tokens))
        }
        Family::Cohere => crate::formats::cohere::embeddings::response(body, expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert_eq!(
            Family::of("amazon.titan-embed-text-v2:0"),
            Some(Family::Titan)
        );
        assert_eq!(Family::of("us.cohere.embed-v4:0"), Some(Family::Cohere));
        assert_eq!(Family::of("cohere.embed-english-v3"), Some(Family::Cohere));
        assert_eq!(Family::of("anthropic.claude-3"), None);
    }
}
