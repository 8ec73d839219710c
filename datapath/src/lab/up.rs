//! `weft lab up`, `status`, `exec` and `down`: a lab run by this process until asked to
//! stop, and the commands other shells use on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use super::control::{self, LabStatus, NodeReport, Request, Response};
use super::running::Running;
use super::spec::LabSpec;
use super::state::LabState;
use super::{check_prerequisites, claim, clean, report, topology, LabError};
use crate::netns;

/// What `weft lab up` builds, and where.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The state directory.
    pub dir: PathBuf,
    /// The lab.
    pub spec: LabSpec,
    /// The store URL; `None`: sled in the state directory, removed with the lab.
    pub store: Option<String>,
    /// The prefix of every namespace name.
    pub prefix: String,
    /// Seeds the nodes' starts (the caller reads the OS random source).
    pub seed: u64,
}

/// Builds the lab, says so through `out` (the nodes, the hints, a connectivity check),
/// serves other shells' requests until `shutdown` turns true, then removes everything.
pub async fn up(
    opts: UpOptions,
    mut shutdown: watch::Receiver<bool>,
    mut out: impl FnMut(&str),
) -> Result<(), LabError> {
    check_prerequisites()?;
    let dir = opts.dir.as_path();
    let owned_store = opts.store.is_none().then(|| super::default_store(dir));
    let url = opts
        .store
        .clone()
        .unwrap_or_else(|| super::default_store_url(dir));
    let mut state = claim(dir, &opts.prefix, url).await?;
    let mut running = match Running::open(dir, opts.spec, state.clone(), opts.seed).await {
        Ok(running) => running,
        Err(e) => {
            clean(&mut state, dir, owned_store.as_deref()).await?;
            return Err(e);
        }
    };
    let result = async {
        // Bound before the lab is ready (and says so in its state file), so that a
        // client that sees it ready finds it answering.
        let listener = listen(dir)?;
        tokio::select! {
            built = running.build() => built?,
            _ = shutdown.changed() => return Err(LabError::Interrupted),
        }
        let status = running.status();
        out(&report::table(&status));
        out(&report::hints(&status));
        out(&report::connectivity(&status, &running.state.prefix).await);
        serve(&mut running, &listener, &mut shutdown).await
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "the lab failed; tearing it down");
    }
    tracing::info!("stopping the lab's nodes");
    let cleaned = running.teardown(owned_store.as_deref()).await;
    tracing::info!("lab down: every namespace, link and file it made is gone");
    result.and(cleaned)
}

/// The control socket of the lab in `dir`; requests wait in its backlog until served.
fn listen(dir: &Path) -> Result<tokio::net::UnixListener, LabError> {
    let path = control::socket(dir);
    let _ = std::fs::remove_file(&path);
    tokio::net::UnixListener::bind(&path).map_err(|cause| LabError::State { path, cause })
}

/// Answers requests on the control socket until `shutdown` turns true.
async fn serve(
    running: &mut Running,
    listener: &tokio::net::UnixListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), LabError> {
    loop {
        running.nodes.reap();
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            conn = listener.accept() => {
                let Ok((mut stream, _)) = conn else { continue };
                let response = match control::read_request(&mut stream).await {
                    Ok(request) => answer(running, request).await,
                    Err(e) => Response::Error { message: e.to_string() },
                };
                control::write_response(&mut stream, &response).await;
            }
        }
    }
}

async fn answer(running: &mut Running, request: Request) -> Response {
    let done = match request {
        Request::Status => return Response::Status(running.status()),
        Request::Stop { node } => running
            .nodes
            .stop(&node)
            .await
            .map(|()| format!("{node} stopped")),
        Request::Start { node } => match running.start(&node) {
            Ok(()) => running
                .wire()
                .await
                .map(|unwired| match unwired.as_slice() {
                    [] => format!("{node} started"),
                    why => format!("{node} started; no lease yet for {}", why.join("; ")),
                }),
            Err(e) => Err(e),
        },
    };
    match done {
        Ok(message) => Response::Done { message },
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// The lab in `dir`: from its process when it answers, else from its state file (node
/// states unknown); `None` when there is no lab.
pub async fn status(dir: &Path) -> Result<Option<LabStatus>, LabError> {
    let Some(state) = LabState::load(dir)? else {
        return Ok(None);
    };
    if super::alive(state.pid) {
        if let Ok(Response::Status(status)) = control::request(dir, &Request::Status).await {
            return Ok(Some(status));
        }
    }
    Ok(Some(LabStatus {
        pid: state.pid,
        live: false,
        ready: state.ready,
        store: state.store.clone(),
        network: state.network,
        ipv6_network: state.ipv6_network,
        underlay: topology::UNDERLAY,
        nodes: state
            .nodes
            .iter()
            .map(|n| NodeReport {
                name: n.name.clone(),
                public_ip: n.public_ip,
                public_ipv6: n.public_ipv6,
                containers: n.containers.clone(),
                status: None,
            })
            .collect(),
    }))
}

/// Runs `command` inside the namespace of a node or container of the lab in `dir`;
/// returns its exit status.
pub fn exec(
    dir: &Path,
    name: &str,
    command: &[String],
) -> Result<std::process::ExitStatus, LabError> {
    let lab = LabState::load(dir)?.ok_or_else(|| LabError::Protocol("no lab is up".into()))?;
    let ns = lab.namespace_of(name).ok_or_else(|| LabError::NoNode {
        name: name.to_string(),
        have: lab.names().join(", "),
    })?;
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| LabError::Protocol("no command given".into()))?;
    let (program, rest) = (program.clone(), rest.to_vec());
    let shown = program.clone();
    netns::in_netns(Some(&netns::path(&ns)), move || {
        std::process::Command::new(&program).args(&rest).status()
    })
    .map_err(|e| LabError::Build {
        what: format!("entering namespace {ns}"),
        cause: e,
    })?
    .map_err(|cause| LabError::Exec {
        command: shown,
        cause,
    })
}

/// Stops the lab's process in `dir` (SIGTERM to its PID) and removes whatever it left
/// behind, also after a crash. Returns whether there was a lab.
pub async fn down(dir: &Path) -> Result<bool, LabError> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    check_prerequisites()?;
    let Some(lab) = LabState::load(dir)? else {
        return Ok(false);
    };
    if lab.pid != std::process::id() && super::alive(lab.pid) {
        let pid = i32::try_from(lab.pid).map_err(|_| LabError::DidNotStop(lab.pid))?;
        kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| LabError::Exec {
            command: format!("kill -TERM {pid}"),
            cause: e.into(),
        })?;
        for _ in 0..300 {
            if !super::alive(lab.pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if super::alive(lab.pid) {
            return Err(LabError::DidNotStop(lab.pid));
        }
    }
    // Whatever the process did not remove (it crashed, or was killed) goes now.
    if let Some(mut left) = LabState::load(dir)? {
        let owned = super::owned_store(&left, dir);
        clean(&mut left, dir, owned.as_deref()).await?;
    }
    Ok(true)
}
