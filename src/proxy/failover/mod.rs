//! Failover on the data plane: the pure decisions of `crate::routing` (retry policy, health,
//! the attempt loop) applied to HTTP attempts — settling an answer to its first byte
//! ([`http`]), the Model Router's virtual models and pools ([`router`]) and native-route pools
//! ([`pool`]).

pub mod http;
pub mod pool;
pub mod router;
