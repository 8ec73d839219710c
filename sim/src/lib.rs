//! weft-sim: a deterministic discrete-event simulator for weft.
//!
//! It runs the real [`weft_core::node::Node`] of every simulated host against the
//! in-memory store of `weft-stores`, over an underlay model with latency, loss,
//! duplication, reordering, corruption, MTU and partitions, with smoltcp containers
//! behind each node that ping and talk TCP through the core's forwarding decisions.
//! Time is virtual: it jumps to the next due event (a datagram's arrival, a core or
//! smoltcp timeout, a store result or expiry, a scenario step). Randomness comes only
//! from ChaCha streams derived from the run's seed ([`rng`]), so one seed gives one
//! trace, byte for byte; and every fault decision is recorded, so that a failed run can
//! be replayed from its event file without the seed.
//!
//! `weft sim` (in the binary) and the scenario tests drive it through [`run()`].

pub mod container;
pub mod engine;
pub mod hash;
pub mod light;
pub mod queue;
pub mod record;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod shrink;
pub mod time;
pub mod underlay;
pub mod walk;

pub use run::{run, Outcome, RunOptions};
