//! Subnet arithmetic: the space of subnets one network is carved into.
//!
//! A [`SubnetSpace`] numbers the `SubnetLen`-sized subnets of a network by index, so that
//! the allocator can reason about "the i-th subnet" with integer math for IPv4 and IPv6
//! alike. CIDR parsing and containment come from the `ipnet` crate.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The subnets of `network` of length `subnet_len` whose index lies in
/// `[min_index, max_index]` -- flannel's `[SubnetMin, SubnetMax]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetSpace {
    network: IpNet,
    subnet_len: u8,
    min_index: u128,
    max_index: u128,
}

fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl SubnetSpace {
    /// The space of `subnet_len` subnets of `network` from `min` to `max` (both subnet
    /// addresses inside `network`). Returns `None` when the lengths or bounds are
    /// inconsistent; the config module validates and reports those cases by field.
    pub fn new(network: IpNet, subnet_len: u8, min: IpAddr, max: IpAddr) -> Option<Self> {
        let network = network.trunc();
        if subnet_len < network.prefix_len() || subnet_len > network.max_prefix_len() {
            return None;
        }
        let mut space = SubnetSpace {
            network,
            subnet_len,
            min_index: 0,
            max_index: 0,
        };
        space.min_index = space.index_of_addr(min)?;
        space.max_index = space.index_of_addr(max)?;
        (space.min_index <= space.max_index).then_some(space)
    }

    /// The whole overlay network.
    pub fn network(&self) -> IpNet {
        self.network
    }

    /// The prefix length of every subnet in the space.
    pub fn subnet_len(&self) -> u8 {
        self.subnet_len
    }

    fn shift(&self) -> u32 {
        u32::from(self.network.max_prefix_len() - self.subnet_len)
    }

    /// The number of subnets in the whole network (ignoring min and max).
    pub fn total_in_network(&self) -> u128 {
        let bits = u32::from(self.subnet_len - self.network.prefix_len());
        1u128.checked_shl(bits).unwrap_or(u128::MAX)
    }

    /// The index of the first allocatable subnet.
    pub fn min_index(&self) -> u128 {
        self.min_index
    }

    /// The index of the last allocatable subnet.
    pub fn max_index(&self) -> u128 {
        self.max_index
    }

    /// How many subnets lie in `[min, max]`.
    pub fn len(&self) -> u128 {
        (self.max_index - self.min_index).saturating_add(1)
    }

    /// Never true: a space holds at least one subnet. Here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The first allocatable subnet.
    pub fn min(&self) -> IpNet {
        self.subnet_at(self.min_index)
    }

    /// The last allocatable subnet.
    pub fn max(&self) -> IpNet {
        self.subnet_at(self.max_index)
    }

    /// The subnet with index `index` in the network (0 is the network's first subnet).
    /// Indices beyond the network wrap; callers pass indices from this space.
    pub fn subnet_at(&self, index: u128) -> IpNet {
        let base = addr_bits(self.network.network());
        let offset = index.checked_shl(self.shift()).unwrap_or(0);
        let bits = base.wrapping_add(offset);
        match self.network {
            IpNet::V4(_) => {
                let addr = std::net::Ipv4Addr::from(bits as u32);
                IpNet::V4(Ipv4Net::new(addr, self.subnet_len).expect("subnet_len <= 32"))
            }
            IpNet::V6(_) => {
                let addr = std::net::Ipv6Addr::from(bits);
                IpNet::V6(Ipv6Net::new(addr, self.subnet_len).expect("subnet_len <= 128"))
            }
        }
    }

    /// The index within the network of the subnet starting at `addr`, if `addr` lies in
    /// the network on a subnet boundary.
    fn index_of_addr(&self, addr: IpAddr) -> Option<u128> {
        if !self.network.contains(&addr) {
            return None;
        }
        let offset = addr_bits(addr) - addr_bits(self.network.network());
        let mask = 1u128.checked_shl(self.shift()).map_or(u128::MAX, |m| m - 1);
        (offset & mask == 0).then(|| offset.checked_shr(self.shift()).unwrap_or(0))
    }

    /// The index within the network of the subnet that contains `addr`, if `addr` lies
    /// in the network: one shift, whatever the number of subnets.
    pub fn index_containing(&self, addr: IpAddr) -> Option<u128> {
        if !self.network.contains(&addr) {
            return None;
        }
        let offset = addr_bits(addr) - addr_bits(self.network.network());
        Some(offset.checked_shr(self.shift()).unwrap_or(0))
    }

    /// The index of `subnet` if it is one of this space's allocatable subnets: the right
    /// family and length, on a boundary, within `[min, max]`.
    pub fn index_of(&self, subnet: &IpNet) -> Option<u128> {
        if subnet.prefix_len() != self.subnet_len || subnet.network() != subnet.addr() {
            return None;
        }
        let index = self.index_of_addr(subnet.addr())?;
        (self.min_index..=self.max_index)
            .contains(&index)
            .then_some(index)
    }

    /// Whether `subnet` is one of this space's allocatable subnets.
    pub fn contains(&self, subnet: &IpNet) -> bool {
        self.index_of(subnet).is_some()
    }
}

/// The first host address of a subnet, which flannel gives the node itself
/// (`FLANNEL_SUBNET=10.5.4.1/24`).
pub fn first_host(subnet: &IpNet) -> IpNet {
    let bits = addr_bits(subnet.network()).wrapping_add(1);
    match subnet {
        IpNet::V4(n) => IpNet::V4(
            Ipv4Net::new(std::net::Ipv4Addr::from(bits as u32), n.prefix_len())
                .expect("same prefix length"),
        ),
        IpNet::V6(n) => IpNet::V6(
            Ipv6Net::new(std::net::Ipv6Addr::from(bits), n.prefix_len())
                .expect("same prefix length"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("valid cidr")
    }

    #[test]
    fn indexes_round_trip_v4() {
        let space = SubnetSpace::new(
            net("10.5.0.0/16"),
            24,
            "10.5.1.0".parse().unwrap(),
            "10.5.255.0".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(space.len(), 255);
        assert_eq!(space.min(), net("10.5.1.0/24"));
        assert_eq!(space.max(), net("10.5.255.0/24"));
        assert_eq!(space.index_of(&net("10.5.34.0/24")), Some(34));
        assert_eq!(space.subnet_at(34), net("10.5.34.0/24"));
        assert_eq!(space.index_of(&net("10.5.0.0/24")), None, "below min");
        assert_eq!(space.index_of(&net("10.5.34.0/25")), None, "wrong length");
        assert_eq!(space.index_of(&net("10.6.34.0/24")), None, "outside");
    }

    #[test]
    fn indexes_round_trip_v6() {
        let space = SubnetSpace::new(
            net("fc00::/48"),
            64,
            "fc00:0:0:1::".parse().unwrap(),
            "fc00:0:0:ffff::".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(space.len(), 0xffff);
        assert_eq!(space.subnet_at(7), net("fc00:0:0:7::/64"));
        assert_eq!(space.index_of(&net("fc00:0:0:7::/64")), Some(7));
    }

    #[test]
    fn rejects_unaligned_bounds() {
        assert!(SubnetSpace::new(
            net("10.5.0.0/16"),
            24,
            "10.5.1.1".parse().unwrap(),
            "10.5.255.0".parse().unwrap()
        )
        .is_none());
    }

    #[test]
    fn first_host_is_network_plus_one() {
        assert_eq!(first_host(&net("10.5.4.0/24")), net("10.5.4.1/24"));
        assert_eq!(first_host(&net("fc00::/64")), net("fc00::1/64"));
    }
}
