//! The train layer: the hyperparameters, the optimizer and its schedule, one step, the run's resumable
//! state, the observer that receives reports and checkpoints, and the run loop.
pub(crate) mod config;
pub(crate) mod epoch;
pub(crate) mod observer;
pub(crate) mod optim;
pub(crate) mod run;
pub(crate) mod schedule;
pub(crate) mod state;
pub(crate) mod step;
