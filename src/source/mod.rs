//! Where configuration comes from: manifest files or the Kubernetes API.
//! Every source produces [`crate::config::Object`]s for the one index.

pub mod files;
pub mod kubernetes;
pub mod reload;
