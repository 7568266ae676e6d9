//! Integration tests, in one binary (each test binary links libtorch, which is slow).
mod checkpoints;
mod cli;
mod finetune;
mod hostile;
mod pytorch;
