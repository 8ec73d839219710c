//! flannel's etcd connection flags, shared by every command that opens a store.

use std::path::PathBuf;

use weft_stores::{EtcdOptions, StoreOptions};

/// TLS and credentials for an `etcd://` store (flannel's flag names); ignored by the
/// other stores.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdArgs {
    /// The CA certificate (PEM) that signed the etcd members' certificates; turns on TLS.
    #[arg(long, value_name = "FILE", env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// This client's certificate (PEM), for members that require client certificates.
    #[arg(long, value_name = "FILE", env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// The private key (PEM) of --etcd-certfile.
    #[arg(long, value_name = "FILE", env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// The etcd user, when etcd's authentication is enabled.
    #[arg(long, env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// The etcd user's password (better given by the environment than the command line;
    /// WEFT_ETCD_PASSWORD is read too).
    #[arg(long, env = "FLANNELD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
}

impl EtcdArgs {
    /// The options to open a store with.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            etcd: EtcdOptions {
                ca_file: self.etcd_cafile.clone(),
                cert_file: self.etcd_certfile.clone(),
                key_file: self.etcd_keyfile.clone(),
                username: self.etcd_username.clone(),
                password: self
                    .etcd_password
                    .clone()
                    .or_else(|| std::env::var("WEFT_ETCD_PASSWORD").ok()),
                ..EtcdOptions::default()
            },
            ..StoreOptions::default()
        }
    }
}
