//! Model folders: the layout of a model folder, what `model.json` holds, saving (crash-safe) and loading,
//! the checkpointer that the training loop's observer lands in, the metrics log, the chart and the lock
//! that keeps one writer per folder.
pub(crate) mod chart;
pub(crate) mod checkpointer;
pub(crate) mod format;
pub(crate) mod html;
pub(crate) mod layout;
pub(crate) mod load;
pub(crate) mod lock;
pub(crate) mod metrics;
pub(crate) mod onnx;
pub(crate) mod onnx_proto;
pub(crate) mod save;

pub use chart::{perplexity_svg, Curve};
pub use format::{version_for, CorpusInfo, ModelFile, Origin, ResumeInfo, Stretch, ValidationInfo, FORMAT, VERSION};
pub use html::export_html;
pub use layout::{
    default_out, record_last_model, resolve_model_dir, LAST_DIR, LAST_MODEL, METRICS_FILE, MODEL_JSON, PLOT_FILE,
    RUNS_DIR,
};
pub use load::{load, load_state, origin, read_model_file, LoadedModel};
pub use metrics::{read_metrics, MetricsLine};
pub use onnx::export_onnx;
pub use save::save_parts;
