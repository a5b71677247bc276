//! The token caches of minted credentials, injected into `compile()` by its caller.
//!
//! A compilation describes a keyless credential (a GCP token source, an Entra scope) without
//! minting anything; when the same credential was already described by the configuration
//! that is serving, the new routing table shares its token cache, so a reload never throws
//! away a valid token. The cache holds weak references only: a credential no table uses any
//! more is dropped with its last table. It is owned by whoever owns the compile state (one per
//! configuration source), never a process-wide registry, so `compile()` stays a function of
//! its arguments.

use std::sync::{Arc, Weak};

use super::azure::EntraToken;
use super::gcp::{GcpSource, GcpToken};

/// Live token sources, shared by compilations of unchanged credentials.
#[derive(Default)]
pub struct CredentialCache {
    gcp: Vec<Weak<GcpToken>>,
    entra: Vec<Weak<EntraToken>>,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache")
            .field("gcp", &self.gcp.len())
            .field("entra", &self.entra.len())
            .finish()
    }
}

fn shared<T>(
    live: &mut Vec<Weak<T>>,
    same: impl Fn(&T) -> bool,
    new: impl FnOnce() -> T,
) -> Arc<T> {
    live.retain(|w| w.strong_count() > 0);
    if let Some(found) = live.iter().filter_map(Weak::upgrade).find(|t| same(t)) {
        return found;
    }
    let token = Arc::new(new());
    live.push(Arc::downgrade(&token));
    token
}

impl CredentialCache {
    /// The live GCP token source for `source`, or a new one. Nothing is minted here.
    pub fn gcp(&mut self, source: GcpSource) -> Arc<GcpToken> {
        shared(
            &mut self.gcp,
            |t| *t.source() == source,
            || GcpToken::new(source.clone()),
        )
    }

    /// The live Entra token cache for `scope`, or a new one. Nothing is minted here.
    pub fn entra(&mut self, scope: &str) -> Arc<EntraToken> {
        shared(
            &mut self.entra,
            |t| t.scope() == scope,
            || EntraToken::new(scope),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_sources_share_one_cache_while_alive() {
        let mut cache = CredentialCache::default();
        let a = cache.gcp(GcpSource::Adc);
        let b = cache.gcp(GcpSource::Adc);
        assert!(Arc::ptr_eq(&a, &b));
        let key = GcpSource::ServiceAccountKey(serde_json::json!({"client_email": "x"}));
        assert!(!Arc::ptr_eq(&a, &cache.gcp(key)));
        let e = cache.entra("https://cognitiveservices.azure.com/.default");
        assert!(Arc::ptr_eq(
            &e,
            &cache.entra("https://cognitiveservices.azure.com/.default")
        ));
        assert!(!Arc::ptr_eq(
            &e,
            &cache.entra("https://ai.azure.com/.default")
        ));
        // Another cache (another source's compile state) shares nothing: no global registry.
        let mut other = CredentialCache::default();
        assert!(!Arc::ptr_eq(&a, &other.gcp(GcpSource::Adc)));
        // Dropped credentials are forgotten.
        drop((a, b));
        let fresh = cache.gcp(GcpSource::Adc);
        assert_eq!(Arc::strong_count(&fresh), 1);
    }
}
