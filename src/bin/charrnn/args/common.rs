//! What several subcommands' arguments share: the device flags, and the names of the argument groups that
//! `--resume` and `--init-from` refuse.
use charrnn::DeviceSpec;
use clap::Args;

/// The argument groups whose flags a resumed run refuses (and, for [`ARCH`], `--init-from` too).
/// The argument group of [`train::NewRunArgs`].
pub(crate) const NEW_RUN: &str = "new-run";
/// The argument group of [`train::ArchArgs`].
pub(crate) const ARCH: &str = "arch";
/// The argument group of [`generate::DrawArgs`].
pub(crate) const DRAW: &str = "draw";

/// Where libtorch computes (shared by train, predict, serve and eval).
#[derive(Args)]
pub struct DeviceArgs {
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceSpec::Auto, value_name = "D")]
    pub device: DeviceSpec,
    /// CPU threads for libtorch [default: one per core for train and eval, 1 for predict and serve].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}
