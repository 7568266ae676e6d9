//! What several subcommands' arguments share: the device flags, durations as people write them, and the
//! names of the argument groups that `--resume` and `--init-from` refuse.
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

/// A duration as people write it: a number of seconds (`90`), or numbers each with a unit, added up (`90s`,
/// `4min`, `1h30m`, `1.5h`, `2 days`): s, sec, second; m, min, minute; h, hr, hour; d, day (and their
/// plurals). Positive, finite.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let expected = "expected a duration such as 90s, 4min, 1h30m or 2h";
    let text = s.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return positive(seconds).ok_or_else(|| format!("{s:?} is not a positive duration; {expected}"));
    }
    let (mut total, mut rest) = (0.0, text);
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().map_err(|_| format!("{s:?} is not a duration; {expected}"))?;
        let after = rest[number_len..].trim_start();
        let unit_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let scale = match after[..unit_len].to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "" => return Err(format!("{s:?}: a number without a unit after another; {expected}")),
            unit => return Err(format!("unknown unit {unit:?} in {s:?}; {expected}")),
        };
        total += number * scale;
        rest = after[unit_len..].trim_start();
    }
    positive(total).ok_or_else(|| format!("{s:?} is not a positive duration; {expected}"))
}

/// [`parse_duration`], or `0` (none).
pub(crate) fn parse_duration_or_zero(s: &str) -> Result<std::time::Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(0.0) => Ok(std::time::Duration::ZERO),
        _ => parse_duration(s),
    }
}

/// `seconds` as a duration, if it is positive and finite.
fn positive(seconds: f64) -> Option<std::time::Duration> {
    (seconds.is_finite() && seconds > 0.0).then(|| std::time::Duration::from_secs_f64(seconds))
}
