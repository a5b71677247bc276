//! Portcullis: a Kubernetes-native LLM gateway.

pub mod translate;
