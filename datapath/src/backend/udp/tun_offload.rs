//! `TUNSETOFFLOAD`: the one ioctl the `tun` crate does not expose (it sets
//! `IFF_VNET_HDR`, but not which offloads the device announces), and the one `unsafe`
//! block of the udp backend -- a documented exception to the workspace's
//! `unsafe_code = "deny"`, kept to this module.
//!
//! With TSO announced, the kernel hands the TUN reader TCP super-packets of up to 64 KiB
//! with a virtio header instead of cutting them into MSS-sized packets first; with USO,
//! UDP ones too (Linux 6.2 and later; older kernels refuse the flag with `EINVAL`).
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

// TUNSETOFFLOAD is _IOW('T', 208, unsigned int) in <linux/if_tun.h>.
nix::ioctl_write_int!(tunsetoffload, b'T', 208);

/// `TUN_F_CSUM`: we take packets with a partial checksum.
const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`, `TUN_F_TSO6`: TCP super-packets.
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_USO4`, `TUN_F_USO6`: UDP super-packets.
const TUN_F_USO4: u32 = 0x20;
const TUN_F_USO6: u32 = 0x40;

/// The offloads a TUN device was set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunOffloads {
    /// Checksum, TSO and USO.
    TsoUso,
    /// Checksum and TSO (a kernel without USO).
    Tso,
    /// None: every packet comes whole and with its checksum (still behind a virtio
    /// header).
    None,
}

fn set(fd: &impl AsRawFd, flags: u32) -> nix::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (a bit set of TUN_F_* flags) and
    // reads or writes no memory of ours; `fd` is an open descriptor borrowed for the
    // whole call, and on a descriptor that is no TUN device the kernel returns an error.
    unsafe { tunsetoffload(fd.as_raw_fd(), flags.into()) }.map(|_| ())
}

/// Asks for checksum offload, TSO and USO; falls back to TSO alone, then to nothing, and
/// says so in one log line.
pub(crate) fn enable(fd: &impl AsRawFd, tun: &str) -> TunOffloads {
    let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    if set(fd, tso | TUN_F_USO4 | TUN_F_USO6).is_ok() {
        return TunOffloads::TsoUso;
    }
    match set(fd, tso) {
        Ok(()) => {
            tracing::info!(%tun, "the kernel offers no USO on TUN devices: TSO only");
            TunOffloads::Tso
        }
        Err(e) => {
            tracing::info!(%tun, error = %e, "the kernel refuses TUN offloads: one packet per read");
            TunOffloads::None
        }
    }
}
