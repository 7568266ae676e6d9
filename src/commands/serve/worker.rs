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
    /// All samples, and how many requests were generated in the batch with this one (itself included).
    Done { samples: Vec<Generated>, batch: usize },
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
}

/// The worker: generates the sampled and greedy requests together in one [`Batch`], which a request joins
/// as soon as it arrives (at the next step) while fewer than `max_batch` run, and the beam searches one by
/// one between steps; sends each request its replies, the last as soon as its own rows are done. Ends when
/// the queue's sender is gone and nothing runs. A request whose client went away leaves the batch;
/// `stopping` ends every running request.
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
                beam(&model, &vocab, job);
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
        if batch.is_empty() {
            continue;
        }
        // The batch size each request reports: the most requests it ran beside, itself included.
        let now = running.len();
        running.values_mut().for_each(|(_, size)| *size = (*size).max(now));
        let mut finished = Vec::new();
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batch.step(
                &mut |r, sample, c| {
                    let gone = running.get(&r).is_none_or(|(reply, _)| reply.send(Reply::Char { sample, c }).is_err());
                    if gone || stopping.load(Ordering::Relaxed) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
                &mut |r, samples| finished.push((r, samples)),
            )
        }));
        for (r, samples) in finished {
            if let Some((reply, size)) = running.remove(&r) {
                let _ = reply.send(Reply::Done { samples, batch: size });
            }
        }
        if !matches!(step, Ok(Ok(()))) {
            let message = match step {
                Ok(Err(e)) => e.to_string(),
                _ => "generation failed inside libtorch".to_string(),
            };
            running.drain().for_each(|(_, (reply, _))| drop(reply.send(Reply::Failed(message.clone()))));
            batch = Batch::new(&model, &vocab);
        }
    }
}

/// Runs one beam search and sends its replies: each continuation's characters, then all of them.
fn beam(model: &Network, vocab: &Vocabulary, job: Job) {
    let run = || {
        generate_until(model, vocab, &job.request.prefix, &job.request.generate, &mut |sample, c| {
            let _ = job.reply.send(Reply::Char { sample, c });
            ControlFlow::Continue(())
        })
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(beams)) => drop(job.reply.send(Reply::Done { samples: beams, batch: 1 })),
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
