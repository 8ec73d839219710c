//! The node's private key: made on first start, kept in a file only root can read, and
//! the same across restarts so that no peer needs to learn a new public key.
//!
//! flannel keeps it in `/run/flannel/wgkey` (`WIREGUARD_KEY_FILE` overrides the path),
//! written as `wg genkey` prints a key. weft reads the same file, so a node moved from
//! flanneld keeps its key; unlike flannel, it refuses a file others can read (a key that
//! leaked is no key) or one that does not hold a key, rather than generating over it.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use boringtun::x25519::{PublicKey, StaticSecret};

/// flannel's key file.
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";
/// flannel's override of [`DEFAULT_KEY_FILE`].
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";

/// Why the key file could not be used. Never shows the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, creating or writing it failed.
    #[error("wireguard key file {path}: {what}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        cause: std::io::Error,
    },
    /// Group or others may read or write it.
    #[error(
        "wireguard key file {path} has mode {mode:o}: others than its owner may use it; \
         chmod 600 it (or remove it to make a new key, which every peer must then learn)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It belongs to another user than the one running weft.
    #[error("wireguard key file {path} belongs to uid {owner}, not to us (uid {us})")]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        us: u32,
    },
    /// It does not hold a key.
    #[error(
        "wireguard key file {path} does not hold a key ({reason}); restore it, or remove it \
         to make a new key"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with its text.
        reason: weft_core::wg_key::KeyError,
    },
}

/// The key file's path: `WIREGUARD_KEY_FILE` when set, else flannel's.
pub fn key_file_from_env() -> PathBuf {
    std::env::var_os(KEY_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_KEY_FILE), PathBuf::from)
}

/// The node's key pair: read from `path`, or made and written there (mode 0600) when
/// there is no such file.
pub fn load_or_create(path: &Path) -> Result<(StaticSecret, PublicKey), KeyFileError> {
    let io = |what, cause| KeyFileError::Io {
        path: path.to_path_buf(),
        what,
        cause,
    };
    let secret = match fs::symlink_metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Exposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            let us = nix::unistd::geteuid().as_raw();
            if meta.uid() != us {
                return Err(KeyFileError::Owner {
                    path: path.to_path_buf(),
                    owner: meta.uid(),
                    us,
                });
            }
            let text = fs::read_to_string(path).map_err(|e| io("reading", e))?;
            let bytes =
                weft_core::wg_key::parse(&text).map_err(|reason| KeyFileError::Corrupt {
                    path: path.to_path_buf(),
                    reason,
                })?;
            StaticSecret::from(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = StaticSecret::random_from_rng(rand_core::OsRng);
            write_new(path, &secret).map_err(|(what, e)| io(what, e))?;
            tracing::info!(path = %path.display(), "made a new wireguard key");
            secret
        }
        Err(e) => return Err(io("reading its metadata", e)),
    };
    let public = PublicKey::from(&secret);
    Ok((secret, public))
}

/// Writes the key to a temporary file of mode 0600 beside `path`, then renames it into
/// place: a crash leaves either no key file or a whole one.
fn write_new(path: &Path, secret: &StaticSecret) -> Result<(), (&'static str, std::io::Error)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| ("creating its directory", e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| ("creating it", e))?;
    let text = format!("{}\n", weft_core::wg_key::format(&secret.to_bytes()));
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| ("writing it", e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| ("renaming it into place", e)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_on_first_start_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/wgkey");
        let (secret, public) = load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        // `wg genkey`'s format: base64 and a newline.
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 45, "{text:?}");
        let (again, public_again) = load_or_create(&path).unwrap();
        assert_eq!(again.to_bytes(), secret.to_bytes());
        assert_eq!(public_again, public);
        // flannel's own file (no newline, mode 0400) is read as is.
        let flannel = dir.path().join("flannel-wgkey");
        fs::write(&flannel, text.trim()).unwrap();
        fs::set_permissions(&flannel, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(load_or_create(&flannel).unwrap().1, public);
    }

    #[test]
    fn an_exposed_or_corrupt_file_is_a_clear_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        load_or_create(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).err().expect("refused");
        assert!(
            matches!(err, KeyFileError::Exposed { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("has mode 644"), "{err}");
        assert!(!err.to_string().contains(text.trim()));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "this is not a key\n").unwrap();
        let err = load_or_create(&path).err().expect("refused");
        assert!(matches!(err, KeyFileError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("does not hold a key"), "{err}");
        // Nothing was written over it.
        assert_eq!(fs::read_to_string(&path).unwrap(), "this is not a key\n");
        fs::write(&path, "").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(KeyFileError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_environment_overrides_flannels_path() {
        // Read only: the variable is not set in this test binary's environment by
        // anything else, and setting it would race the other tests.
        if std::env::var_os(KEY_FILE_ENV).is_none() {
            assert_eq!(key_file_from_env(), PathBuf::from("/run/flannel/wgkey"));
        }
    }
}
