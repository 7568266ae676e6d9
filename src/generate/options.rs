//! What to generate and what comes back: the options of a generation, checked once (the prefix, the length,
//! the samples, the stop string, the beam's width and the sampler's settings), and a generated continuation.
use crate::data::vocab::Vocabulary;
use crate::error::{Error, Result};
use crate::generate::sampler::Sampler;

/// The widest beam `predict --beam` accepts: each step scores `beam x V` candidates on the host.
pub const MAX_BEAM: usize = 1000;

/// Checks a beam's width is from 1 to `widest` (at most [`MAX_BEAM`]; a server may allow fewer).
pub(crate) fn check_beam(beam: usize, widest: usize) -> Result<()> {
    let widest = widest.min(MAX_BEAM);
    if !(1..=widest).contains(&beam) {
        return Err(Error::config("--beam", format!("must be from 1 to {widest}, got {beam}")));
    }
    Ok(())
}

/// The prefix's characters as indices of `vocab`: it must not be empty, and `vocab` must know each of them.
pub(crate) fn prefix_ids(vocab: &Vocabulary, prefix: &str) -> Result<Vec<i64>> {
    if prefix.is_empty() {
        return Err(Error::config("--prefix", "must not be empty"));
    }
    vocab.encode(prefix, "the prefix")
}

/// Characters `predict` generates when not told how many.
pub const DEFAULT_NUM_CHARS: usize = 200;
/// The most characters one generation may ask for (what it keeps, 4 bytes a character per sample, stays
/// within tens of megabytes).
pub const MAX_NUM_CHARS: usize = 10_000_000;

/// What to generate.
#[derive(Debug, Clone, Default)]
pub struct Generate {
    /// Characters to generate after the prefix (fewer if `stop` comes first).
    pub num_chars: usize,
    /// Independent continuations, generated together as one batch.
    pub samples: usize,
    /// End a sample as soon as its generated text ends with this string (kept in the text).
    pub stop: Option<String>,
    /// How characters are chosen.
    pub sampler: Sampler,
    /// Record each generated character's probability in [`Generated::probs`] (a softmax over the vocabulary
    /// per character on the host: about a third of greedy generation's time, so off unless asked for).
    pub probs: bool,
    /// Beam search of this width instead of drawing ([`crate::beam_search`]): the `beam` most likely
    /// continuations, each with its probabilities and total log probability. 0: off. Needs greedy
    /// settings (temperature 0, no top-k or top-p) and one sample.
    pub beam: usize,
}

impl Generate {
    /// Checks the settings are in range (at least one sample, a non-empty stop string, the sampler's).
    pub fn validate(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::config("--samples", "must be at least 1"));
        }
        if self.num_chars > MAX_NUM_CHARS {
            let reason = format!(
                "{} is more than the {MAX_NUM_CHARS} characters one run may generate; run several",
                self.num_chars
            );
            return Err(Error::config("--num-chars", reason));
        }
        if self.stop.as_deref() == Some("") {
            return Err(Error::config("--stop", "must not be empty"));
        }
        if self.beam > 0 {
            let s = &self.sampler;
            if s.temperature != 0.0 || s.top_k != 0 || s.top_p < 1.0 {
                return Err(Error::config(
                    "--beam",
                    "searches for the most likely continuations: it cannot be combined with --temperature, --top-k or --top-p",
                ));
            }
            if self.samples != 1 {
                return Err(Error::config("--beam", "gives the N most likely continuations itself: drop --samples"));
            }
            check_beam(self.beam, MAX_BEAM)?;
        }
        self.sampler.validate()
    }

    /// How many continuations come back: the beam's width with beam search, else the samples.
    pub fn outputs(&self) -> usize {
        if self.beam > 0 {
            self.beam
        } else {
            self.samples
        }
    }
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generated {
    /// The prefix followed by the generated characters.
    pub text: String,
    /// The generated characters alone.
    pub generated: String,
    /// For each generated character, the probability the model gave it (softmax of the logits, temperature
    /// 1, before any filtering); empty unless [`Generate::probs`] asks for it.
    pub probs: Vec<f64>,
    /// Whether it ended at the stop string.
    pub stopped: bool,
    /// With beam search, the total log probability of the generated characters given the prefix (natural
    /// log): `sum ln probs`.
    pub log_prob: Option<f64>,
}
