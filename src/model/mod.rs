//! The model layer: the configuration, the parameters by role, the state, the operations around the
//! network, dropout, the recurrence (two backends behind one trait), the network, and backpropagation
//! through time written out.
pub(crate) mod bptt;
pub(crate) mod config;
pub(crate) mod dropout;
pub(crate) mod flat;
pub(crate) mod gates;
pub(crate) mod network;
pub(crate) mod ops;
pub(crate) mod params;
pub(crate) mod recurrence;
pub(crate) mod state;
