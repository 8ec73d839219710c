//! Reading and atomically writing `subnet.env`.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use weft_core::subnet_env::SubnetEnv;

/// Reads the previous run's file. A missing file is `None`; an unreadable or malformed
/// one is logged and treated as missing, since it only steers the choice of subnet.
pub fn read(path: &Path) -> Option<SubnetEnv> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the previous subnet file; ignoring it");
            return None;
        }
    };
    match SubnetEnv::parse(&text) {
        Ok(env) => Some(env),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the previous subnet file is malformed; ignoring it");
            None
        }
    }
}

/// Writes the file atomically: a temporary file in the same directory, synced, then
/// renamed over the old one, so a reader never sees half a file.
pub fn write(path: &Path, env: &SubnetEnv) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("subnet.env");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(env.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}
