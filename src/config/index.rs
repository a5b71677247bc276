//! The in-memory index of every resource the gateway was given. Sources call
//! [`Index::apply`], [`Index::delete`] and [`Index::reset`]; nothing here does I/O. Objects
//! are held behind `Arc`s, so the index is cheap to clone (the Kubernetes source publishes a
//! copy to the status writer after every change) and a configuration of tens of thousands of
//! objects is held once.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use super::ObjectKey;
use crate::crd::{LlmBudget, LlmProvider, LlmProxy};

/// The data of one Secret: key → bytes. Debug output never shows the values.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretData(pub BTreeMap<String, Vec<u8>>);

impl SecretData {
    /// Merge `data` (already decoded from base64) and `stringData` as the API server does:
    /// `stringData` wins on conflicts.
    pub fn from_secret(secret: &Secret) -> Self {
        let mut map: BTreeMap<String, Vec<u8>> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for (k, v) in secret.string_data.iter().flatten() {
            map.insert(k.clone(), v.clone().into_bytes());
        }
        Self(map)
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

/// Any object the index holds.
#[derive(Clone, Debug)]
pub enum Object {
    /// An `LlmProvider` (shared: the file source's document cache, the index and the compile
    /// state hold the same one).
    Provider(Arc<LlmProvider>),
    /// An `LlmProxy` (shared likewise).
    Proxy(Arc<LlmProxy>),
    /// A `v1/Secret`, reduced to its data.
    Secret(ObjectKey, SecretData),
    /// An `LlmBudget` (shared likewise).
    Budget(Arc<LlmBudget>),
}

impl Object {
    /// Kind and key, for messages.
    pub fn describe(&self) -> (&'static str, ObjectKey) {
        match self {
            Object::Provider(p) => ("LlmProvider", ObjectKey::of(&p.metadata)),
            Object::Proxy(p) => ("LlmProxy", ObjectKey::of(&p.metadata)),
            Object::Secret(key, _) => ("Secret", key.clone()),
            Object::Budget(b) => ("LlmBudget", ObjectKey::of(&b.metadata)),
        }
    }
}

/// Kinds the index tracks, for [`Index::delete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `LlmProvider`.
    Provider,
    /// `LlmProxy`.
    Proxy,
    /// `Secret`.
    Secret,
    /// `LlmBudget`.
    Budget,
}

/// Every resource, keyed by namespace and name.
#[derive(Clone, Debug, Default)]
pub struct Index {
    pub(crate) providers: BTreeMap<ObjectKey, Arc<LlmProvider>>,
    pub(crate) proxies: BTreeMap<ObjectKey, Arc<LlmProxy>>,
    pub(crate) secrets: BTreeMap<ObjectKey, Arc<SecretData>>,
    pub(crate) budgets: BTreeMap<ObjectKey, Arc<LlmBudget>>,
}

impl Index {
    /// An index holding exactly these objects (later duplicates replace earlier ones).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut index = Self::default();
        for object in objects {
            index.apply(object);
        }
        index
    }

    /// Add or replace an object.
    pub fn apply(&mut self, object: Object) {
        match object {
            Object::Provider(p) => {
                self.providers.insert(ObjectKey::of(&p.metadata), p);
            }
            Object::Proxy(p) => {
                self.proxies.insert(ObjectKey::of(&p.metadata), p);
            }
            Object::Secret(key, data) => {
                self.secrets.insert(key, Arc::new(data));
            }
            Object::Budget(b) => {
                self.budgets.insert(ObjectKey::of(&b.metadata), b);
            }
        }
    }

    /// Remove an object; removing one that is absent is a no-op.
    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) {
        match kind {
            Kind::Provider => self.providers.remove(key).map(drop),
            Kind::Proxy => self.proxies.remove(key).map(drop),
            Kind::Secret => self.secrets.remove(key).map(drop),
            Kind::Budget => self.budgets.remove(key).map(drop),
        };
    }

    /// Replace every object of one kind (a re-list after a watch restart).
    pub fn reset(&mut self, kind: Kind, objects: impl IntoIterator<Item = Object>) {
        match kind {
            Kind::Provider => self.providers.clear(),
            Kind::Proxy => self.proxies.clear(),
            Kind::Secret => self.secrets.clear(),
            Kind::Budget => self.budgets.clear(),
        }
        for object in objects {
            self.apply(object);
        }
    }

    /// The providers, by key.
    pub fn providers(&self) -> &BTreeMap<ObjectKey, Arc<LlmProvider>> {
        &self.providers
    }

    /// The proxies, by key.
    pub fn proxies(&self) -> &BTreeMap<ObjectKey, Arc<LlmProxy>> {
        &self.proxies
    }

    /// The budgets, by key.
    pub fn budgets(&self) -> &BTreeMap<ObjectKey, Arc<LlmBudget>> {
        &self.budgets
    }

    /// A Secret's data.
    pub fn secret(&self, key: &ObjectKey) -> Option<&SecretData> {
        self.secrets.get(key).map(|s| &**s)
    }

    /// A Secret's data, shared (to tell cheaply whether it changed).
    pub fn secret_shared(&self, key: &ObjectKey) -> Option<&Arc<SecretData>> {
        self.secrets.get(key)
    }
}
