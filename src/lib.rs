//! Portcullis: a Kubernetes-native security gateway between AI applications and LLM providers.
//!
//! ```text
//!  manifests (files | Kubernetes API)
//!        │  source::*
//!        ▼
//!  config::Index ──compile()──▶ config::Snapshot ──ArcSwap──▶ proxy (axum data plane)
//!                                      │                          │  proxy::context: snapshot once,
//!                                      │                          │    identity, body read once
//!                                      ▼                          │  native route ──formats::<f>::endpoints
//!                               discovery (model lists)           │  Model Router ──formats::<f>::chat
//!                                                                 ▼
//!                                                           providers' APIs (credentials injected)
//! ```
//!
//! `formats` and `providers` hold no kube or axum types, so they could become a crate of
//! their own.
pub mod budget;
pub mod config;
pub mod crd;
pub mod credentials;
pub mod discovery;
pub mod formats;
pub mod net;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod source;
pub mod telemetry;
