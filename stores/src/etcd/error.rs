//! From etcd client errors to [`StoreError`]s a driver can act on.
//!
//! The distinction that matters is whether a request may have taken effect. A request
//! that never reached a member (the connection could not be made) is safe to send again,
//! to another member; anything else that fails transiently is reported as
//! [`StoreError::Unavailable`], and the caller (the allocator) re-reads the store before
//! deciding, because a create that timed out may have happened.

use etcd_client::Error;
use tonic::Code;
use weft_core::store::StoreError;

/// The messages of `e` and of every error it wraps, joined: tonic hides the useful part
/// (a refused connection, a certificate problem) a few sources down.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn status_of(e: &Error) -> Option<&tonic::Status> {
    match e {
        Error::GRpcStatus(s) => Some(s),
        _ => None,
    }
}

/// Whether the text of an error says that TLS failed: a certificate the other side did
/// not accept, or no TLS where TLS was expected. Such errors do not go away by retrying.
fn is_tls_failure(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "handshake",
        "fatal alert",
        "invalid peer",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// Whether the request failed before it left this host: no connection to the member
/// could be made. Such a request had no effect and may be sent again.
pub(crate) fn never_sent(e: &Error) -> bool {
    let text = describe(e);
    let connect = text.contains("tcp connect error") || text.contains("Connection refused");
    match e {
        Error::GRpcStatus(s) => s.code() == Code::Unavailable && connect && !is_tls_failure(&text),
        Error::TransportError(_) => connect && !is_tls_failure(&text),
        _ => false,
    }
}

/// The etcd server's message for a lease ID that is already in use.
pub(crate) fn is_lease_exists(e: &Error) -> bool {
    status_of(e).is_some_and(|s| s.message().contains("lease already exists"))
}

/// The etcd server's message for a lease that is gone.
pub(crate) fn is_lease_not_found(e: &Error) -> bool {
    status_of(e).is_some_and(|s| s.message().contains("requested lease not found"))
}

/// Maps an error of the operation `what` (e.g. "create /coreos.com/network/subnets/..").
pub(crate) fn map_error(what: &str, e: &Error) -> StoreError {
    let text = describe(e);
    if is_tls_failure(&text) {
        return StoreError::Backend(format!(
            "{what}: TLS with etcd failed (check --etcd-cafile, --etcd-certfile and \
             --etcd-keyfile): {text}"
        ));
    }
    match e {
        Error::GRpcStatus(s) => match s.code() {
            Code::Unavailable
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::DeadlineExceeded => StoreError::Unavailable(format!("{what}: {text}")),
            _ if is_auth_failure(s) => StoreError::Backend(format!(
                "{what}: etcd refused the credentials (check --etcd-username and \
                 --etcd-password): {}",
                s.message()
            )),
            Code::PermissionDenied => StoreError::Backend(format!(
                "{what}: the etcd user may not do this: {}",
                s.message()
            )),
            Code::InvalidArgument | Code::OutOfRange => {
                StoreError::Invalid(format!("{what}: {}", s.message()))
            }
            // etcd reports a lost leader or a slow apply as Unknown with these messages.
            _ if is_transient_message(s.message()) => {
                StoreError::Unavailable(format!("{what}: {text}"))
            }
            _ => StoreError::Backend(format!("{what}: {text}")),
        },
        Error::TransportError(_) | Error::IoError(_) | Error::WatchError(_) => {
            StoreError::Unavailable(format!("{what}: {text}"))
        }
        Error::InvalidArgs(_) | Error::InvalidUri(_) => {
            StoreError::Invalid(format!("{what}: {text}"))
        }
        _ => StoreError::Backend(format!("{what}: {text}")),
    }
}

/// etcd answers a wrong user or password with InvalidArgument, a missing or stale
/// token with Unauthenticated.
fn is_auth_failure(s: &tonic::Status) -> bool {
    s.code() == Code::Unauthenticated
        || s.message().contains("authentication failed")
        || s.message().contains("invalid user")
}

fn is_transient_message(message: &str) -> bool {
    [
        "no leader",
        "leader changed",
        "request timed out",
        "timed out",
        "too many requests",
        "server stopped",
        "not capable",
        // tonic's status for a connection that broke under a request (a member killed
        // mid-call): the request may or may not have been applied, as after a timeout.
        "transport error",
    ]
    .iter()
    .any(|m| message.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_a_driver_can_act_on() {
        let status = |code, msg: &str| Error::GRpcStatus(tonic::Status::new(code, msg));
        let e = map_error("get /k", &status(Code::Unavailable, "tcp connect error"));
        assert!(e.is_transient(), "{e}");
        let e = map_error(
            "get /k",
            &status(Code::Unknown, "etcdserver: leader changed"),
        );
        assert!(e.is_transient(), "{e}");
        // A member killed under the call (seen in CI: a broken pipe).
        let e = map_error("put /k", &status(Code::Unknown, "transport error"));
        assert!(e.is_transient(), "{e}");
        let e = map_error(
            "get /k",
            &status(Code::InvalidArgument, "etcdserver: key is not provided"),
        );
        assert!(matches!(e, StoreError::Invalid(_)), "{e}");
        let e = map_error(
            "connect",
            &status(
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
        );
        assert!(
            matches!(&e, StoreError::Backend(m) if m.contains("--etcd-password")),
            "{e}"
        );
        let e = map_error("get /k", &status(Code::Unauthenticated, "bad token"));
        assert!(
            matches!(&e, StoreError::Backend(m) if m.contains("--etcd-password")),
            "{e}"
        );
        let e = map_error(
            "get /k",
            &status(Code::Unavailable, "invalid peer certificate: UnknownIssuer"),
        );
        assert!(
            matches!(&e, StoreError::Backend(m) if m.contains("--etcd-cafile")),
            "{e}"
        );
        assert!(!e.is_transient());
        assert!(never_sent(&status(
            Code::Unavailable,
            "tcp connect error: Connection refused"
        )));
        assert!(!never_sent(&status(Code::Unavailable, "connection reset")));
    }
}
