//! weft-datapath: every syscall weft makes to move packets.
//!
//! The core decides (the node's `weft_core::forward::ForwardTable`, published to the
//! backend whenever it changes); this crate does: the [`backend::Backend`] trait and its
//! backends (alloc; udp: the TUN device and the UDP socket of flannel's udp backend),
//! programs addresses, links and routes over netlink (the `rtnetlink` crate, never by
//! running `ip`), picks the external interface, and enters network namespaces so that
//! `weft lab` can run many nodes in one process; [`nft`] keeps weft's own nftables
//! table (masquerade and forward rules).
//!
//! On top of those: [`daemon`], the shell that runs one `weft_core::node::Node` on a
//! host (its store operations through `weft_stores::NodeDriver`, its backend, its
//! `subnet.env`, its published status), and [`lab`], many such nodes in network
//! namespaces on one host, which also plays `weft_sim` scenario files as a second
//! world beside the simulator.

pub mod backend;
pub mod daemon;
pub mod iface;
pub mod lab;
pub mod netlink;
pub mod netns;
pub mod nft;

/// Why a datapath operation failed. Each message names its cause once: the OS's or the
/// kernel's answer is part of the message, not a separate `source()`, so that a chain
/// printed with `{:#}` does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A netlink request failed.
    #[error("netlink: {what}: {cause}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        cause: rtnetlink::Error,
    },
    /// A system call failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The TUN device could not be created.
    #[error(
        "cannot create TUN device {name}: {reason} (is /dev/net/tun present, and are we root?)"
    )]
    Tun {
        /// The device name.
        name: String,
        /// The driver's error.
        reason: String,
    },
    /// Something needed was not found.
    #[error("{0}")]
    NotFound(String),
    /// The config asks for something this datapath cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// Forwarding gave up: a device or socket kept failing (see
    /// [`backend::streak`]).
    #[error("{0}")]
    Failed(String),
    /// The wireguard key file cannot be used.
    #[error(transparent)]
    KeyFile(#[from] backend::wireguard::key::KeyFileError),
}

impl DatapathError {
    pub(crate) fn io(what: impl Into<String>, cause: std::io::Error) -> Self {
        DatapathError::Io {
            what: what.into(),
            cause,
        }
    }

    /// Whether the kernel answered that it does not know the kind of device asked for
    /// (`EOPNOTSUPP`, "Unknown device type": its module is missing).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, DatapathError::Netlink { cause: rtnetlink::Error::NetlinkError(m), .. } if m.raw_code() == -95)
    }

    pub(crate) fn netlink(what: impl Into<String>, cause: rtnetlink::Error) -> Self {
        DatapathError::Netlink {
            what: what.into(),
            cause,
        }
    }
}
