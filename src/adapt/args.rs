//! The adaptation options, declared once with clap: `skillgraft adapt` takes them as flags
//! (`--method finetune --epochs 30`), and the node's `~/adapt` request as words
//! (`finetune epochs=30`) that [`words_to_flags`] turns into the same flags for the same parser,
//! so the two grammars cannot drift apart.

use std::path::PathBuf;

use super::device::Device;
use super::finetune::Settings;
use super::{Method, Options};

/// The method's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MethodName {
    /// Closed-form re-fit of the last layer.
    #[default]
    Ridge,
    /// AdamW on the last layers.
    Finetune,
    /// The last layer as Bayesian linear regression on per-demonstration statistics.
    Bayes,
}

/// How to adapt: the method and its settings. The finetune settings are options so that one
/// given with ridge is refused rather than ignored; their defaults are [`Settings::default`].
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct MethodArgs {
    /// ridge: closed-form re-fit of the last layer; finetune: AdamW on the last --layers layers;
    /// bayes: the last layer from statistics kept per demonstration (from one demonstration on,
    /// written beside the adapted skill as continual.stats, continued and merged with --merge).
    #[arg(long, value_enum, default_value = "ridge")]
    pub method: MethodName,
    /// Fraction by which the held-out error must fall for the skill to be accepted.
    #[arg(long, default_value_t = 0.05, value_parser = non_negative)]
    pub margin: f64,
    /// Most folds of the held-out evaluation (whole episodes per fold).
    #[arg(long, default_value_t = 5, value_parser = count)]
    pub folds: usize,
    /// Threads for the fitting (default: every core for `adapt`, 1 in the node).
    #[arg(long, value_parser = count)]
    pub threads: Option<usize>,
    /// bayes: start from these statistics (a continual.stats file, or an adapted skill folder
    /// holding one): this robot's earlier ones to continue, other robots' to merge. Repeatable.
    #[arg(long, value_name = "STATS")]
    pub merge: Vec<PathBuf>,
    /// finetune: layers trained, counted from the output (default: the whole head).
    #[arg(long, value_parser = count)]
    pub layers: Option<usize>,
    /// finetune: most epochs [default: 50].
    #[arg(long, value_parser = count)]
    pub epochs: Option<usize>,
    /// finetune: samples per mini-batch [default: 256].
    #[arg(long, value_parser = count)]
    pub batch: Option<usize>,
    /// finetune: AdamW learning rate [default: 1e-3].
    #[arg(long, value_parser = non_negative)]
    pub lr: Option<f64>,
    /// finetune: pull toward the source weights (L2-SP, decoupled like AdamW's decay) [default: 1e-2].
    #[arg(long, value_parser = non_negative)]
    pub pull: Option<f64>,
    /// finetune: epochs without a better held-out loss before stopping [default: 5].
    #[arg(long, value_parser = count)]
    pub patience: Option<usize>,
    /// finetune: seed of the batch order (the same seed and threads, the same result) [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// finetune: start the last layer from the ridge fit (true) or from the source's weights
    /// [default: true].
    #[arg(long, value_name = "BOOL")]
    pub ridge_init: Option<bool>,
    /// finetune: auto (the GPU when this build has the `cuda` feature and CUDA works, else the
    /// CPU), cpu or cuda [default: auto for `adapt`, the node's adapt_device in the node].
    #[arg(long)]
    pub device: Option<Device>,
}

