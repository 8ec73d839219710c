//! A TCP relay from a port on a namespace's loopback to the same port on ours, so that
//! daemons inside host namespaces reach the test's etcd at `127.0.0.1` (etcd listens on
//! our loopback only). The listening socket is created inside the namespace and stays
//! there; the connections onwards are made from our own threads, in our namespace.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use weft_datapath::netns;

/// See the module docs. Dropping it stops accepting and shuts every relayed
/// connection down.
pub struct Relay {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl Relay {
    /// Relays `127.0.0.1:port` inside the namespace at `ns` to `target` in ours.
    pub fn start(ns: &Path, port: u16, target: SocketAddr) -> Relay {
        let listener = netns::in_netns(Some(ns), move || TcpListener::bind(("127.0.0.1", port)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inner, _)) => {
                        inner.set_nonblocking(false).unwrap();
                        let Ok(outer) = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                        else {
                            continue;
                        };
                        let mut list = conns2.lock().unwrap();
                        list.push(inner.try_clone().unwrap());
                        list.push(outer.try_clone().unwrap());
                        let (i2, o2) = (inner.try_clone().unwrap(), outer.try_clone().unwrap());
                        std::thread::spawn(move || pipe(inner, outer));
                        std::thread::spawn(move || pipe(o2, i2));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Relay {
            stop,
            accept: Some(accept),
            conns,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}
