//! systemd readiness: `READY=1` on `$NOTIFY_SOCKET`, when it is set.

use std::os::unix::net::UnixDatagram;

/// Tells systemd we are ready; a failure is logged, never fatal.
pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(b"READY=1", &addr)?;
        } else {
            socket.send_to(b"READY=1", &path)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => tracing::info!("notified systemd: READY=1"),
        Err(e) => tracing::warn!(error = %e, "cannot notify systemd"),
    }
}
