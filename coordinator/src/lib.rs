//! The IBench coordinator: the command-line tool, evaluation driver, simulator/judge clients,
//! result store, reports, and (later) the cluster control plane.

pub mod cli;
pub mod cluster;
pub mod eval;
