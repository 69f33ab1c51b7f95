//! The pod scheduler.
//!
//! Shaped like the Kubernetes scheduler framework: one small trait per extension point, a
//! closed set of status codes with a documented requeue meaning, plugins registered by name.
//! This first piece is the framework's core ([`framework`]) and the first two filter plugins
//! ([`plugins`]). The queue, the remaining extension points and plugins, the assume-cache and
//! binding arrive with the scheduler issue.

#![forbid(unsafe_code)]

pub mod framework;
pub mod plugins;
