//! One configuration path, whatever the source.
//!
//! ```text
//!  files / Kubernetes API ──> Index (apply / delete / reset, no I/O)
//!                               │
//!                               ▼
//!                  compile(&Index, &Defaults) -> Compiled { proxies, problems }   (pure)
//!                               │
//!                               ▼
//!            Store::apply: merge with the last good Snapshot, ArcSwap it in
//! ```
//!
//! A proxy whose compilation has problems keeps serving its last good version; everything
//! else takes effect at once. Handlers load the current [`Snapshot`] once per request.

pub mod cloud;
pub mod compile;
pub mod defaults;
pub mod index;
pub mod snapshot;
pub mod store;
pub mod strict;
pub mod virtual_models;

use std::fmt;

pub use compile::{Compiled, Defaults, Problem, compile};
pub use index::{Index, Object, SecretData};
pub use snapshot::{Cloud, ProxyTable, Route, Snapshot, Upstream};
pub use store::{ApplyMode, Store};

/// Namespace and name of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace (`default` when a manifest names none).
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a Kubernetes object (`default` namespace when unset).
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self::new(
            meta.namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            meta.name.clone().unwrap_or_default(),
        )
    }

    /// The proxy ID used in URLs: `{namespace}.{name}`.
    pub fn proxy_id(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
