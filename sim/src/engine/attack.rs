//! What a scenario attacks the network with: a peer sending packets with inner sources
//! it does not hold, garbage under the subnets prefix, a node whose public IP changes,
//! the network config changed or deleted under running nodes.

use std::net::Ipv4Addr;

use smoltcp::wire::Icmpv4Repr;
use weft_core::config::NetworkConfig;
use weft_core::store::{config_key, DEFAULT_PREFIX};

use super::World;

/// The identifier of a spoofed echo request: no container's ping uses it.
const SPOOF_IDENT: u16 = 0x5bad;

impl World {
    /// Host `from` sends `count` echo requests from its public IP to the host of
    /// `to_addr`, their inner source `source`, as a hostile peer could: its kernel does
    /// not care what it puts inside the UDP payload.
    pub fn spoof(
        &mut self,
        from: usize,
        to: usize,
        to_addr: Ipv4Addr,
        source: Ipv4Addr,
        count: u32,
    ) {
        let (src_ip, dst_ip) = (self.hosts[from].ip, self.hosts[to].ip);
        let (a, b) = (self.hosts[from].name.clone(), self.hosts[to].name.clone());
        self.note_step(format!(
            "{a} sends {count} packets with inner source {source} to {to_addr} on {b}"
        ));
        for seq in 0..count {
            let icmp = Icmpv4Repr::EchoRequest {
                ident: SPOOF_IDENT,
                seq_no: seq as u16,
                data: b"spoofed",
            };
            let packet = crate::light::echo_into(Vec::new(), source, to_addr, &icmp);
            self.send_datagram(src_ip, dst_ip, packet);
        }
    }

    /// Someone writes `value` at `key` under the subnets prefix, with no TTL.
    pub fn put_raw(&mut self, key: &str, value: &str) {
        let full = format!("{}{key}", self.subnets_prefix);
        let text = match self.store_put(&full, value.as_bytes()) {
            Ok(()) => format!("someone writes {full} = {value:?}"),
            Err(e) => format!("someone writes {full}: {e}"),
        };
        self.note_step(text);
    }

    fn store_put(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        if self.store_down {
            return Err("the store is down".into());
        }
        self.store
            .put(key, value)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Host `h`, down, gets the public IP `ip`. A running host cannot: its node's
    /// config names its address, as a daemon's does until it restarts.
    pub fn change_ip(&mut self, h: usize, ip: Ipv4Addr) {
        let name = self.hosts[h].name.clone();
        if self.hosts[h].is_up() {
            self.fail(format!(
                "change_ip {name}: it runs (stop or crash it first)"
            ));
            return;
        }
        let old = self.hosts[h].ip;
        if self.by_ip.get(&old) == Some(&h) {
            self.by_ip.remove(&old);
        }
        self.hosts[h].ip = ip;
        self.by_ip.insert(ip, h);
        self.note_step(format!("{name} changes its public IP from {old} to {ip}"));
    }

    /// An operator writes `network` as the config (`json` its text): nodes started from
    /// now on run with it; those waiting for a config start.
    pub fn set_config(&mut self, network: NetworkConfig, json: &str) {
        let key = config_key(DEFAULT_PREFIX);
        let text = match self.store_put(&key, json.as_bytes()) {
            Ok(()) => format!("operator writes the network config {json}"),
            Err(e) => format!("operator writes the network config: {e}"),
        };
        self.note_step(text);
        self.networks.push(network.clone());
        self.cfg.network = network;
        self.config_deleted = false;
        for h in std::mem::take(&mut self.waiting_for_config) {
            self.start_host(h);
        }
    }

    /// An operator deletes the config key: nodes started from now on wait for one.
    pub fn delete_config(&mut self) {
        let key = config_key(DEFAULT_PREFIX);
        let text = if self.store_down {
            format!("operator deletes {key}: the store is down")
        } else {
            match self.store.delete(&key) {
                Ok(_) => {
                    self.config_deleted = true;
                    format!("operator deletes {key}")
                }
                Err(e) => format!("operator deletes {key}: {e}"),
            }
        };
        self.note_step(text);
    }
}
