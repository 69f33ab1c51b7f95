//! Configuration the agent writes for the container runtime on its node.
//!
//! Facts these encode (see FIELD-NOTES.md): Debian's CNI plugins live in `/usr/lib/cni`;
//! containerd reads the first file of its CNI conf dir; `sandbox_image` must name the pause
//! image exactly as imported; and on these machines no process may lower its `oom_score_adj`
//! below 0, so containerd must be told to clamp it (`restrict_oom_score_adj`).

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::json;

/// Where Debian's `containernetworking-plugins` installs the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The pause image every pod sandbox runs, built locally and imported into containerd.
pub const PAUSE_IMAGE: &str = "docker.io/library/pause:latest";

/// A node's pod network: one /24 of the cluster's pod CIDR, on a Linux bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The bridge device, e.g. `flot0`.
    pub bridge: String,
    /// The node's pod subnet address, e.g. 10.244.1.0.
    pub subnet: Ipv4Addr,
    /// The subnet's prefix length (24 by default).
    pub prefix: u8,
}

impl PodNetwork {
    /// The node's gateway address: the subnet's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    /// The CNI network configuration list (bridge + host-local IPAM + portmap) for containerd's
    /// conf dir.
    pub fn conflist(&self) -> serde_json::Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "flotilla",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{
                            "subnet": format!("{}/{}", self.subnet, self.prefix),
                            "gateway": self.gateway().to_string(),
                        }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        })
    }
}

/// Paths of one containerd instance the agent runs (its own root, state and socket, so it never
/// collides with a system containerd).
#[derive(Debug, Clone)]
pub struct ContainerdPaths<'a> {
    /// Persistent state (images, snapshots).
    pub root: &'a Path,
    /// Runtime state.
    pub state: &'a Path,
    /// The gRPC socket the agent dials for CRI.
    pub socket: &'a Path,
    /// Where the CNI conflist is written.
    pub cni_conf_dir: &'a Path,
}

/// The containerd 1.6 configuration (TOML) for the agent's containerd.
pub fn containerd_config(paths: &ContainerdPaths<'_>) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Nothing may lower oom_score_adj below 0 on these machines; without this runc fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
"#,
        root = paths.root.display(),
        state = paths.state.display(),
        socket = paths.socket.display(),
        pause = PAUSE_IMAGE,
        cni_bin = CNI_BIN_DIR,
        cni_conf = paths.cni_conf_dir.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_gives_the_node_its_subnet_and_gateway() {
        let net = PodNetwork {
            bridge: "flot0".into(),
            subnet: Ipv4Addr::new(10, 244, 3, 0),
            prefix: 24,
        };
        let c = net.conflist();
        let ipam = &c["plugins"][0]["ipam"]["ranges"][0][0];
        assert_eq!(ipam["subnet"], "10.244.3.0/24");
        assert_eq!(ipam["gateway"], "10.244.3.1");
        assert_eq!(c["plugins"][0]["bridge"], "flot0");
    }

    #[test]
    fn containerd_config_clamps_oom_score_and_uses_debian_cni_paths() {
        let cfg = containerd_config(&ContainerdPaths {
            root: Path::new("/var/lib/flotilla/n1/containerd"),
            state: Path::new("/run/flotilla/n1/containerd"),
            socket: Path::new("/run/flotilla/n1/containerd.sock"),
            cni_conf_dir: Path::new("/etc/flotilla/n1/cni"),
        });
        assert!(cfg.contains("restrict_oom_score_adj = true"));
        assert!(cfg.contains("bin_dir = \"/usr/lib/cni\""));
        assert!(cfg.contains("sandbox_image = \"docker.io/library/pause:latest\""));
        assert!(cfg.contains("address = \"/run/flotilla/n1/containerd.sock\""));
    }
}
