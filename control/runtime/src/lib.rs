//! Process plumbing shared by every long-running Flotilla component.
//!
//! - [`logging`]: `tracing` output, human or JSON, filtered by `RUST_LOG`.
//! - [`tasks`]: named long-lived tasks with one graceful-shutdown path.
//! - [`metrics`]: a Prometheus registry and the `/metrics` + `/healthz` HTTP endpoint.

#![forbid(unsafe_code)]

pub mod logging;
pub mod metrics;
pub mod tasks;

pub use tasks::{Shutdown, Tasks};
