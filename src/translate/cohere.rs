//! Placeholder until this provider's translation lands.

use super::openai::{ChatRequest, ChatResponse, ErrorBody};
use super::sse::SseEvent;
use super::{StreamOut, TranslateError, Translated};

fn todo_err() -> TranslateError {
    TranslateError::Unsupported {
        param: "model".to_owned(),
        reason: "not translated yet".to_owned(),
    }
}

pub fn request(_req: &ChatRequest, _upstream_model: &str) -> Result<Translated, TranslateError> {
    Err(todo_err())
}

pub fn response(_body: &[u8], _client_model: &str) -> Result<ChatResponse, TranslateError> {
    Err(todo_err())
}

#[derive(Debug)]
pub struct StreamTranslator;

impl StreamTranslator {
    pub fn new(_client_model: &str, _include_usage: bool) -> Self {
        StreamTranslator
    }
    pub fn push(&mut self, _event: &SseEvent) -> Vec<StreamOut> {
        Vec::new()
    }
    pub fn finish(&mut self) -> Vec<StreamOut> {
        Vec::new()
    }
}

pub fn error(status: u16, _body: &[u8]) -> (u16, ErrorBody) {
    (status, ErrorBody::new(String::new(), "server_error", None))
}
