//! Helpers for tests that run the `weft` binary as a real process.

#![allow(dead_code, clippy::unwrap_used)]

pub mod lab;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Runs `weft ARGS` to completion.
pub fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("WEFT_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// A running `weft daemon`, stopped by SIGTERM to its PID (and killed if the test
/// panics first).
pub struct Daemon {
    child: Option<Child>,
    subnet_file: PathBuf,
    log: PathBuf,
}

impl Daemon {
    pub fn start(store: &str, public_ip: &str, subnet_file: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(store, public_ip, subnet_file, extra, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_with_env(
        store: &str,
        public_ip: &str,
        subnet_file: &Path,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        Daemon::start_with_global(&[], store, public_ip, subnet_file, extra, env)
    }

    /// [`Daemon::start_with_env`] with `global` flags before the subcommand
    /// (`weft GLOBAL... daemon ...`).
    pub fn start_with_global(
        global: &[&str],
        store: &str,
        public_ip: &str,
        subnet_file: &Path,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        let log = subnet_file.with_extension(format!("{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(global)
            .args([
                "daemon",
                "--store",
                store,
                "--public-ip",
                public_ip,
                "--iface",
                "lo",
            ])
            .arg("--subnet-file")
            .arg(subnet_file)
            .args(extra)
            .envs(env.iter().copied())
            .env("WEFT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            subnet_file: subnet_file.to_path_buf(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for subnet.env to appear, and returns its text.
    pub fn wait_for_subnet_env(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&self.subnet_file) {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no {} after 20 s; log:\n{}",
            self.subnet_file.display(),
            self.log()
        );
    }

    /// SIGTERM, then waits (bounded) for the exit; returns the status and the log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon ignored SIGTERM for 20 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
