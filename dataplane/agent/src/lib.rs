//! The node agent: runs the pods bound to its node through CRI (containerd + runc) and CNI,
//! and reports node and pod status.
//!
//! Today: the node's runtime configuration ([`runtime_config`]: the CNI network the node's
//! pods join and the containerd configuration the agent starts containerd with), and
//! simulated nodes ([`simulate`], as kwok does) so the control plane can be exercised without
//! containers, with the resource usage they report ([`metrics`]) and the logs of their
//! simulated lifecycle ([`logs`], in the CRI's file layout), served to the API servers by the
//! agent's HTTPS endpoint ([`endpoint`]), which speaks exec's WebSocket and SPDY ([`spdy`])
//! protocols. The CRI client, pod lifecycle, probes, volumes and
//! real exec arrive with the node agent issue.

#![forbid(unsafe_code)]

pub mod endpoint;
pub mod logs;
pub mod metrics;
pub mod runtime_config;
pub mod simulate;
pub mod spdy;
