//! One configuration path, whatever the source.
//!
//! ```text
//!  files / Kubernetes API ──> Index (apply / delete / reset, no I/O)
//!                               │
//!                               ▼
//!        Compiler::compile(&Index) -> Compiled { proxies, problems }   (no I/O; remembers
//!                               │                each object's last good version)
//!                               ▼
//!            Store::apply: ArcSwap the new Snapshot in (only when a table changed)
//! ```
//!
//! The unit of configuration is the object (contract §5a): a valid object is served in its
//! newest version, an invalid one keeps serving its last good version, one that never was
//! valid is left out, and each is reported. A proxy entry whose provider has no good version
//! answers 503 `provider_not_ready`. Files and Kubernetes behave the same. Handlers load the
//! current [`Snapshot`] once per request.

pub mod budget;
pub mod cloud;
pub mod compile;
pub mod defaults;
pub mod index;
pub mod snapshot;
pub mod store;
pub mod strict;
pub mod virtual_models;

pub use compile::{Compiled, Compiler, Defaults, Problem, compile};
pub use index::{Index, Object, SecretData};
pub use snapshot::{Cloud, NotReady, ProxyTable, Route, Snapshot, Upstream};
pub use store::{ApplyReport, Store};

pub use crate::crd::ObjectKey;
