//! Test certificates: a CA that etcd trusts and a rogue one, each with a server and a
//! client certificate for 127.0.0.1, generated with rcgen.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use tempfile::TempDir;

use super::{ClientTls, ServerTls};

/// Two certificate authorities, `ca` (the one etcd trusts) and `rogue`, in files.
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    /// Generates both CAs and their certificates in a temporary directory.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temporary directory for certificates");
        for name in ["ca", "rogue"] {
            let (issuer, pem) = ca(name);
            std::fs::write(dir.path().join(format!("{name}.pem")), pem)
                .expect("write a certificate file");
            let server = leaf(&issuer, ExtendedKeyUsagePurpose::ServerAuth);
            let client = leaf(&issuer, ExtendedKeyUsagePurpose::ClientAuth);
            for (kind, (cert, key)) in [("server", server), ("client", client)] {
                let base = dir.path().join(format!("{name}-{kind}"));
                std::fs::write(base.with_extension("pem"), cert).expect("write a certificate file");
                std::fs::write(base.with_extension("key"), key).expect("write a certificate file");
            }
        }
        Pki { dir }
    }

    /// A file of the PKI: `ca.pem`, `rogue-client.key`...
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Client files: the CA `ca` to trust, a client certificate signed by `signer`.
    pub fn client(&self, ca: &str, signer: &str) -> ClientTls {
        ClientTls {
            ca: self.path(&format!("{ca}.pem")),
            cert: self.path(&format!("{signer}-client.pem")),
            key: self.path(&format!("{signer}-client.key")),
        }
    }

    /// Server files for [`Etcd`]: its certificate from `ca`, trusting `ca` clients.
    pub fn server(&self) -> ServerTls {
        ServerTls {
            cert: self.path("ca-server.pem"),
            key: self.path("ca-server.key"),
            client_ca: self.path("ca.pem"),
            etcdctl: self.client("ca", "ca"),
        }
    }
}

fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("weft test {name} CA"));
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    (Issuer::new(params, key), cert.pem())
}

fn leaf(issuer: &Issuer<'static, KeyPair>, usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}
