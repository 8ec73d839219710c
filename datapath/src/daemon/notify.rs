//! systemd's notification protocol (`sd_notify(3)`) on `$NOTIFY_SOCKET`, when it is set:
//! `READY=1` once subnet.env is written, `WATCHDOG=1` from the event loop while it runs,
//! `STOPPING=1` when a clean stop begins.
//!
//! The watchdog pings come from the node's event loop itself (see `driver`), not from a
//! task of their own, so that a loop that hangs stops them and systemd restarts us.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Tells systemd we are ready.
pub fn ready() {
    if notify("READY=1") {
        tracing::info!("notified systemd: READY=1");
    }
}

/// Tells systemd the event loop is alive.
pub fn watchdog() {
    if notify("WATCHDOG=1") {
        tracing::trace!("notified systemd: WATCHDOG=1");
    }
}

/// Tells systemd a clean stop has begun.
pub fn stopping() {
    if notify("STOPPING=1") {
        tracing::info!("notified systemd: STOPPING=1");
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
/// advises, when systemd set it for this process (`$WATCHDOG_PID` unset or our PID).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] on given values; an unparsable or zero value means no watchdog.
fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        // The variables were meant for another process (our parent, say): not for us.
        if pid.trim().parse::<u32>().ok() != Some(our_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Sends one state line to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
/// namespace). Returns whether it was sent; a failure is logged, never fatal.
fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let result = (|| -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, state, "cannot notify systemd");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec_for_our_pid_only() {
        let half = Some(Duration::from_millis(100));
        assert_eq!(watchdog_interval_from(Some("200000"), None, 7), half);
        assert_eq!(watchdog_interval_from(Some("200000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval_from(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("200000"), Some("x"), 7), None);
        assert_eq!(watchdog_interval_from(None, Some("7"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
    }
}
