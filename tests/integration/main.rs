//! Integration tests, in one binary (each test binary links libtorch, which is slow).
mod checkpoints;
mod cli;
mod hostile;
mod pytorch;
