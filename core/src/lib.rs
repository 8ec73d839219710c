//! weft-core: the sans-IO heart of weft.
//!
//! Everything here is a pure state machine or a pure function: the network config and its
//! flannel validation rules, subnet arithmetic, the lease key and value codecs, the
//! allocator that acquires and renews this node's lease, and the router that turns peers'
//! leases into a route table. Nothing here reads a clock, opens a socket or a file, or
//! draws from the OS random source: time comes in as a [`time::Timestamp`] argument and
//! randomness as a seed. The drivers -- the `weft daemon` on a real host and the simulator
//! -- perform the store operations the core asks for (against a [`store::Store`]) and feed
//! the results back, which is what makes the simulator deterministic and the daemon thin.

pub mod allocator;
pub mod config;
pub mod forward;
pub mod lease;
pub mod lease_table;
pub mod node;
pub mod router;
pub mod store;
pub mod subnet;
pub mod subnet_env;
pub mod time;
pub mod timer;
pub mod wg_key;
pub mod wire;

pub use config::NetworkConfig;
pub use time::Timestamp;
