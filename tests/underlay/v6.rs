//! IPv6 on the underlay and behind the hosts, for the dual-stack tests: every host's
//! `eth0` gets `2001:db8:1::<i>/64` (or `2001:db8:2::<i>/64` on 198.51.100.0/24), the
//! underlay namespace routes between the two, and a container gets the second address
//! of its host's IPv6 subnet. Addresses are added `nodad`, so that none waits out
//! duplicate address detection.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_datapath::netns;

use super::{run, Underlay, PREFIX};

/// Host `i`'s underlay IPv6 address, for its IPv4 one.
pub fn host_ipv6(ip: std::net::Ipv4Addr, i: usize) -> Ipv6Addr {
    let net = if ip.octets()[0] == 192 { 1 } else { 2 };
    Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, i as u16)
}

fn sysctl(ns: &str, what: &str) {
    run("ip", &["netns", "exec", ns, "sysctl", "-qw", what]);
}

impl Underlay {
    /// Gives the underlay and every host an IPv6 address and route (call before
    /// starting the hosts, so that their daemons find it on `eth0`).
    pub fn enable_ipv6(&mut self) {
        let ul = format!("{}ul", self.prefix);
        sysctl(&ul, "net.ipv6.conf.all.forwarding=1");
        for (br, addr) in [("br0", "2001:db8:1::fe/64"), ("br1", "2001:db8:2::fe/64")] {
            run("ip", &["-n", &ul, "addr", "add", addr, "dev", br, "nodad"]);
        }
        for i in 1..=self.hosts.len() {
            let h = &self.hosts[i - 1];
            let ip6 = host_ipv6(h.ip, i);
            let router = if h.ip.octets()[0] == 192 {
                "2001:db8:1::fe"
            } else {
                "2001:db8:2::fe"
            };
            let ns = h.ns.clone();
            sysctl(&ns, "net.ipv6.conf.all.forwarding=1");
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            run(
                "ip",
                &["-n", &ns, "-6", "route", "add", "default", "via", router],
            );
        }
    }

    /// Takes every IPv4 address (and so the IPv4 default route) off every host's `eth0`:
    /// hosts with IPv6 alone, for IPv6-only networks. Their etcd relays listen on
    /// loopback and keep working.
    pub fn drop_ipv4(&mut self) {
        for h in &self.hosts {
            run("ip", &["-n", &h.ns, "-4", "addr", "flush", "dev", "eth0"]);
        }
    }

    /// Host `i`'s IPv6 subnet, from its subnet.env.
    pub fn subnet6(&self, i: usize) -> ipnet::Ipv6Net {
        let text = std::fs::read_to_string(&self.hosts[i - 1].env).unwrap();
        let s: ipnet::Ipv6Net = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
            .unwrap_or_else(|| panic!("h{i}: no FLANNEL_IPV6_SUBNET in\n{text}"))
            .parse()
            .unwrap();
        s.trunc()
    }

