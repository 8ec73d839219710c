//! Network namespaces: run a closure inside one, create and delete named ones.
//!
//! A thread can enter a namespace with `setns`; sockets, TUN devices and netlink handles
//! created by that thread belong to the namespace for life, and child processes it
//! spawns start there. [`in_netns`] runs a closure on a fresh thread that has entered
//! the namespace, so the caller's own threads never change namespace.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::DatapathError;

/// Where `ip netns` (and rtnetlink) keep named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `f` on a new thread inside the namespace at `ns` (`None`: the current one) and
/// returns its result.
pub fn in_netns<T, F>(ns: Option<&Path>, f: F) -> Result<T, DatapathError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let target = match ns {
        None => None,
        Some(p) => {
            Some(File::open(p).map_err(|e| DatapathError::io(format!("open {}", p.display()), e))?)
        }
    };
    let worker = std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            if let Some(fd) = target {
                setns(fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| DatapathError::io("setns", std::io::Error::from(e)))?;
            }
            Ok(f())
        })
        .map_err(|e| DatapathError::io("spawn a thread", e))?;
    worker
        .join()
        .map_err(|_| DatapathError::NotFound("the namespace thread panicked".into()))?
}

/// Creates the named namespace `name`.
pub async fn add(name: &str) -> Result<(), DatapathError> {
    rtnetlink::NetworkNamespace::add(name.to_string())
        .await
        .map_err(|e| DatapathError::netlink(format!("create namespace {name}"), e))
}

/// Deletes the named namespace `name` (links inside it go with it).
pub async fn del(name: &str) -> Result<(), DatapathError> {
    rtnetlink::NetworkNamespace::del(name.to_string())
        .await
        .map_err(|e| DatapathError::netlink(format!("delete namespace {name}"), e))
}

/// Whether the named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}
