//! Portcullis: a Kubernetes-native security gateway between AI applications and LLM providers.
pub mod config;
pub mod crd;
pub mod credentials;
pub mod discovery;
pub mod providers;
pub mod proxy;
pub mod server;
pub mod source;
pub mod telemetry;