    /// Gives host `i`'s container (made by `add_container`) the second address of the
    /// host's IPv6 subnet, the host's end the first, and a default route via it.
    pub fn add_container6(&mut self, i: usize) -> Ipv6Addr {
        let s = self.subnet6(i);
        let base = u128::from(s.network());
        let (gw, ip) = (Ipv6Addr::from(base + 1), Ipv6Addr::from(base + 2));
        let h = self.hosts[i - 1].ns.clone();
        let c = self.hosts[i - 1]
            .container
            .clone()
            .expect("add_container first");
        let len = s.prefix_len();
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
                "nodad",
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
                "nodad",
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &c,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &gw.to_string(),
            ],
        );
        ip
    }

    /// Container `i`'s IPv6 address.
    pub fn container_ip6(&self, i: usize) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.subnet6(i).network()) + 2)
    }

    /// Whether container `from` gets an answer to a ping of `to` (a few tries).
    pub fn ping_ip(&self, from: usize, to: IpAddr) -> bool {
        let ns = self.hosts[from - 1].container.clone().unwrap();
        let ip = to.to_string();
        (0..5).any(|_| {
            Command::new("ip")
                .args(["netns", "exec", &ns, "ping", "-c", "1", "-W", "1", &ip])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        })
    }

    /// Sends `bytes` of a seeded pseudo-random stream over TCP from container `from`
    /// to a listener in container `to` at `to_ip`, and returns (bytes, checksum) as
    /// sent and as received. Every socket operation is bounded by 10 s.
    pub fn tcp_transfer(
        &self,
        from: usize,
        to: usize,
        to_ip: IpAddr,
        bytes: u64,
    ) -> [(u64, u64); 2] {
        let within = Duration::from_secs(10);
        let path = |i: usize| netns::path(self.hosts[i - 1].container.as_ref().unwrap());
        let any = match to_ip {
            IpAddr::V4(_) => "0.0.0.0:0",
            IpAddr::V6(_) => "[::]:0",
        };
        let listener = netns::in_netns(Some(&path(to)), move || TcpListener::bind(any))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let receiver = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(within)).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut sum = Checksum::default();
            loop {
                match conn.read(&mut buf).unwrap() {
                    0 => return sum.done(),
                    n => sum.add(&buf[..n]),
                }
            }
        });
        let addr = SocketAddr::new(to_ip, port);
        let mut conn = netns::in_netns(Some(&path(from)), move || {
            TcpStream::connect_timeout(&addr, within)
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("c{from} cannot connect to {addr}: {e}"));
        conn.set_write_timeout(Some(within)).unwrap();
        let mut sent = Checksum::default();
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ bytes;
        let mut chunk = vec![0u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            for b in chunk.iter_mut() {
                // xorshift64: enough to make reordering or corruption show.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            let n = left.min(chunk.len() as u64) as usize;
            conn.write_all(&chunk[..n]).unwrap();
            sent.add(&chunk[..n]);
            left -= n as u64;
        }
        drop(conn);
        [sent.done(), receiver.join().unwrap()]
    }

    /// A container behind host `i` of an IPv6-only network: the veth pair, then
    /// [`Underlay::add_container6`] alone (no IPv4 address anywhere).
    pub fn add_container_v6_only(&mut self, i: usize) -> Ipv6Addr {
        self.add_veth(i);
        self.add_container6(i)
    }

    /// Host `i`'s IPv6-only lease key, as flannel writes it: the empty IPv4 net, then
    /// its IPv6 subnet (`MakeSubnetKey`, pkg/subnet/subnet.go:62-68).
    pub fn lease_key6(&self, i: usize) -> String {
        let s = self.subnet6(i);
        format!(
            "{PREFIX}/subnets/0.0.0.0-0&{}-{}",
            s.network(),
            s.prefix_len()
        )
    }

    /// Host `i`'s IPv6-only lease key as etcd holds it: the one key under the subnets
    /// prefix ending in `&<its IPv6 subnet>`.
    pub fn lease_key_in6(&self, i: usize, etcd: &weft_stores::testing::Etcd) -> String {
        let s = self.subnet6(i);
        let tail = format!("&{}-{}", s.network(), s.prefix_len());
        let out = etcd.etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            &format!("{PREFIX}/subnets/"),
        ]);
        let keys: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|k| k.ends_with(&tail))
            .map(String::from)
            .collect();
        assert_eq!(keys.len(), 1, "h{i}'s lease in etcd: {keys:?}");
        keys[0].clone()
    }

    /// Host `i`'s lease key as etcd holds it (with its `&<IPv6 subnet>` part when it
    /// has one).
    pub fn lease_key_in(&self, i: usize, etcd: &weft_stores::testing::Etcd) -> String {
        let v4 = self.lease_key(i);
        let out = etcd.etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            &format!("{PREFIX}/subnets/"),
        ]);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find(|k| *k == v4 || k.starts_with(&format!("{v4}&")))
            .unwrap_or_else(|| panic!("no lease of h{i} in etcd"))
            .to_string()
    }
}

impl Underlay {
    /// A metric of host `i`'s daemon (started with `--healthz-ip 127.0.0.1
    /// --healthz-port 9110`), read from its /metrics inside its namespace: the value of
    /// the line starting with `line_start`.
    pub fn metric(&self, i: usize, line_start: &str) -> u64 {
        let ns = netns::path(&self.hosts[i - 1].ns);
        let text = netns::in_netns(Some(&ns), || {
            let mut s = TcpStream::connect(("127.0.0.1", 9110)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text
        })
        .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    }
}

/// An order-sensitive checksum of a byte stream (FNV-1a, 64 bits) and its length.
#[derive(Default)]
struct Checksum {
    len: u64,
    hash: Option<u64>,
}

impl Checksum {
    fn add(&mut self, bytes: &[u8]) {
        let mut h = self.hash.unwrap_or(0xcbf2_9ce4_8422_2325);
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.hash = Some(h);
        self.len += bytes.len() as u64;
    }

    fn done(self) -> (u64, u64) {
        (self.len, self.hash.unwrap_or(0))
    }
}
