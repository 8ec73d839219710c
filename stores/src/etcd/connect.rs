//! Connecting to etcd: endpoints from the store URL, TLS and credentials from flannel's
//! flags.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use weft_core::store::StoreError;

use super::error::map_error;
use super::EtcdStore;

/// How to reach etcd beyond its endpoints: flannel's `--etcd-*` flags, and a deadline.
#[derive(Clone)]
pub struct EtcdOptions {
    /// `--etcd-cafile`: the CA that signed the members' certificates. Any TLS file turns
    /// TLS on; this one is then required.
    pub ca_file: Option<PathBuf>,
    /// `--etcd-certfile`: this client's certificate, for members that require one.
    pub cert_file: Option<PathBuf>,
    /// `--etcd-keyfile`: its private key.
    pub key_file: Option<PathBuf>,
    /// `--etcd-username`, for etcd's authentication.
    pub username: Option<String>,
    /// `--etcd-password`.
    pub password: Option<String>,
    /// The deadline of every request, and of connecting.
    pub timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl EtcdOptions {
    fn uses_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// The `host:port` endpoints of an `etcd://HOST:PORT[,HOST:PORT...]` URL, or what is wrong
/// with it. HOST is a DNS name, an IPv4 address or a bracketed IPv6 address, PORT a
/// number from 1 to 65535: what is accepted here is what the connection will dial, so a
/// URL such as `etcd://http://192.0.2.1:2379` is refused now rather than failing later
/// as a lookup of the host `http`.
pub fn parse_url(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| "an etcd store URL starts with etcd://".to_string())?;
    let mut endpoints = Vec::new();
    for part in rest.split(',') {
        let part = part.trim().trim_end_matches('/');
        let not_host_port = |why: &str| format!("endpoint {part:?} is not HOST:PORT ({why})");
        if part.contains("://") {
            return Err(not_host_port(
                "no scheme: the URL's own etcd:// is the only one",
            ));
        }
        let (host, port) = part
            .rsplit_once(':')
            .ok_or_else(|| not_host_port("no port"))?;
        let port = parse_port(port).ok_or_else(|| not_host_port("the port is not 1 to 65535"))?;
        check_host(host).map_err(not_host_port)?;
        endpoints.push(format!("{host}:{port}"));
    }
    Ok(endpoints)
}

fn parse_port(text: &str) -> Option<u16> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| text.parse::<u16>().ok())
        .flatten()
        .filter(|p| *p != 0)
}

/// Whether `host` is a bracketed IPv6 address, an IPv4 address or a DNS name.
fn check_host(host: &str) -> Result<(), &'static str> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("an unclosed [")?;
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| "not an IPv6 address between [ and ]");
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err("an IPv6 address goes between [ and ]");
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err("the host is not a DNS name or an IP address");
    }
    Ok(())
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|e| StoreError::Invalid(format!("cannot read {flag} {}: {e}", path.display())))
}

fn tls_options(options: &EtcdOptions) -> Result<TlsOptions, StoreError> {
    let Some(ca) = &options.ca_file else {
        return Err(StoreError::Invalid(
            "TLS to etcd needs --etcd-cafile (the CA that signed the members' certificates)"
                .to_string(),
        ));
    };
    let mut tls =
        TlsOptions::new().ca_certificate(Certificate::from_pem(read("--etcd-cafile", ca)?));
    match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => {
            let cert = read("--etcd-certfile", cert)?;
            let key = read("--etcd-keyfile", key)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Invalid(
                "--etcd-certfile and --etcd-keyfile go together".to_string(),
            ))
        }
    }
    Ok(tls)
}

impl EtcdStore {
    /// Connects to the members at `endpoints` (`host:port`). Without credentials nothing
    /// is sent yet, so a cluster that is down now is not an error; with them, the first
    /// authentication is, and a refused password fails here.
    pub async fn connect(endpoints: &[String], options: &EtcdOptions) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Invalid("no etcd endpoint given".to_string()));
        }
        let scheme = if options.uses_tls() { "https" } else { "http" };
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_timeout(options.timeout)
            // Notice a member that vanished without closing the connection; etcd refuses
            // pings more often than every 5 s.
            .with_keep_alive(Duration::from_secs(10), options.timeout)
            // A member cut off from the others must not keep a watch silently waiting.
            .with_require_leader(true);
        if options.uses_tls() {
            connect = connect.with_tls(tls_options(options)?);
        }
        match (&options.username, &options.password) {
            (Some(user), password) => {
                let password = password.clone().unwrap_or_default();
                connect = connect
                    .with_user(user.clone(), password)
                    // etcd's tokens expire after minutes; leases renew after hours.
                    .with_auto_token_refresh(true);
            }
            (None, Some(_)) => {
                return Err(StoreError::Invalid(
                    "--etcd-password without --etcd-username".to_string(),
                ))
            }
            (None, None) => {}
        }
        let connecting = Client::connect(urls, Some(connect));
        let client = match tokio::time::timeout(options.timeout, connecting).await {
            Err(_) => return Err(StoreError::Timeout(options.timeout)),
            Ok(Err(e)) => return Err(map_error("connect to etcd", &e)),
            Ok(Ok(client)) => client,
        };
        Ok(EtcdStore::from_client(
            client,
            endpoints.to_vec(),
            options.timeout,
            options.uses_tls(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_or_more_endpoints() {
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379").expect("one"),
            ["127.0.0.1:2379"]
        );
        assert_eq!(parse_url("etcd://a:1,b:2/").expect("two"), ["a:1", "b:2"]);
        assert_eq!(
            parse_url("etcd://[::1]:02379, etcd-0.etcd_svc.local:2379").expect("two"),
            ["[::1]:2379", "etcd-0.etcd_svc.local:2379"]
        );
        for bad in [
            "etcd://",
            "etcd://a",
            "etcd://a:x",
            "etcd://:1",
            "etcd://a:1,",
            "http://a:1",
            "etcd://http://192.0.2.254:2379",
            "etcd://::1:2379",
            "etcd://a:+1",
            "etcd://a:65536",
            "etcd://us@a:1",
            "etcd://a b:1",
            "etcd://[::1:2379",
            "etcd://a..b:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_password_is_never_printed() {
        let options = EtcdOptions {
            password: Some("hunter2".to_string()),
            ..EtcdOptions::default()
        };
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
