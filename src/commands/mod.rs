//! The commands as library calls, one module each: each reads as a few calls down the layers (load the
//! data and the model, run, save).
pub(crate) mod eval;
pub(crate) mod export;
pub(crate) mod info;
pub(crate) mod load;
pub(crate) mod plot;
pub(crate) mod predict;
pub(crate) mod prepare;
pub(crate) mod resume;
#[cfg(feature = "serve")]
pub(crate) mod serve;
pub(crate) mod together;
pub(crate) mod train;
