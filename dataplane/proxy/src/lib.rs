//! Service routing on a node.
//!
//! The main mode is eBPF socket load balancing: `cgroup/connect4` and friends (C programs in
//! `ebpf/`, loaded with aya) rewrite a connection to a Service's virtual IP into one to a
//! backend pod, using maps this crate keeps in step with Services and EndpointSlices.
//! Userspace and iptables modes are the fallbacks and the benchmark baseline.
//!
//! This first piece is [`maps`]: the Rust mirror of the map layouts in `ebpf/lib/lb4.h` and the
//! translation of a Service's backends into map entries. Loading the programs, syncing the maps
//! from the API and the fallbacks arrive with the eBPF routing issue.

#![deny(unsafe_code)]

pub mod maps;
