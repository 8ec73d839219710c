//! Containers behind the hosts, and looking at the hosts: ping between containers, `ip`
//! and `bridge` inside a host's namespace.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::{run, Underlay, PREFIX};

impl Underlay {
    /// A container namespace behind host `i`: a veth pair, the host's end holding the
    /// subnet's first address, the container's the second, its default route via the
    /// host. Returns the container's address.
    pub fn add_container(&mut self, i: usize) -> Ipv4Addr {
        let subnet = self.hosts[i - 1].subnet.expect("start the host first");
        let (h, c) = self.add_veth(i);
        let base = u32::from(subnet.network());
        let (gw, ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let len = subnet.prefix_len();
        run(
            "ip",
            &[
                "-n",
                &h,
                "addr",
                "add",
                &format!("{gw}/{len}"),
                "dev",
                "veth0",
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &c,
                "addr",
                "add",
                &format!("{ip}/{len}"),
                "dev",
                "eth0",
            ],
        );
        run(
            "ip",
            &["-n", &c, "route", "add", "default", "via", &gw.to_string()],
        );
        ip
    }

    /// A container namespace behind host `i` with no address yet: the veth pair
    /// (`veth0` on the host, `eth0` in the container), both ends up. Returns the host's
    /// and the container's namespace names.
    pub fn add_veth(&mut self, i: usize) -> (String, String) {
        let c = self.add_ns(&format!("c{i}"));
        let h = self.hosts[i - 1].ns.clone();
        run(
            "ip",
            &[
                "-n", &h, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns",
                &c,
            ],
        );
        run("ip", &["-n", &h, "link", "set", "veth0", "up"]);
        run("ip", &["-n", &c, "link", "set", "eth0", "up"]);
        self.hosts[i - 1].container = Some(c.clone());
        (h, c)
    }

    /// A container's address.
    pub fn container_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.hosts[i - 1].subnet.unwrap().network()) + 2)
    }

    /// Whether container `from` gets an answer to a ping of container `to` (a few
    /// tries: the first packets may wait for ARP).
    pub fn ping(&self, from: usize, to: usize) -> bool {
        let ns = self.hosts[from - 1].container.clone().unwrap();
        let ip = self.container_ip(to).to_string();
        (0..5).any(|_| {
            Command::new("ip")
                .args(["netns", "exec", &ns, "ping", "-c", "1", "-W", "1", &ip])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success()
        })
    }

    /// Asserts that every container pings every container on the other hosts in `hosts`.
    pub fn assert_mesh(&self, hosts: &[usize]) {
        for &a in hosts {
            for &b in hosts {
                if a != b {
                    assert!(
                        self.ping(a, b),
                        "c{a} cannot ping c{b} ({})",
                        self.container_ip(b)
                    );
                }
            }
        }
    }

    /// `ip ARGS` inside host `i`'s namespace.
    pub fn ip(&self, i: usize, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.hosts[i - 1].ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `bridge fdb show dev DEV` inside host `i`'s namespace.
    pub fn fdb(&self, i: usize, dev: &str) -> String {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.hosts[i - 1].ns,
                "bridge",
                "fdb",
                "show",
                "dev",
                dev,
            ],
        )
    }

    /// The lease key of host `i`.
    pub fn lease_key(&self, i: usize) -> String {
        let s = self.hosts[i - 1].subnet.unwrap();
        format!("{PREFIX}/subnets/{}-{}", s.network(), s.prefix_len())
    }
}
