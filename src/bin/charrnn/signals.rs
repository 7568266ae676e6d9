//! SIGINT and SIGTERM: the first asks a long command to stop (the training loop checkpoints, generation
//! prints what it has); a second ends the process at once.
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

/// Makes the first SIGINT or SIGTERM a request (recorded in the returned number, which the training loop
/// polls after each minibatch) and a second one an immediate exit with status 128 + signal.
pub fn catch_stop_signals() -> std::io::Result<Arc<AtomicUsize>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let received = Arc::new(AtomicUsize::new(0));
    let once = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Handlers run in the order registered: the exit checks the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&once))?;
        signal_hook::flag::register(sig, Arc::clone(&once))?;
        signal_hook::flag::register_usize(sig, Arc::clone(&received), sig as usize)?;
    }
    Ok(received)
}

/// A command other than `train` stopped by SIGINT or SIGTERM after showing what it had (exit 128 + signal).
#[derive(Debug)]
pub struct Stopped {
    pub signal: i32,
    pub what: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted; {}", self.what)
    }
}

impl std::error::Error for Stopped {}
