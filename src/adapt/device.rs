//! Where fine-tuning runs: `--device auto|cpu|cuda` (and the node's `adapt_device`) picks the
//! backend of the one training loop. `auto` takes the GPU when this build has the `cuda` feature
//! and the machine has a working CUDA driver, GPU and libraries, and otherwise the CPU, saying
//! why in the log. Ridge is a closed-form solve and always runs on the CPU.

use std::fmt;
use std::str::FromStr;

use super::compute::{ComputeError, Cpu, Threads};
use super::finetune::{self, Data, Epoch, Settings, Shape, Trained};
use crate::model::head::LayerParams;

/// The device asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The GPU when there is a usable one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The GPU, or an error saying why not.
    Cuda,
}

/// A device that cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not a device name.
    #[error("device {0:?}: give auto, cpu or cuda")]
    Unknown(String),
    /// `cuda` was asked for and no GPU can be used; the message says why.
    #[error("device cuda: {0}; use device auto or cpu")]
    NoCuda(String),
}

impl FromStr for Device {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Device, DeviceError> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(DeviceError::Unknown(other.to_string())),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// A training backend, ready to run.
pub enum Backend {
    /// The CPU backend.
    Cpu(Cpu<f32>),
    /// The CUDA backend.
    #[cfg(feature = "cuda")]
    Cuda(Box<super::cuda::CudaCompute>),
}

/// Why this build cannot use a GPU at all.
#[cfg(not(feature = "cuda"))]
const NOT_BUILT: &str =
    "this skillgraft was built without the `cuda` feature; rebuild it with `cargo build --release --features cuda`";

impl Backend {
    /// The backend for `device`, the CPU one with `threads`. `Cuda` fails with the reason when no
    /// GPU can be used; `Auto` then logs the reason and takes the CPU.
    pub fn select(device: Device, threads: Threads) -> Result<Backend, DeviceError> {
        let cpu = || Backend::Cpu(Cpu::with_threads(threads.clone()));
        match device {
            Device::Cpu => Ok(cpu()),
            Device::Cuda => Backend::cuda().map_err(DeviceError::NoCuda),
            Device::Auto => match Backend::cuda() {
                Ok(b) => Ok(b),
                Err(why) => {
                    tracing::info!("fine-tuning on the CPU: {why}");
                    Ok(cpu())
                }
            },
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda() -> Result<Backend, String> {
        let cache = super::cuda::cache_dir();
        let gpu = super::cuda::CudaCompute::new(0, cache.as_deref()).map_err(|e| e.to_string())?;
        tracing::info!(
            "fine-tuning on the GPU: {} (kernels {})",
            gpu.describe(),
            match gpu.origin() {
                super::cuda::Origin::Cached => "from the cache",
                super::cuda::Origin::Compiled => "compiled by NVRTC",
            }
        );
        Ok(Backend::Cuda(Box::new(gpu)))
    }

    #[cfg(not(feature = "cuda"))]
    fn cuda() -> Result<Backend, String> {
        Err(NOT_BUILT.into())
    }

    /// What the backend is, for reports: `cpu` or `cuda: NAME (compute_XY)`.
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu(_) => "cpu".into(),
            #[cfg(feature = "cuda")]
            Backend::Cuda(g) => format!("cuda: {}", g.describe()),
        }
    }

    /// [`finetune::train`] on this backend.
    #[allow(clippy::too_many_arguments)]
    pub fn train(
        &self,
        shapes: &[Shape],
        init: &[LayerParams],
        source: &[LayerParams],
        train: &Data,
        held_out: Option<&Data>,
        s: &Settings,
        on_epoch: &mut dyn FnMut(&Epoch),
    ) -> Result<Trained, ComputeError> {
        match self {
            Backend::Cpu(c) => finetune::train(c, shapes, init, source, train, held_out, s, on_epoch),
            #[cfg(feature = "cuda")]
            Backend::Cuda(g) => finetune::train(g.as_ref(), shapes, init, source, train, held_out, s, on_epoch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_a_bad_one_says_what_to_give() {
        for d in [Device::Auto, Device::Cpu, Device::Cuda] {
            assert_eq!(d.to_string().parse::<Device>(), Ok(d));
        }
        assert!("gpu".parse::<Device>().unwrap_err().to_string().contains("auto, cpu or cuda"));
    }

    #[test]
    fn cuda_is_used_where_it_works_and_otherwise_refused_with_the_reason_while_auto_falls_back() {
        let auto = Backend::select(Device::Auto, Threads::default()).unwrap();
        assert_eq!(Backend::select(Device::Cpu, Threads::default()).unwrap().describe(), "cpu");
        match Backend::select(Device::Cuda, Threads::default()) {
            Ok(gpu) => {
                assert!(gpu.describe().starts_with("cuda: "), "{}", gpu.describe());
                assert_eq!(auto.describe(), gpu.describe(), "auto takes the GPU that works");
            }
            Err(why) => {
                assert_eq!(auto.describe(), "cpu", "auto falls back to the CPU");
                #[cfg(not(feature = "cuda"))]
                assert!(why.to_string().contains("--features cuda"), "{why}");
                #[cfg(feature = "cuda")]
                {
                    let why = why.to_string();
                    assert!(why.contains("CUDA") || why.contains("NVRTC") || why.contains("cuBLAS"), "{why}");
                }
            }
        }
    }
}
