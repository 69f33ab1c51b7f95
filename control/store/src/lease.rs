//! Leases: time-limited grants that keys attach to.
//!
//! The table here is the deterministic core. Grants, revocations and attachments are part of
//! the replicated state (they go through Raft and every member applies them identically);
//! *deadlines* are not: only the leader tracks them, decides expiry, and proposes the
//! revocation through Raft. A member that becomes leader calls [`LeaseTable::promote`], which
//! gives every lease a full TTL plus an extension (an election timeout), so a failover never
//! mass-expires leases whose keep-alives were going to the old leader.
//!
//! Time is passed in (`now`), so the table is tested without clocks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The smallest TTL granted: shorter requests are raised to it (etcd derives its minimum from
/// the election timeout the same way, so a lease survives one leader election).
pub const MIN_TTL_SECS: i64 = 5;

/// What can go wrong with a lease request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No lease with this id.
    #[error("etcdserver: requested lease not found")]
    NotFound(i64),
    /// A lease with this id exists already.
    #[error("etcdserver: lease already exists")]
    Exists(i64),
    /// A TTL must be positive.
    #[error("etcdserver: lease TTL must be positive, got {0}")]
    BadTtl(i64),
}

#[derive(Debug, Clone)]
struct Entry {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
    /// When the lease expires; only meaningful on the leader.
    deadline: Option<Instant>,
}

/// What [`LeaseTable::time_to_live`] reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseStatus {
    /// The lease id.
    pub id: i64,
    /// The TTL it was granted.
    pub granted_ttl: i64,
    /// Seconds left (rounded up), or -1 where this member does not track deadlines.
    pub remaining: i64,
    /// The keys attached.
    pub keys: Vec<Vec<u8>>,
}

/// Every lease, its keys, and (on the leader) its deadline.
#[derive(Debug, Default, Clone)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Entry>,
    leader: bool,
}

impl LeaseTable {
    /// An empty table on a follower.
    pub fn new() -> LeaseTable {
        LeaseTable::default()
    }

    /// Grants lease `id` with `ttl` seconds (raised to [`MIN_TTL_SECS`]); returns the TTL
    /// granted. Choosing `id` (0 means "pick one") happens before the request is replicated,
    /// so that every member applies the same id.
    pub fn grant(&mut self, id: i64, ttl: i64, now: Instant) -> Result<i64, LeaseError> {
        if ttl <= 0 {
            return Err(LeaseError::BadTtl(ttl));
        }
        if self.leases.contains_key(&id) {
            return Err(LeaseError::Exists(id));
        }
        let ttl = ttl.max(MIN_TTL_SECS);
        let deadline = self.leader.then(|| now + secs(ttl));
        self.leases.insert(
            id,
            Entry {
                ttl,
                keys: BTreeSet::new(),
                deadline,
            },
        );
        Ok(ttl)
    }

    /// An id no lease has, for a grant that asked for id 0.
    pub fn free_id(&self, candidate: i64) -> i64 {
        let mut id = candidate.max(1);
        while self.leases.contains_key(&id) {
            id = id.checked_add(1).unwrap_or(1);
        }
        id
    }

    /// Removes lease `id`; returns the keys attached to it, which the caller deletes in the same
    /// transaction (watchers see a DELETE for each).
    pub fn revoke(&mut self, id: i64) -> Result<Vec<Vec<u8>>, LeaseError> {
        self.leases
            .remove(&id)
            .map(|e| e.keys.into_iter().collect())
            .ok_or(LeaseError::NotFound(id))
    }

    /// Whether lease `id` exists (a put naming an unknown lease is refused).
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Attaches `key` to lease `id` (and detaches it from `previous`, its former lease).
    pub fn attach(&mut self, id: i64, key: &[u8], previous: i64) -> Result<(), LeaseError> {
        if id != 0 && !self.leases.contains_key(&id) {
            return Err(LeaseError::NotFound(id));
        }
        if previous != 0 && previous != id {
            self.detach(previous, key);
        }
        if let Some(e) = self.leases.get_mut(&id) {
            e.keys.insert(key.to_vec());
        }
        Ok(())
    }

