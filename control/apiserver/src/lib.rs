//! The Kubernetes REST API over Flotilla's replicated store.
//!
//! This first piece holds the two conventions everything else in the API server builds on:
//! - [`registry`]: where objects live in the store (`/registry/<resource>/<namespace>/<name>`),
//!   and how `resourceVersion` relates to store revisions;
//! - [`status`]: errors as Kubernetes `Status` objects with the `reason` and `code` clients
//!   branch on.
//!
//! The HTTPS server, discovery, OpenAPI, verbs, watch cache, admission and RBAC arrive with the
//! API server issue.

#![forbid(unsafe_code)]

pub mod allocate;
pub mod bootstrap;
pub mod defaults;
mod fuzz;
pub mod http;
pub mod objects;
pub mod openapi;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod resources;
pub mod selectors;
pub mod smp;
pub mod status;
pub mod storage;
pub mod table;
pub mod tls;
pub mod tokens;
pub mod validation;
