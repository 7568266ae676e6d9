//! The command line's names for the library's choices, with the help each shows. Each is mapped to the
//! library's enum and back by exhaustive matches, so a variant added to either side cannot be forgotten on
//! the other.

/// Declares a clap value for the library enum `$lib`: the same variants, each with its help text, and the
/// conversions both ways.
macro_rules! choice {
    ($(#[doc = $doc:literal])* $arg:ident => $lib:ident { $($(#[doc = $vdoc:literal])* $v:ident),+ $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
        pub enum $arg {
            $($(#[doc = $vdoc])* $v),+
        }

        impl From<$arg> for charrnn::$lib {
            fn from(a: $arg) -> Self {
                match a {
                    $($arg::$v => charrnn::$lib::$v),+
                }
            }
        }

        impl From<charrnn::$lib> for $arg {
            fn from(l: charrnn::$lib) -> Self {
                match l {
                    $(charrnn::$lib::$v => $arg::$v),+
                }
            }
        }
    };
}

choice! {
    /// `--cell`.
    CellArg => Cell {
        /// The textbook's tanh RNN: h = tanh(x W_xh + h W_hh + b_h).
        Rnn,
        /// Gated recurrent unit (reset and update gates), as PyTorch and cuDNN define it.
        Gru,
        /// Long short-term memory (input, forget and output gates, a memory cell).
        Lstm,
    }
}

choice! {
    /// `--init`.
    InitArg => Init {
        /// The textbook's: weights N(0, 0.01), biases 0.
        Normal,
        /// PyTorch's default for its recurrent and linear layers: every weight and bias U(-1/sqrt(H), 1/sqrt(H)).
        Uniform,
    }
}

choice! {
    /// `--optimizer`.
    OptimizerArg => OptimizerKind {
        /// p <- p - lr * grad (the textbook's).
        Sgd,
        /// Adam with betas 0.9 and 0.999, eps 1e-8, computed as torch.optim.Adam computes it.
        Adam,
    }
}

choice! {
    /// `--sampling`.
    SamplingArg => BatchOrder {
        /// Non-overlapping subsequences in random order; each minibatch starts from a zero state.
        Random,
        /// Each row of a minibatch continues where it ended in the one before; the state is carried, detached.
        Consecutive,
    }
}

choice! {
    /// `--on-diverge`.
    OnDivergeArg => OnDiverge {
        /// Stop with an error; the last checkpoint stays as it was.
        Stop,
        /// Go back to the end of the last good epoch with a lower learning rate and carry on.
        Rollback,
    }
}

choice! {
    /// `--unknown`.
    UnknownArg => UnknownChars {
        /// Refuse the text, naming the characters the model does not know.
        Error,
        /// Leave them out (with a warning).
        Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The command line names each value as the library (and model.json) does.
    fn agree<A: ValueEnum + Into<L>, L: std::fmt::Display>() {
        for a in A::value_variants() {
            let name = a.to_possible_value().expect("no variant is skipped").get_name().to_string();
            assert_eq!(name, a.clone().into().to_string());
        }
    }

    #[test]
    fn names_agree_with_the_library() {
        agree::<CellArg, charrnn::Cell>();
        agree::<InitArg, charrnn::Init>();
        agree::<OptimizerArg, charrnn::OptimizerKind>();
        agree::<SamplingArg, charrnn::BatchOrder>();
        agree::<OnDivergeArg, charrnn::OnDiverge>();
        agree::<UnknownArg, charrnn::UnknownChars>();
    }
}