    /// Detaches `key` from lease `id` (the key was deleted or moved).
    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(e) = self.leases.get_mut(&id) {
            e.keys.remove(key);
        }
    }

    /// Renews lease `id` (leader only); returns its TTL.
    pub fn keep_alive(&mut self, id: i64, now: Instant) -> Result<i64, LeaseError> {
        let leader = self.leader;
        let e = self.leases.get_mut(&id).ok_or(LeaseError::NotFound(id))?;
        if leader {
            e.deadline = Some(now + secs(e.ttl));
        }
        Ok(e.ttl)
    }

    /// The state of lease `id`.
    pub fn time_to_live(&self, id: i64, now: Instant) -> Result<LeaseStatus, LeaseError> {
        let e = self.leases.get(&id).ok_or(LeaseError::NotFound(id))?;
        let remaining = match e.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(now);
                left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0)
            }
            None => -1,
        };
        Ok(LeaseStatus {
            id,
            granted_ttl: e.ttl,
            remaining,
            keys: e.keys.iter().cloned().collect(),
        })
    }

    /// Every lease id, in order.
    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// This member became leader: start tracking deadlines, giving every lease its full TTL
    /// plus `extend`, so that clients have time to find the new leader.
    pub fn promote(&mut self, now: Instant, extend: Duration) {
        self.leader = true;
        for e in self.leases.values_mut() {
            e.deadline = Some(now + secs(e.ttl) + extend);
        }
    }

    /// This member is no longer leader: deadlines are someone else's business.
    pub fn demote(&mut self) {
        self.leader = false;
        for e in self.leases.values_mut() {
            e.deadline = None;
        }
    }

    /// Leases whose deadline has passed (leader only; empty on followers). The leader proposes
    /// their revocation through Raft.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        self.leases
            .iter()
            .filter(|(_, e)| e.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect()
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_keepalive_and_expiry_on_the_leader() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new();
        t.promote(t0, Duration::ZERO);
        assert_eq!(t.grant(7, 10, t0), Ok(10));
        assert_eq!(t.grant(7, 10, t0), Err(LeaseError::Exists(7)));
        assert_eq!(t.grant(8, 1, t0), Ok(MIN_TTL_SECS), "short TTLs are raised");
        assert_eq!(t.grant(9, 0, t0), Err(LeaseError::BadTtl(0)));
        assert_eq!(t.time_to_live(7, t0 + secs(4)).unwrap().remaining, 6);
        assert_eq!(t.expired(t0 + secs(6)), [8]);
        t.keep_alive(7, t0 + secs(9)).unwrap();
        assert!(!t.expired(t0 + secs(12)).contains(&7));
        assert_eq!(t.expired(t0 + secs(19)), [7, 8]);
        assert_eq!(t.keep_alive(99, t0), Err(LeaseError::NotFound(99)));
    }

    #[test]
    fn revoking_returns_the_attached_keys() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new();
        t.grant(1, 10, t0).unwrap();
        t.grant(2, 10, t0).unwrap();
        t.attach(1, b"a", 0).unwrap();
        t.attach(1, b"b", 0).unwrap();
        // Re-putting "b" with lease 2 moves it.
        t.attach(2, b"b", 1).unwrap();
        assert_eq!(t.attach(3, b"c", 0), Err(LeaseError::NotFound(3)));
        assert_eq!(t.revoke(1).unwrap(), [b"a".to_vec()]);
        assert_eq!(t.revoke(1), Err(LeaseError::NotFound(1)));
        assert_eq!(t.time_to_live(2, t0).unwrap().keys, [b"b".to_vec()]);
    }

    #[test]
    fn followers_never_expire_and_a_new_leader_extends_every_lease() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new();
        t.grant(1, 5, t0).unwrap();
        assert!(
            t.expired(t0 + secs(3600)).is_empty(),
            "followers do not decide"
        );
        assert_eq!(t.time_to_live(1, t0).unwrap().remaining, -1);
        // Failover an hour later: the lease gets a full TTL plus the election timeout.
        let later = t0 + secs(3600);
        t.promote(later, Duration::from_secs(2));
        assert!(t.expired(later + secs(6)).is_empty());
        assert_eq!(t.expired(later + secs(7)), [1]);
        t.demote();
        assert!(t.expired(later + secs(100)).is_empty());
    }

    #[test]
    fn free_ids_skip_taken_ones() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new();
        t.grant(5, 10, t0).unwrap();
        t.grant(6, 10, t0).unwrap();
        assert_eq!(t.free_id(5), 7);
        assert_eq!(t.free_id(0), 1);
    }
}
