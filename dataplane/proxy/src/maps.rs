//! The BPF map layouts of `ebpf/lib/lb4.h`, and how a Service becomes map entries.

use std::net::Ipv4Addr;

/// Mirrors `LB4_MAPS_VERSION`: part of the pin path, so a changed layout never reuses old pins.
pub const LB4_MAPS_VERSION: u32 = 1;

/// IANA protocol numbers, as in `lb4_key.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Protocol {
    /// TCP.
    Tcp = 6,
    /// UDP.
    Udp = 17,
}

/// `struct lb4_key`: (VIP, port, protocol, slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct Lb4Key {
    /// Service address, network byte order.
    pub address: u32,
    /// Service port, network byte order.
    pub dport: u16,
    /// Protocol number.
    pub proto: u8,
    /// Always 0.
    pub pad: u8,
    /// 0 for the service entry, 1..=count for its backends.
    pub slot: u16,
    /// Always 0.
    pub pad2: u16,
}

/// `struct lb4_service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Lb4Service {
    /// For slot > 0: the backend id at this slot.
    pub backend_id: u32,
    /// For slot 0: the number of backends.
    pub count: u16,
    /// Reserved.
    pub flags: u16,
}

/// `struct lb4_backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Lb4Backend {
    /// Backend address, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Protocol number.
    pub proto: u8,
    /// Always 0.
    pub pad: u8,
}

// SAFETY: the three structs are repr(C), contain only integers, and have no padding the
// compiler could leave uninitialised beyond the explicit pad fields (checked by the size test
// below), so any bit pattern is valid and they may be copied to and from BPF maps as bytes.
#[allow(unsafe_code)]
unsafe impl aya::Pod for Lb4Key {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for Lb4Service {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for Lb4Backend {}

impl Lb4Key {
    /// The key of `slot` of the service at `vip:port/proto`.
    pub fn new(vip: Ipv4Addr, port: u16, proto: Protocol, slot: u16) -> Lb4Key {
        Lb4Key {
            address: u32::from(vip).to_be(),
            dport: port.to_be(),
            proto: proto as u8,
            pad: 0,
            slot,
            pad2: 0,
        }
    }
}

/// The `lb4_services` entries for one service port whose backends have ids `backend_ids` (in
/// slot order). A service without backends still gets its slot-0 entry with count 0, so the
/// program can refuse the connection instead of letting it leave for the virtual IP.
pub fn service_entries(
    vip: Ipv4Addr,
    port: u16,
    proto: Protocol,
    backend_ids: &[u32],
) -> Result<Vec<(Lb4Key, Lb4Service)>, String> {
    let count = u16::try_from(backend_ids.len()).map_err(|_| {
        format!(
            "service {vip}:{port} has {} backends; at most {} are supported",
            backend_ids.len(),
            u16::MAX
        )
    })?;
    let mut out = Vec::with_capacity(backend_ids.len() + 1);
    out.push((
        Lb4Key::new(vip, port, proto, 0),
        Lb4Service {
            backend_id: 0,
            count,
            flags: 0,
        },
    ));
    for (i, id) in backend_ids.iter().enumerate() {
        out.push((
            Lb4Key::new(vip, port, proto, i as u16 + 1),
            Lb4Service {
                backend_id: *id,
                count: 0,
                flags: 0,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_header() {
        assert_eq!(std::mem::size_of::<Lb4Key>(), 12);
        assert_eq!(std::mem::size_of::<Lb4Service>(), 8);
        assert_eq!(std::mem::size_of::<Lb4Backend>(), 8);
        let header = include_str!("../../../ebpf/lib/lb4.h");
        assert!(header.contains(&format!("#define LB4_MAPS_VERSION {LB4_MAPS_VERSION}")));
    }

    #[test]
    fn keys_are_in_network_byte_order() {
        let k = Lb4Key::new(Ipv4Addr::new(10, 96, 0, 1), 443, Protocol::Tcp, 0);
        assert_eq!(k.address.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(k.dport.to_ne_bytes(), [0x01, 0xbb]);
    }

    #[test]
    fn a_service_is_a_count_slot_then_one_slot_per_backend() {
        let e = service_entries(Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp, &[7, 9]).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].0.slot, e[0].1.count), (0, 2));
        assert_eq!((e[1].0.slot, e[1].1.backend_id), (1, 7));
        assert_eq!((e[2].0.slot, e[2].1.backend_id), (2, 9));
        let empty = service_entries(Ipv4Addr::new(10, 96, 0, 11), 80, Protocol::Udp, &[]).unwrap();
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].1.count, 0);
    }
}
