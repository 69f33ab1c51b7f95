//! The Kubernetes REST API over Flotilla's replicated store.
//!
//! [`http`] serves every verb over HTTPS ([`tls`]: client certificates and bearer tokens,
//! [`rbac`]); objects live in the store as [`registry`] lays out, through [`storage`]
//! (optimistic concurrency on store revisions); lists and watches are served from [`cache`];
//! errors are Kubernetes `Status` objects ([`status`]).

#![forbid(unsafe_code)]

pub mod allocate;
pub mod bootstrap;
pub mod cache;
pub mod compactor;
pub mod defaults;
pub mod discovery;
mod fuzz;
mod health;
pub mod http;
pub mod kinds;
pub mod managed;
pub mod node_proxy;
pub mod objects;
pub mod openapi;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod resources;
pub mod reviews;
pub mod selectors;
pub mod smp;
pub mod specs;
pub mod status;
pub mod storage;
pub mod table;
pub mod tls;
pub mod tokens;
mod unread;
pub mod validation;
pub mod versions;

/// Locks `m`, also after a panic elsewhere poisoned it (what it guards stays consistent).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
