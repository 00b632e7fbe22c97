//! Checkers of recorded histories (see [`crate::history`]): Jepsen's set-full analysis for the set
//! workload ([`set_full`]) and a linearizability checker for the register workload
//! ([`linearizable`]).

pub mod linearizable;
pub mod set_full;

pub use linearizable::{check as check_linearizable, KeyFailure, LinearOptions, LinearVerdict};
pub use set_full::{check as check_set, Quantiles, SetExample, SetOptions, SetVerdict};
