//! The data layer: reading text, the vocabulary, prepared token files and their cache, a corpus in a given
//! vocabulary, and the minibatches cut from it.
pub(crate) mod batches;
pub(crate) mod corpus;
pub(crate) mod prepared;
pub(crate) mod text;
pub(crate) mod tokens;
pub(crate) mod vocab;
