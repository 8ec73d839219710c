//! How `weft lab status` and `weft lab node stop|start`, run from another shell, talk to
//! the running `weft lab up`: one JSON [`Request`] per connection on the lab's Unix
//! socket (`control.sock` in its state directory), one JSON [`Response`] back, each a
//! single line. The status is the nodes' own [`NodeStatus`], typed end to end.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::state::Container;
use super::LabError;
use crate::daemon::NodeStatus;

/// The longest request or response line read: a status of 200 nodes with their routes
/// fits many times over.
const MAX_LINE: u64 = 16 << 20;

/// The socket of the lab whose state directory is `dir`.
pub fn socket(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// What a client asks of the running lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Every node's status.
    Status,
    /// Stop a node's daemon (its namespace and containers stay).
    Stop {
        /// The node.
        node: String,
    },
    /// Start a stopped node's daemon again.
    Start {
        /// The node.
        node: String,
    },
}

/// The lab's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// The lab's status.
    Status(LabStatus),
    /// Done, in a sentence.
    Done {
        /// What was done.
        message: String,
    },
    /// Refused or failed, in a sentence.
    Error {
        /// Why.
        message: String,
    },
}

/// A whole lab: what `weft lab status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabStatus {
    /// The PID of the process running the lab.
    pub pid: u32,
    /// Whether that process answered: when not (it is gone, or still building), the
    /// statuses are unknown and the rest comes from the state file.
    pub live: bool,
    /// True once every starting node held a lease and every container was wired.
    pub ready: bool,
    /// The store URL.
    pub store: String,
    /// The overlay network, from the lab's network config.
    pub network: Option<Ipv4Net>,
    /// The overlay's IPv6 network, when the config enables IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_network: Option<Ipv6Net>,
    /// The underlay the nodes' public addresses are on.
    pub underlay: Ipv4Net,
    /// The nodes, in creation order.
    pub nodes: Vec<NodeReport>,
}

/// One node of a [`LabStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Short name.
    pub name: String,
    /// Its underlay address.
    pub public_ip: Ipv4Addr,
    /// Its IPv6 underlay address (dual-stack labs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Its containers, once wired.
    pub containers: Vec<Container>,
    /// Its daemon's status (`None` when the lab did not answer).
    pub status: Option<NodeStatus>,
}

/// Sends `request` to the lab in `dir` and returns its response.
pub async fn request(dir: &Path, request: &Request) -> Result<Response, LabError> {
    let path = socket(dir);
    let unreachable = |cause| LabError::Control {
        path: path.clone(),
        cause,
    };
    let mut stream = UnixStream::connect(&path).await.map_err(unreachable)?;
    let mut line = serde_json::to_string(request).map_err(|e| LabError::Protocol(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(unreachable)?;
    // A stop waits for the node's datapath to go; a start for nothing long.
    let reply = tokio::time::timeout(Duration::from_secs(60), read_line(&mut stream))
        .await
        .map_err(|_| LabError::Protocol("the lab did not answer within 60 s".into()))?
        .map_err(unreachable)?;
    serde_json::from_str(&reply)
        .map_err(|e| LabError::Protocol(format!("bad response {reply:?}: {e}")))
}

/// Reads one request from a client (within 5 s).
pub async fn read_request(stream: &mut UnixStream) -> Result<Request, LabError> {
    let line = tokio::time::timeout(Duration::from_secs(5), read_line(stream))
        .await
        .map_err(|_| LabError::Protocol("no request within 5 s".into()))?
        .map_err(|e| LabError::Protocol(format!("cannot read the request: {e}")))?;
    parse_request(&line)
}

/// A request line, or an error naming what was sent.
pub fn parse_request(line: &str) -> Result<Request, LabError> {
    serde_json::from_str(line)
        .map_err(|e| LabError::Protocol(format!("bad request `{}`: {e}", line.trim())))
}

/// Writes `response` to the client.
pub async fn write_response(stream: &mut UnixStream, response: &Response) {
    let Ok(mut line) = serde_json::to_string(response) else {
        return;
    };
    line.push('\n');
    // A client that went away misses its answer; the lab carries on.
    let _ = stream.write_all(line.as_bytes()).await;
}

async fn read_line(stream: &mut UnixStream) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new((&mut *stream).take(MAX_LINE))
        .read_line(&mut line)
        .await?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_tagged_json_object_each() {
        let stop = Request::Stop { node: "n2".into() };
        let text = serde_json::to_string(&stop).unwrap_or_default();
        assert_eq!(text, r#"{"request":"stop","node":"n2"}"#);
        assert_eq!(parse_request(&text).ok(), Some(stop));
        assert_eq!(
            parse_request("{\"request\":\"status\"}\n").ok(),
            Some(Request::Status)
        );
    }

    #[test]
    fn a_bad_request_is_an_error_naming_it() {
        for bad in [
            "stop n2",
            r#"{"request":"reboot"}"#,
            r#"{"request":"stop"}"#,
        ] {
            let err = parse_request(bad).expect_err(bad).to_string();
            assert!(err.contains("bad request") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn a_status_survives_the_round_trip() {
        let status = Response::Status(LabStatus {
            pid: 7,
            live: true,
            ready: true,
            store: "sled:/run/weft-lab/store".into(),
            network: "10.77.0.0/16".parse().ok(),
            ipv6_network: "fc00::/48".parse().ok(),
            underlay: super::super::topology::UNDERLAY,
            nodes: vec![NodeReport {
                name: "n1".into(),
                public_ip: Ipv4Addr::new(192, 0, 2, 11),
                public_ipv6: "2001:db8:0:2::b".parse().ok(),
                containers: vec![Container {
                    name: "n1-c1".into(),
                    ip: Some(Ipv4Addr::new(10, 77, 3, 2)),
                    ipv6: "fc00:0:0:3::2".parse().ok(),
                }],
                status: Some(NodeStatus::default()),
            }],
        });
        let text = serde_json::to_string(&status).unwrap_or_default();
        let back: Response = serde_json::from_str(&text).unwrap_or(Response::Error {
            message: text.clone(),
        });
        assert_eq!(back, status);
    }
}