/// A finetune setting given with ridge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{0} applies to --method finetune; ridge and bayes re-fit the last layer in closed form")]
pub struct FinetuneOnly(pub &'static str);

impl MethodArgs {
    /// The finetune settings given, by name (the names of the `~/adapt` keys).
    fn finetune_given(&self) -> Option<&'static str> {
        [
            ("layers", self.layers.is_some()),
            ("epochs", self.epochs.is_some()),
            ("batch", self.batch.is_some()),
            ("lr", self.lr.is_some()),
            ("pull", self.pull.is_some()),
            ("patience", self.patience.is_some()),
            ("seed", self.seed.is_some()),
            ("ridge_init", self.ridge_init.is_some()),
            ("device", self.device.is_some()),
        ]
        .into_iter()
        .find_map(|(name, given)| given.then_some(name))
    }

    /// The method asked for, its unset settings at their defaults.
    pub fn method(&self) -> Result<Method, FinetuneOnly> {
        match self.method {
            MethodName::Ridge => match self.finetune_given() {
                Some(name) => Err(FinetuneOnly(name)),
                None => Ok(Method::Ridge),
            },
            MethodName::Bayes => match self.finetune_given() {
                Some(name) => Err(FinetuneOnly(name)),
                None => Ok(Method::Bayes),
            },
            MethodName::Finetune => {
                let d = Settings::default();
                let settings = Settings {
                    epochs: self.epochs.unwrap_or(d.epochs),
                    batch: self.batch.unwrap_or(d.batch),
                    lr: self.lr.unwrap_or(d.lr),
                    pull: self.pull.unwrap_or(d.pull),
                    patience: self.patience.unwrap_or(d.patience),
                    seed: self.seed.unwrap_or(d.seed),
                };
                Ok(Method::Finetune { layers: self.layers, settings, ridge_init: self.ridge_init.unwrap_or(true) })
            }
        }
    }

    /// The options of [`super::adapt`]: `threads` and `device` are the caller's defaults.
    pub fn options(&self, threads: usize, device: Device, cache: Option<PathBuf>) -> Result<Options, FinetuneOnly> {
        Ok(Options {
            method: self.method()?,
            margin: self.margin,
            folds: self.folds,
            cache,
            threads: self.threads.unwrap_or(threads),
            device: self.device.unwrap_or(device),
            merge: self
                .merge
                .iter()
                .map(|p| if p.is_dir() { p.join(super::continual::STATS_FILE) } else { p.clone() })
                .collect(),
        })
    }
}

/// A value clap refused; says what to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("give {0}")]
pub struct ValueError(&'static str);

/// A whole number above 0.
pub(crate) fn count(s: &str) -> Result<usize, ValueError> {
    s.parse::<usize>().ok().filter(|v| *v > 0).ok_or(ValueError("a whole number above 0"))
}

/// A finite number, 0 or more.
pub fn non_negative(s: &str) -> Result<f64, ValueError> {
    s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or(ValueError("a number, 0 or more"))
}

/// A word of a request that is not `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not key=value")]
pub struct NotKeyValue(pub String);

/// `METHOD key=value ...` as the flags `--method=METHOD --key=value ...` (`_` in a key becomes
/// `-`); an empty text is `ridge`.
pub fn words_to_flags(text: &str) -> Result<Vec<String>, NotKeyValue> {
    let mut words = text.split_whitespace();
    let method = words.next().unwrap_or("ridge");
    let mut flags = vec![format!("--method={method}")];
    for word in words {
        let (key, value) = word.split_once('=').ok_or_else(|| NotKeyValue(word.to_string()))?;
        flags.push(format!("--{}={value}", key.replace('_', "-")));
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        how: MethodArgs,
    }

    #[test]
    fn flags_and_words_give_the_same_options() {
        let flags = Cli::parse_from(["x", "--method", "finetune", "--epochs", "30", "--ridge-init", "false"]).how;
        let mut argv = vec!["x".to_string()];
        argv.extend(words_to_flags("finetune epochs=30 ridge_init=false").unwrap());
        let words = Cli::parse_from(argv).how;
        assert_eq!(flags, words);
        let Method::Finetune { settings, ridge_init, .. } = words.method().unwrap() else { panic!("finetune") };
        assert_eq!((settings.epochs, settings.batch, ridge_init), (30, Settings::default().batch, false));
        let ridge = Cli::parse_from(["x", "--layers", "1"]).how;
        assert_eq!(ridge.method(), Err(FinetuneOnly("layers")));
        assert_eq!(words_to_flags("ridge fast"), Err(NotKeyValue("fast".into())));
    }
}
