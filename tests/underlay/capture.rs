//! A capture on the underlay with the real `tcpdump`, an observer independent of weft:
//! it runs in the underlay namespace on one host's bridge port (a bridge's own device
//! does not see the frames it forwards between ports), writes pcap to its stdout, and is
//! bounded by a packet count and by a deadline, after which it is stopped by its PID.
//! The frames are read with `pcap-parser` and their IPv4 and UDP taken apart with
//! smoltcp's wire types; the two Ethernet headers (smoltcp's are behind a feature the
//! workspace leaves off) and the VXLAN header (RFC 7348) are read by hand, so that the
//! test does not check weft's encapsulation with weft's own parser.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use smoltcp::wire::{IpProtocol, Ipv4Packet, UdpPacket};

use super::Underlay;

/// Whether `tcpdump` is installed; panics under CI=true when it is not.
pub fn have_tcpdump(test: &str) -> bool {
    let found = Command::new("tcpdump")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return true;
    }
    let why = format!("{test}: needs tcpdump (Debian's tcpdump; scripts/install-deps)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}: CI=true, so this is a failure"
    );
    eprintln!("\n*** SKIPPED {why} ***\n");
    false
}

/// A running tcpdump; see the module docs. Dropping it kills the process.
pub struct Capture {
    child: Option<Child>,
    deadline: Instant,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<String>>,
}

/// One captured VXLAN datagram, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanFrame {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub udp_dst: u16,
    /// The VXLAN header's flags byte (0x08: the I bit, "VNI valid").
    pub flags: u8,
    pub vni: u32,
    pub inner_src: Ipv4Addr,
    pub inner_dst: Ipv4Addr,
}

impl Underlay {
    /// Starts tcpdump on host `i`'s port of the underlay bridge for BPF `filter`, for at
    /// most `count` packets and at most `patience` (then [`Capture::finish`] stops it at
    /// once); returns once it listens.
    pub fn capture(&self, i: usize, filter: &str, count: u32, patience: Duration) -> Capture {
        let ul = format!("{}ul", self.prefix);
        let port = format!("h{i}");
        // `ip netns exec` execs tcpdump: the child's PID is tcpdump's.
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ul, "tcpdump", "-i", &port, "-n", "-U"])
            .args(["--immediate-mode", "-c", &count.to_string()])
            .args(["-w", "-", filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = out.read_to_end(&mut bytes);
            bytes
        });
        let (ready_tx, ready) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let mut capture = Capture {
            child: Some(child),
            deadline: Instant::now() + patience,
            stdout: Some(stdout),
            stderr: Some(stderr),
        };
        if ready.recv_timeout(Duration::from_secs(10)).is_err() {
            capture.stop();
            let text = capture.stderr.take().unwrap().join().unwrap_or_default();
            panic!("tcpdump on {port} did not start listening within 10 s:\n{text}");
        }
        capture
    }
}

impl Capture {
    /// Gives the last frames a second to arrive (less if tcpdump reaches its count or
    /// its deadline first), stops it by its PID and returns the captured frames
    /// (Ethernet), and tcpdump's stderr.
    pub fn finish(mut self) -> (Vec<Vec<u8>>, String) {
        let until = self.deadline.min(Instant::now() + Duration::from_secs(1));
        let child = self.child.as_mut().unwrap();
        while Instant::now() < until && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop();
        let bytes = self.stdout.take().unwrap().join().unwrap();
        let text = self.stderr.take().unwrap().join().unwrap();
        let pcap = pcap_parser::PcapCapture::from_file(&bytes)
            .unwrap_or_else(|e| panic!("tcpdump wrote no readable pcap ({e:?}):\n{text}"));
        assert_eq!(
            pcap.header.network,
            pcap_parser::Linktype::ETHERNET,
            "{text}"
        );
        let frames = pcap.blocks.iter().map(|b| b.data.to_vec()).collect();
        (frames, text)
    }

    /// SIGTERM (tcpdump flushes and exits), then SIGKILL after 5 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        if child.try_wait().unwrap().is_none() {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes one Ethernet frame apart as IPv4 / UDP / VXLAN / Ethernet / IPv4; says what
/// is not.
pub fn parse_vxlan(frame: &[u8]) -> Result<VxlanFrame, String> {
    let ip = Ipv4Packet::new_checked(ipv4_in_ethernet(frame, "outer")?)
        .map_err(|e| format!("outer ipv4: {e}"))?;
    if !ip.verify_checksum() {
        return Err("outer ipv4: bad header checksum".into());
    }
    if ip.next_header() != IpProtocol::Udp {
        return Err(format!("outer protocol {}", ip.next_header()));
    }
    let udp = UdpPacket::new_checked(ip.payload()).map_err(|e| format!("udp: {e}"))?;
    let vx = udp.payload();
    if vx.len() < 8 {
        return Err(format!(
            "{} bytes of UDP payload, no VXLAN header",
            vx.len()
        ));
    }
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    let inner_ip = Ipv4Packet::new_checked(ipv4_in_ethernet(&vx[8..], "inner")?)
        .map_err(|e| format!("inner ipv4: {e}"))?;
    Ok(VxlanFrame {
        outer_src: ip.src_addr(),
        outer_dst: ip.dst_addr(),
        udp_dst: udp.dst_port(),
        flags: vx[0],
        vni,
        inner_src: inner_ip.src_addr(),
        inner_dst: inner_ip.dst_addr(),
    })
}

/// The payload of an untagged Ethernet II frame carrying IPv4 (ethertype 0x0800).
fn ipv4_in_ethernet<'a>(frame: &'a [u8], which: &str) -> Result<&'a [u8], String> {
    if frame.len() < 14 {
        return Err(format!("{which} ethernet: {} bytes", frame.len()));
    }
    match [frame[12], frame[13]] {
        [0x08, 0x00] => Ok(&frame[14..]),
        t => Err(format!("{which} ethertype {:#06x}", u16::from_be_bytes(t))),
    }
}
