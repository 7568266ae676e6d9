//! The worker thread that owns the model: it generates the sampled and greedy requests together in one
//! continuous batch, runs beam searches one by one between steps, and sends each request its replies.
use crate::commands::serve::request::Request;
use crate::data::vocab::Vocabulary;
use crate::generate::batch::Batch;
use crate::generate::generate_until;
use crate::generate::options::Generated;
use crate::model::network::Network;
use crate::store::load::LoadedModel;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use tokio::sync::mpsc::UnboundedSender;

/// What the worker sends back for one request.
#[derive(Debug)]
pub(super) enum Reply {
    /// Character `c` of sample `sample`, as soon as it is chosen.
    Char { sample: usize, c: char },
    /// All samples, how many requests were generated in the batch with this one (itself included), and
    /// whether a shutdown past the grace cut them short.
    Done { samples: Vec<Generated>, batch: usize, interrupted: bool },
    /// Generation failed (the message says why).
    Failed(String),
}

/// A request queued for the worker, with where its replies go.
pub(super) struct Job {
    pub(super) request: Request,
    pub(super) reply: UnboundedSender<Reply>,
}

/// Counts `GET /healthz` reports.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) requests: AtomicUsize,
    pub(super) batches: AtomicUsize,
    pub(super) largest_batch: AtomicUsize,
    pub(super) rejected_busy: AtomicUsize,
    /// Requests being generated now.
    pub(super) running: AtomicUsize,
    /// Generation steps run: one model step for the whole batch, or for all of a beam search's beams.
    pub(super) steps: AtomicUsize,
    /// Requests whose client went away before their answer (their generation stopped at the next step).
    pub(super) abandoned: AtomicUsize,
    /// Requests cut short by a shutdown past the grace.
    pub(super) interrupted: AtomicUsize,
    /// Connections refused because `--max-connections` were open.
    pub(super) refused_connections: AtomicUsize,
}

/// Why a request's generation was stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Its client went away.
    Gone,
    /// The server is stopping and the grace has passed.
    Stopping,
}

/// Whether a request may go on: not if its client went away, nor once the server is stopping.
fn cut(reply: &UnboundedSender<Reply>, stopping: &AtomicBool) -> Option<Cut> {
    if reply.is_closed() {
        Some(Cut::Gone)
    } else if stopping.load(Ordering::Relaxed) {
        Some(Cut::Stopping)
    } else {
        None
    }
}

/// Sends a request its last reply, and counts it if it was cut short or its client is gone.
fn conclude(stats: &Stats, reply: &UnboundedSender<Reply>, cut: Option<Cut>, samples: Vec<Generated>, batch: usize) {
    let interrupted = cut == Some(Cut::Stopping);
    if interrupted {
        stats.interrupted.fetch_add(1, Ordering::Relaxed);
    }
    if cut == Some(Cut::Gone) || reply.send(Reply::Done { samples, batch, interrupted }).is_err() {
        stats.abandoned.fetch_add(1, Ordering::Relaxed);
    }
}

