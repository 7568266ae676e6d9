//! Starting one run on several processes ([`crate::World`]): every rank prepares the run as one process
//! would, then they agree that all of them could, that they were started alike on the same text, and they
//! take rank 0's parameters and training state.
use crate::error::{Error, Result};
use crate::model::network::Network;
use crate::train::state::{Position, TrainState};
use crate::world::world;

/// `result` if every rank's preparation succeeded, else on every rank the first failing rank's error (rank
/// 0 says it; see [`Error::Ranks`]). Alone, `result` itself.
pub(crate) fn agree<T>(result: Result<T>) -> Result<T> {
    let world = world();
    if world.size() == 1 {
        return result;
    }
    let mine = result.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
    let all = world.gather_bytes(mine.as_bytes());
    let failed = all.iter().enumerate().find(|(_, m)| !m.is_empty());
    match failed {
        None => result,
        Some((rank, message)) => {
            let message = String::from_utf8_lossy(message);
            let reason = if rank == 0 { message.into_owned() } else { format!("rank {rank}: {message}") };
            Err(Error::Ranks { reason, everywhere: true })
        }
    }
}

/// Refuses, on every rank, a job whose ranks were started with other settings than rank 0's (`settings`:
/// the job as [`std::fmt::Debug`] writes it) or read another text (`corpus`: its fingerprint and length).
pub(crate) fn check_alike(settings: &str, corpus: &str) -> Result<()> {
    let world = world();
    if world.size() == 1 {
        return Ok(());
    }
    check_same(settings, "was started with other settings than rank 0; start every rank with the same command")?;
    check_same(
        corpus,
        "read another text than rank 0 (its length or fingerprint differs); every machine needs the same corpus at the same path",
    )
}

/// Refuses, on every rank, a `what` that differs from rank 0's: the first rank whose does, then `hint`.
fn check_same(what: &str, hint: &str) -> Result<()> {
    let all = world().gather_bytes(what.as_bytes());
    match all.iter().position(|w| w != &all[0]) {
        None => Ok(()),
        Some(rank) => Err(Error::Ranks { reason: format!("rank {rank} {hint}"), everywhere: true }),
    }
}

/// Gives every rank rank 0's parameters (one broadcast of the flat buffer) and, when the run resumes,
/// rank 0's training state: its position and tensors.
pub(crate) fn share_start(model: &Network, state: Option<&mut TrainState>) -> Result<()> {
    let world = world();
    if world.size() == 1 {
        return Ok(());
    }
    world.broadcast_tensor(model.values());
    if let Some(state) = state {
        let json = serde_json::to_vec(&state.position).expect("a position serialises");
        let root = world.broadcast_bytes(json);
        state.position = serde_json::from_slice::<Position>(&root)
            .map_err(|e| Error::TrainingState { reason: format!("rank 0's position does not read back: {e}") })?;
        let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
        let tensors = state.to_named(&names);
        // The same tensors on every rank, or rank 0's could not be laid over them.
        let listing = tensors.iter().map(|(n, t)| format!("{n} {:?}", t.size())).collect::<Vec<_>>().join(", ");
        check_same(&listing, "holds another training state than rank 0; every machine needs the same model folder")?;
        for (_, t) in &tensors {
            world.broadcast_tensor(t);
        }
    }
    Ok(())
}
