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
/// renamed over the old one, so a reader never sees half a file; then the directory is
/// synced, so that the rename itself survives a power cut (until then the directory
/// entry may still name the old file, or none).
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
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use weft_core::subnet_env::SubnetEnv;

    const CHILD_ENV: &str = "WEFT_SUBNET_FILE_CHILD_DIR";

    fn env() -> SubnetEnv {
        let text = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.34.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";
        SubnetEnv::parse(text).expect("a valid subnet.env")
    }

    /// Run by `the_rename_is_made_durable_by_syncing_the_directory` under strace.
    #[test]
    #[ignore = "run by its parent test under strace"]
    fn child_writes_the_file() {
        let dir = std::env::var_os(CHILD_ENV).expect("run by its parent test");
        super::write(&Path::new(&dir).join("subnet.env"), &env()).expect("write");
    }

    /// The file is renamed into place, and then its directory is fsynced, or a power cut
    /// could bring back the old file (or none) after the daemon said it had written it.
    /// Seen with strace: the real system calls, on a real file system.
    #[test]
    fn the_rename_is_made_durable_by_syncing_the_directory() {
        if Command::new("strace").arg("-V").output().is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "strace is missing, and CI must run this test"
            );
            eprintln!("SKIPPED: strace is not installed, the directory fsync is not checked");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("strace.log");
        let files = dir.path().join("run");
        // This module's path without the crate's name, wherever the file moves.
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let child_test = format!("{module}::child_writes_the_file");
        let status = Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-e",
                "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
            ])
            .arg("-o")
            .arg(&log)
            .arg(std::env::current_exe().expect("test binary"))
            .args(["--exact", &child_test, "--ignored", "--test-threads=1"])
            .env(CHILD_ENV, &files)
            .status()
            .expect("run strace");
        assert!(status.success(), "the child failed: {status:?}");
        assert!(files.join("subnet.env").exists());

        let trace = std::fs::read_to_string(&log).expect("strace log");
        let lines: Vec<&str> = trace.lines().collect();
        let target = format!("\"{}\"", files.join("subnet.env").display());
        let renamed = lines
            .iter()
            .position(|l| l.contains("rename") && l.contains(&target) && l.contains("= 0"))
            .unwrap_or_else(|| panic!("no rename onto {target} in:\n{trace}"));
        // The descriptors opened on the directory after the rename, and whether one was
        // fsynced.
        let dir_name = format!("\"{}\"", files.display());
        let mut dir_fds = Vec::new();
        let mut synced = false;
        for line in &lines[renamed + 1..] {
            if line.contains("openat(") && line.contains(&dir_name) {
                if let Some(fd) = line
                    .rsplit("= ")
                    .next()
                    .and_then(|fd| fd.trim().parse::<i32>().ok())
                {
                    dir_fds.push(fd);
                }
            }
            if dir_fds
                .iter()
                .any(|fd| line.contains(&format!("fsync({fd})")) && line.contains("= 0"))
            {
                synced = true;
            }
        }
        assert!(
            synced,
            "the directory {dir_name} is not fsynced after the rename:\n{}",
            lines[renamed..].join("\n")
        );
    }
}
