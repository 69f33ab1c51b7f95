//! The scheduling framework: extension-point traits, statuses and the plugin registry.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};

/// The outcome of a plugin at one extension point. The code tells the queue what to do with the
/// pod next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// The plugin is satisfied.
    Success,
    /// The pod does not fit this node; another node may do, and a cluster change may help
    /// (the pod waits in the unschedulable queue until one happens).
    Unschedulable,
    /// The pod does not fit and no cluster change will make this node fit; preemption is
    /// pointless here.
    UnschedulableAndUnresolvable,
    /// The plugin failed; the pod is retried with backoff.
    Error,
}

/// A plugin's verdict with the reason a user sees (in FailedScheduling events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The verdict.
    pub code: Code,
    /// Why, in the words `kubectl describe pod` shows.
    pub reason: String,
}

impl Status {
    /// Success.
    pub fn success() -> Status {
        Status {
            code: Code::Success,
            reason: String::new(),
        }
    }

    /// A verdict with a reason.
    pub fn new(code: Code, reason: impl Into<String>) -> Status {
        Status {
            code,
            reason: reason.into(),
        }
    }

    /// Success if `fits`, else `code` with `reason`: the verdict of a filter built on a pure
    /// `fits()` helper.
    pub fn fits_or(fits: bool, code: Code, reason: &str) -> Status {
        if fits {
            Status::success()
        } else {
            Status::new(code, reason)
        }
    }

    /// Whether the plugin is satisfied.
    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }
}

/// Every plugin has a name, by which profiles choose it.
pub trait Plugin: Send + Sync {
    /// The plugin's registered name, e.g. `NodeUnschedulable`.
    fn name(&self) -> &'static str;
}

/// A node as the scheduler sees it: the Node, and what the pods on it (bound, or assumed
/// bound by this scheduler) request.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The node (shared: the scheduler's cache hands it to every round without copying).
    pub node: std::sync::Arc<Node>,
    /// What the node offers (its `status.allocatable`, parsed once).
    pub allocatable: crate::resources::Resources,
    /// The sum of its pods' requests (pods counted too).
    pub requested: crate::resources::Resources,
}

impl NodeInfo {
    /// A node with nothing on it yet.
    pub fn new(node: Node) -> NodeInfo {
        let allocatable = crate::resources::allocatable(&node);
        NodeInfo {
            node: std::sync::Arc::new(node),
            allocatable,
            requested: Default::default(),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }
}

/// The Filter extension point: can `pod` run on `node`?
pub trait Filter: Plugin {
    /// Decides for one node.
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Status;
}

/// Builds a plugin.
pub type FilterFactory = fn() -> Box<dyn Filter>;

/// Plugins by name. Profiles (configuration) pick from here.
#[derive(Default)]
pub struct Registry {
    filters: BTreeMap<&'static str, FilterFactory>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("filters", &self.filters.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// Registers a filter plugin under `name`.
    pub fn register_filter(&mut self, name: &'static str, factory: FilterFactory) {
        self.filters.insert(name, factory);
    }

    /// Builds the filters `names` lists, in that order. Unknown names are an error that names
    /// the known ones.
    pub fn filters(&self, names: &[&str]) -> Result<Vec<Box<dyn Filter>>, String> {
        names
            .iter()
            .map(|n| {
                self.filters.get(n).map(|f| f()).ok_or_else(|| {
                    format!(
                        "unknown filter plugin {n:?}; known: {}",
                        self.filters.keys().copied().collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect()
    }
}

/// Runs `filters` for `pod` on `node`, stopping at the first that rejects it.
pub fn run_filters(filters: &[Box<dyn Filter>], pod: &Pod, node: &NodeInfo) -> Status {
    for f in filters {
        let s = f.filter(pod, node);
        if !s.is_success() {
            return s;
        }
    }
    Status::success()
}