/// The worker: generates the sampled and greedy requests together in one [`Batch`], which a request joins
/// as soon as it arrives (at the next step) while fewer than `max_batch` run, and the beam searches one by
/// one between steps; sends each request its replies, the last as soon as its own rows are done. Ends when
/// the queue's sender is gone and nothing runs. A request whose client went away leaves the batch at the
/// next step (a beam search too); `stopping` ends every running request the same way.
pub(super) fn work(loaded: LoadedModel, queue: Receiver<Job>, max_batch: usize, stats: &Stats, stopping: &AtomicBool) {
    let LoadedModel { model, vocab, .. } = loaded;
    let mut batch = Batch::new(&model, &vocab);
    // The running requests' reply channels by batch id, and how many requests the batch has held.
    let mut running: HashMap<usize, (UnboundedSender<Reply>, usize)> = HashMap::new();
    loop {
        // Wait when nothing runs; otherwise take what is waiting, without waiting.
        let mut arrived = Vec::new();
        if batch.is_empty() {
            match queue.recv() {
                Ok(job) => arrived.push(job),
                Err(_) => return,
            }
        }
        while running.len() + arrived.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => arrived.push(job),
                Err(_) => break,
            }
        }
        let joining = arrived.iter().filter(|j| j.request.generate.beam == 0).count();
        for job in arrived {
            if job.request.generate.beam > 0 {
                record(stats, 1, 1);
                stats.running.store(running.len() + 1, Ordering::Relaxed);
                beam(&model, &vocab, job, stats, stopping);
                stats.running.store(running.len(), Ordering::Relaxed);
                continue;
            }
            let size = running.len() + 1;
            let admit = || batch.admit(&job.request.prefix, &job.request.generate);
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(admit)) {
                Ok(Ok(id)) => drop(running.insert(id, (job.reply, size))),
                Ok(Err(e)) => drop(job.reply.send(Reply::Failed(e.to_string()))),
                Err(_) => drop(job.reply.send(Reply::Failed("reading the prefix failed inside libtorch".into()))),
            }
        }
        if joining > 0 {
            record(stats, joining, running.len());
        }
        stats.running.store(running.len(), Ordering::Relaxed);
        if batch.is_empty() {
            continue;
        }
        // The batch size each request reports: the most requests it ran beside, itself included.
        let now = running.len();
        running.values_mut().for_each(|(_, size)| *size = (*size).max(now));
        let mut finished = Vec::new();
        let mut cuts = HashMap::new();
        stats.steps.fetch_add(1, Ordering::Relaxed);
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batch.step(
                &mut |r, sample, c| {
                    let why = match running.get(&r) {
                        Some((reply, _)) => cut(reply, stopping)
                            .or_else(|| reply.send(Reply::Char { sample, c }).is_err().then_some(Cut::Gone)),
                        None => Some(Cut::Gone),
                    };
                    match why {
                        Some(why) => {
                            cuts.insert(r, why);
                            ControlFlow::Break(())
                        }
                        None => ControlFlow::Continue(()),
                    }
                },
                &mut |r, samples| finished.push((r, samples)),
            )
        }));
        for (r, samples) in finished {
            if let Some((reply, size)) = running.remove(&r) {
                conclude(stats, &reply, cuts.get(&r).copied(), samples, size);
            }
        }
        stats.running.store(running.len(), Ordering::Relaxed);
        if !matches!(step, Ok(Ok(()))) {
            let message = match step {
                Ok(Err(e)) => e.to_string(),
                _ => "generation failed inside libtorch".to_string(),
            };
            running.drain().for_each(|(_, (reply, _))| drop(reply.send(Reply::Failed(message.clone()))));
            stats.running.store(0, Ordering::Relaxed);
            batch = Batch::new(&model, &vocab);
        }
    }
}

/// Runs one beam search and sends its replies: each continuation's characters, then all of them. The search
/// stops at the next step when its client goes away or the server is stopping.
fn beam(model: &Network, vocab: &Vocabulary, job: Job, stats: &Stats, stopping: &AtomicBool) {
    let mut why = None;
    let run = || {
        let on_char = &mut |sample, c| {
            let _ = job.reply.send(Reply::Char { sample, c });
            ControlFlow::Continue(())
        };
        let keep_going = &mut || {
            why = cut(&job.reply, stopping);
            if why.is_some() {
                ControlFlow::Break(())
            } else {
                stats.steps.fetch_add(1, Ordering::Relaxed);
                ControlFlow::Continue(())
            }
        };
        generate_until(model, vocab, &job.request.prefix, &job.request.generate, on_char, keep_going)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(beams)) => conclude(stats, &job.reply, why, beams, 1),
        Ok(Err(e)) => drop(job.reply.send(Reply::Failed(e.to_string()))),
        Err(_) => drop(job.reply.send(Reply::Failed("generation failed inside libtorch".into()))),
    }
}

/// Counts `joined` requests joining the generation, which now runs `running` together.
fn record(stats: &Stats, joined: usize, running: usize) {
    stats.requests.fetch_add(joined, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.largest_batch.fetch_max(running, Ordering::Relaxed);
}
