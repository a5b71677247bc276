//! Portcullis: a Kubernetes-native security gateway between AI applications and LLM providers.
//!
//! ```text
//!  manifests (files | Kubernetes API)
//!        │  source::*
//!        ▼
//!  config::Index ──compile()──▶ config::Snapshot ──ArcSwap──▶ proxy (axum data plane)
//!                                      │                          │  native pass-through
//!                                      ▼                          │  Model Router ──translate::*──▶ native formats
//!                               discovery (model lists)           ▼
//!                                                           providers' APIs (credentials injected)
//! ```
//!
//! `translate` and `providers` hold no kube or axum types, so they could become a crate of
//! their own.
pub mod budget;
pub mod config;
pub mod crd;
pub mod credentials;
pub mod discovery;
pub mod formats;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod server;
pub mod source;
pub mod telemetry;
