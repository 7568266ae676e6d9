//! Integration tests, in one binary (each test binary links libtorch, which is slow).
mod beam;
mod checkpoints;
mod cli;
mod conditions;
mod docs;
mod export;
mod finetune;
mod first_hour;
mod hostile;
mod machines;
mod pytorch;
mod serve;
