//! `charrnn prepare`: a corpus written explicitly as a token file, its folders read as `train` reads them.
use crate::commands::load::not_text_note;
use crate::data::prepared::{prepare, PreparedHeader};
use crate::data::text::{select_sources, CorpusOptions, Selection};
use crate::error::Result;
use std::path::{Path, PathBuf};

/// Runs `charrnn prepare`: the text of `paths` (files and folders: a folder's text files that `select`
/// chooses, as `train --corpus` reads them) read with `options` into the token file `out`; returns its
/// header and what the user should know (the files left out as not text), a line each.
pub fn run_prepare(
    paths: &[PathBuf],
    options: &CorpusOptions,
    select: &Selection,
    out: &Path,
) -> Result<(PreparedHeader, Vec<String>)> {
    options.validate()?;
    let (files, not_text) = select_sources(paths, select)?;
    let header = prepare(&files, options, out)?;
    Ok((header, not_text_note(&not_text).into_iter().collect()))
}
