//! The pod scheduler.
//!
//! Shaped like the Kubernetes scheduler framework: one small trait per extension point, a
//! closed set of status codes with a documented requeue meaning, plugins registered by name.
//! [`framework`] (statuses, the Filter extension point, the registry), [`plugins`]
//! (NodeUnschedulable, NodeName, TaintToleration, NodeAffinity, NodeResourcesFit with
//! LeastAllocated scoring), [`resources`] (quantities) and [`scheduler`] (the loop: queue with
//! backoff, assume-cache, binding, FailedScheduling, under fenced leader election). The other
//! extension points and plugins (spreading, inter-pod affinity, preemption) are to come.

#![forbid(unsafe_code)]

pub mod framework;
pub mod plugins;
pub mod resources;
pub mod scheduler;
