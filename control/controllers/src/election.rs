//! Leader election on a `coordination.k8s.io/v1` Lease: the pure decision.
//!
//! Every candidate periodically reads the Lease and calls [`decide`]. The answer is what to
//! write back (a compare-and-swap on the Lease's `resourceVersion`, so two candidates can never
//! both win the same round) or to wait. Fencing (DESIGN.md, invariant 6, and the controllers
//! issue): the `resourceVersion` at which a candidate acquired the Lease is its token; the API
//! server refuses writes carrying a token older than the Lease's current holder's, so a deposed
//! leader that wakes up late cannot write.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Timing of an election (DESIGN.md defaults: 15 s lease; tests use shorter).
#[derive(Debug, Clone, Copy)]
pub struct ElectionConfig {
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            lease_duration: Duration::from_secs(15),
        }
    }
}

/// What a candidate should do after reading the Lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write this spec: the candidate takes the Lease (it was free, expired, or released).
    Acquire(LeaseSpec),
    /// Write this spec: the candidate holds the Lease and extends it.
    Renew(LeaseSpec),
    /// Someone else holds a valid Lease; look again after this long.
    Wait {
        /// The current holder.
        holder: String,
        /// Time until the holder's Lease expires.
        remaining: Duration,
    },
}

fn expiry(spec: &LeaseSpec, cfg: &ElectionConfig) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let secs = spec
        .lease_duration_seconds
        .map_or(cfg.lease_duration.as_secs() as i64, i64::from);
    renewed.0.checked_add(SignedDuration::from_secs(secs)).ok()
}

/// Decides what candidate `me` should do, given the Lease's spec (`None`: no Lease yet) at time
/// `now`.
pub fn decide(
    current: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    cfg: &ElectionConfig,
) -> Decision {
    let duration_secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let fresh = |transitions: i32| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(spec) = current else {
        return Decision::Acquire(fresh(0));
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    let transitions = spec.lease_transitions.unwrap_or(0);
    if holder == me {
        let mut renewed = spec.clone();
        renewed.renew_time = Some(MicroTime(now));
        renewed.lease_duration_seconds = Some(duration_secs);
        return Decision::Renew(renewed);
    }
    // An empty holder means the previous leader released the Lease on clean shutdown.
    let expired = holder.is_empty() || expiry(spec, cfg).is_none_or(|t| t <= now);
    if expired {
        return Decision::Acquire(fresh(transitions + 1));
    }
    let remaining = expiry(spec, cfg)
        .map(|t| t.duration_since(now))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    Decision::Wait {
        holder: holder.to_string(),
        remaining,
    }
}

/// The spec to write when leader `me` steps down cleanly: no holder, so a successor acquires
/// at once instead of waiting for expiry.
pub fn release(current: &LeaseSpec, me: &str) -> Option<LeaseSpec> {
    if current.holder_identity.as_deref() != Some(me) {
        return None;
    }
    let mut released = current.clone();
    released.holder_identity = None;
    released.renew_time = None;
    released.acquire_time = None;
    Some(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn cfg() -> ElectionConfig {
        ElectionConfig {
            lease_duration: Duration::from_secs(2),
        }
    }

    fn spec_of(d: Decision) -> LeaseSpec {
        match d {
            Decision::Acquire(s) | Decision::Renew(s) => s,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn first_candidate_acquires_a_missing_lease() {
        let s = spec_of(decide(None, "m1", at(0), &cfg()));
        assert_eq!(s.holder_identity.as_deref(), Some("m1"));
        assert_eq!(s.lease_transitions, Some(0));
        assert_eq!(s.lease_duration_seconds, Some(2));
    }

    #[test]
    fn others_wait_while_the_holder_renews_then_take_over_after_expiry() {
        let held = spec_of(decide(None, "m1", at(0), &cfg()));
        match decide(Some(&held), "m2", at(1), &cfg()) {
            Decision::Wait { holder, remaining } => {
                assert_eq!(holder, "m1");
                assert_eq!(remaining, Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        let renewed = spec_of(decide(Some(&held), "m1", at(1), &cfg()));
        assert!(matches!(
            decide(Some(&renewed), "m2", at(2), &cfg()),
            Decision::Wait { .. }
        ));
        // The holder stops renewing: at 3 s after its renewal the Lease is up for grabs.
        let taken = spec_of(decide(Some(&renewed), "m2", at(3), &cfg()));
        assert_eq!(taken.holder_identity.as_deref(), Some("m2"));
        assert_eq!(taken.lease_transitions, Some(1));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let held = spec_of(decide(None, "m1", at(0), &cfg()));
        assert_eq!(release(&held, "m2"), None, "only the holder can release");
        let released = release(&held, "m1").unwrap();
        let taken = spec_of(decide(Some(&released), "m2", at(0), &cfg()));
        assert_eq!(taken.holder_identity.as_deref(), Some("m2"));
    }
}
