//! The controller manager: level-triggered reconcilers, active on one master at a time.
//!
//! This first piece is the decision core of leader election ([`election`]): given the
//! `coordination.k8s.io/v1` Lease as last read and the clock, what a candidate should write.
//! The loop that reads and writes the Lease through the API (with the fencing token checked by
//! the API server), and the reconcilers, arrive with the controllers issue.

#![forbid(unsafe_code)]

pub mod election;
