//! flanneld's command line, accepted as is by `weft daemon` (and by this binary run
//! under the name `flanneld`): Go's single-dash spellings (`-etcd-endpoints=…`), the
//! `--etcd-endpoints` URL list. (The Kubernetes flags are refused by `DaemonArgs`.)

use std::ffi::OsString;

use anyhow::{bail, Result};

/// Rewrites Go's single-dash long flags (`-iface=eth0`, `-ip-masq`) to clap's
/// (`--iface=eth0`, `--ip-masq`), for the long flag names in `longs`; anything else
/// (short flags such as `-v`, values, `--` and what follows it) is left alone.
pub fn normalize(args: Vec<OsString>, longs: &[String]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for arg in args {
        let text = arg.to_string_lossy();
        if rest || text == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        let rewritten = text
            .strip_prefix('-')
            .filter(|t| !t.starts_with('-'))
            .filter(|t| {
                let name = t.split('=').next().unwrap_or(t);
                name.len() > 1 && longs.iter().any(|l| l == name)
            })
            .map(|t| OsString::from(format!("--{t}")));
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

/// The store URL for flanneld's `--etcd-endpoints` (`http://h1:2379,https://h2:2379`),
/// and whether the endpoints use TLS. Mixing schemes, or a scheme other than http and
/// https, is an error naming the endpoint.
pub fn etcd_store_url(endpoints: &str) -> Result<(String, bool)> {
    let mut hosts = Vec::new();
    let mut tls = None;
    for e in endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (scheme, rest) = match e.split_once("://") {
            Some((s, r)) => (s, r),
            None => bail!(
                "--etcd-endpoints: {e:?} is not a URL (http://HOST:PORT or https://HOST:PORT)"
            ),
        };
        let https = match scheme {
            "http" => false,
            "https" => true,
            other => bail!("--etcd-endpoints: {e:?} has scheme {other:?}; use http or https"),
        };
        if tls.is_some_and(|t| t != https) {
            bail!("--etcd-endpoints mixes http and https endpoints ({endpoints}); use one scheme");
        }
        tls = Some(https);
        let host = rest.trim_end_matches('/');
        if host.contains('/') {
            bail!("--etcd-endpoints: {e:?} has a path; give http(s)://HOST:PORT");
        }
        hosts.push(host.to_string());
    }
    if hosts.is_empty() {
        bail!("--etcd-endpoints names no endpoint");
    }
    Ok((format!("etcd://{}", hosts.join(",")), tls.unwrap_or(false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn go_spellings_become_clap_spellings() {
        let longs: Vec<String> = ["etcd-endpoints", "iface", "ip-masq"]
            .map(String::from)
            .into();
        let got = normalize(
            os(&[
                "weft",
                "daemon",
                "-etcd-endpoints=http://a:1",
                "-iface",
                "eth0",
                "-ip-masq",
                "-v",
                "--",
                "-iface",
            ]),
            &longs,
        );
        assert_eq!(
            got,
            os(&[
                "weft",
                "daemon",
                "--etcd-endpoints=http://a:1",
                "--iface",
                "eth0",
                "--ip-masq",
                "-v",
                "--",
                "-iface"
            ])
        );
    }

    #[test]
    fn endpoints_become_a_store_url() {
        assert_eq!(
            etcd_store_url("http://10.0.0.1:2379,http://10.0.0.2:2379/").expect("url"),
            ("etcd://10.0.0.1:2379,10.0.0.2:2379".to_string(), false)
        );
        assert!(etcd_store_url("https://e:2379").expect("url").1);
        for bad in [
            "http://a:1,https://b:2",
            "unix:///x",
            "a:2379",
            "",
            "http://a:1/v2",
        ] {
            assert!(etcd_store_url(bad).is_err(), "{bad}");
        }
    }
}
