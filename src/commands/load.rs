//! What several commands load the same way: a model folder (the one given, or the last one trained here),
//! the corpus a model folder records, and what they say of a text they read.
use crate::data::corpus::load_selected;
use crate::data::prepared::{Prepared, PreparedHeader};
use crate::data::text::{CorpusOptions, Selection};
use crate::device::DeviceSpec;
use crate::error::{io_reason, Error, Result};
use crate::store::layout::resolve_model_dir;
use crate::store::load::{load, LoadedModel};
use std::path::{Path, PathBuf};

/// Loads the model of `--model` (or the last one trained here) onto `device`.
pub fn load_model(model_dir: Option<&Path>, device: DeviceSpec) -> Result<LoadedModel> {
    let dir = resolve_model_dir(model_dir)?;
    load(&dir, device.resolve()?)
}

/// The text of `paths` read with `options`; when `recorded` (the paths are the ones a model folder
/// recorded, not given by the user), a file that cannot be read is an error that says so and that `fix`
/// (how to pass another corpus) is the way on.
pub(crate) fn load_text(
    paths: &[PathBuf],
    options: &CorpusOptions,
    select: &Selection,
    recorded: Option<(&str, &str)>,
) -> Result<Prepared> {
    match (load_selected(paths, options, select).map(|(prepared, _)| prepared), recorded) {
        (Err(Error::Io { path, reason }), Some((whose, fix))) => {
            let reason = format!("{whose} {} cannot be read ({}); {fix}", path.display(), io_reason(&reason));
            Err(Error::config("--corpus", reason))
        }
        (prepared, _) => prepared,
    }
}

/// A note naming the files of a folder corpus left out because they are not text, when there were any.
pub(crate) fn not_text_note(files: &[PathBuf]) -> Option<String> {
    let (first, more) = (files.first()?, files.len() - 1);
    let rest = if more > 0 { format!(" and {more} more") } else { String::new() };
    Some(format!(
        "left out {} that {} not text (a NUL byte or invalid UTF-8 at the start): {}{rest}; --exclude leaves files out by name",
        if files.len() == 1 { "1 file".to_string() } else { format!("{} files", files.len()) },
        if files.len() == 1 { "is" } else { "are" },
        first.display()
    ))
}

/// A note that the byte-order marks at the start of the corpus's files were dropped, when there were any.
pub(crate) fn bom_note(header: &PreparedHeader) -> Option<String> {
    let what = match header.boms {
        0 => return None,
        1 if header.sources.len() == 1 => "the corpus starts with a byte-order mark (U+FEFF)".to_string(),
        n => format!("{n} of the corpus's {} files start with a byte-order mark (U+FEFF)", header.sources.len()),
    };
    Some(format!("{what}, which says how the text is encoded and is not part of it: dropped"))
}
