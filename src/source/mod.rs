//! Where configuration comes from: manifest files (here) or the Kubernetes API (later).
//! Every source produces [`crate::config::Object`]s for the one index.

pub mod files;
