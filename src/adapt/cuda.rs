//! The CUDA backend of head training (cargo feature `cuda`): the same primitives as the CPU
//! backend, so the one training loop runs on the GPU and leaves the CPU cores to the control
//! loop. Matrix products go to cuBLAS (row-major through the transpose identity); the
//! element-wise kernels are the CUDA C in [`SOURCE`], compiled by NVRTC at start-up for the
//! device's architecture and cached on disk. Every library is loaded at run time, so building
//! needs no CUDA toolkit, and a machine without one gets an error (or, with `auto`, the CPU),
//! never a crash.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx};
use sha2::{Digest, Sha256};

use super::compute::{AdamStep, Compute, ComputeError};
use crate::model::head::Activation;

/// The element-wise kernels. Activations and sums run in double, as the CPU backend computes
/// them, so both round to the same f32 almost always; AdamW runs in float with the CPU's
/// operation order. Both are compiled with `--fmad=false`: a fused multiply-add rounds once where
/// the CPU rounds twice, and that alone would make the backends drift apart.
pub const SOURCE: &str = r#"
__device__ double act_f(int act, double a, double x) {
    switch (act) {
    case 1: return fmax(x, 0.0);
    case 2: return x >= 0.0 ? x : a * x;
    case 3: return tanh(x);
    case 4: return 1.0 / (1.0 + exp(-x));
    case 5: return x >= 0.0 ? x : a * expm1(x);
    case 6: return 0.5 * x * (1.0 + erf(x / 1.4142135623730951));
    case 7: return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    case 8: return x / (1.0 + exp(-x));
    default: return x;
    }
}

__device__ double act_d(int act, double a, double x) {
    switch (act) {
    case 1: return x > 0.0 ? 1.0 : 0.0;
    case 2: return x >= 0.0 ? 1.0 : a;
    case 3: { double t = tanh(x); return 1.0 - t * t; }
    case 4: { double s = 1.0 / (1.0 + exp(-x)); return s * (1.0 - s); }
    case 5: return x >= 0.0 ? 1.0 : a * exp(x);
    case 6: {
        double cdf = 0.5 * (1.0 + erf(x / 1.4142135623730951));
        double pdf = exp(-0.5 * x * x) / sqrt(2.0 * 3.141592653589793);
        return cdf + x * pdf;
    }
    case 7: {
        double u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
        double t = tanh(u);
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
    }
    case 8: { double s = 1.0 / (1.0 + exp(-x)); return s + x * s * (1.0 - s); }
    default: return 1.0;
    }
}

extern "C" __global__ void bias_act_forward(float* z, const float* bias, long long rows, int cols, int act,
                                            double a, float* out) {
    long long n = rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        double v = (double)z[i] + (double)bias[i % cols];
        z[i] = (float)v;
        out[i] = (float)act_f(act, a, v);
    }
}

extern "C" __global__ void act_backward(float* grad, const float* z, long long n, int act, double a) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        grad[i] = (float)((double)grad[i] * act_d(act, a, (double)z[i]));
    }
}

extern "C" __global__ void column_sums(const float* x, long long rows, int cols, float* out) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    double acc = 0.0;
    for (long long r = 0; r < rows; r++) acc += (double)x[r * cols + c];
    out[c] = (float)acc;
}

// One block: the loss is a single number, and the deterministic tree gives the same sum every run.
extern "C" __global__ void mse(const float* pred, const float* target, long long n, double scale, float* grad,
                               double* loss) {
    __shared__ double part[1024];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        double d = (double)pred[i] - (double)target[i];
        acc += d * d;
        grad[i] = (float)(scale * d);
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) loss[0] = part[0];
}

extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, const float* src, long long n,
                                 float b1, float b2, float nb1, float nb2, float step, float unbias_v, float decay,
                                 float eps) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float gi = g[i];
        float mi = b1 * m[i] + nb1 * gi;
        float vi = b2 * v[i] + nb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] - decay * (p[i] - src[i]) - step * mi / (sqrtf(vi * unbias_v) + eps);
    }
}

extern "C" __global__ void gather_rows(const float* x, const unsigned* idx, long long rows, int cols, float* out) {
    long long n = rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / cols;
        out[i] = x[(long long)idx[r] * cols + (i - r * cols)];
    }
}
"#;

/// The kernels' names, as [`SOURCE`] defines them.
pub const KERNELS: [&str; 6] = ["bias_act_forward", "act_backward", "column_sums", "mse", "adamw", "gather_rows"];

/// NVRTC options besides the architecture (see [`SOURCE`] for why fused multiply-adds are off).
const OPTIONS: [&str; 3] = ["--fmad=false", "--prec-sqrt=true", "--prec-div=true"];

/// Threads per block of the element-wise kernels.
const BLOCK: u32 = 256;

/// Why the CUDA backend is not available.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unavailable {
    /// libcuda cannot be loaded.
    #[error("the CUDA driver library (libcuda.so) is not installed or not on the library path")]
    NoDriver,
    /// libcublas cannot be loaded.
    #[error("cuBLAS (libcublas.so) is not installed or not on the library path; on a Jetson it comes with JetPack")]
    NoCublas,
    /// libnvrtc cannot be loaded.
    #[error("NVRTC (libnvrtc.so) is not installed or not on the library path; on a Jetson it comes with JetPack")]
    NoNvrtc,
    /// The driver sees no GPU.
    #[error("the CUDA driver sees no GPU ({0})")]
    NoDevice(String),
    /// Starting the device failed.
    #[error("the CUDA device could not be started: {0}")]
    Init(String),
    /// The kernels would not compile or load.
    #[error("the CUDA kernels could not be prepared: {0}")]
    Kernels(String),
}

/// Whether NVRTC can be loaded (the kernels compile without a GPU).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether the CUDA driver library can be loaded; creating a context without it panics, so
/// every path probes this first.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// NVRTC's version, `major.minor`.
pub fn nvrtc_version() -> Result<String, Unavailable> {
    if !nvrtc_present() {
        return Err(Unavailable::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC writes two ints through the pointers.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    r.result().map_err(|e| Unavailable::Kernels(format!("nvrtcVersion: {e:?}")))?;
    Ok(format!("{major}.{minor}"))
}

/// Compiles [`SOURCE`] to PTX for `arch` (`compute_87`, `compute_90`, ...) with NVRTC.
pub fn compile(arch: &str) -> Result<String, Unavailable> {
    if !nvrtc_present() {
        return Err(Unavailable::NoNvrtc);
    }
    let mut options: Vec<String> = OPTIONS.iter().map(|o| o.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    let opts = CompileOptions { options, name: Some("skillgraft_kernels.cu".into()), ..Default::default() };
    match cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
            Err(Unavailable::Kernels(format!("NVRTC rejected the kernels for {arch}: {}", log.to_string_lossy())))
        }
        Err(e) => Err(Unavailable::Kernels(format!("NVRTC failed for {arch}: {e:?}"))),
    }
}

/// The PTX ISA version a PTX text declares (`.version 8.5` gives (8, 5)).
pub fn ptx_isa(ptx: &str) -> Option<(u32, u32)> {
    let line = ptx.lines().find_map(|l| l.trim().strip_prefix(".version"))?;
    let (major, minor) = line.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The folder of the kernel cache: `$SKILLGRAFT_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/skillgraft/kernels`, else `~/.cache/skillgraft/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("SKILLGRAFT_KERNEL_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("skillgraft/kernels")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/skillgraft/kernels")))
}

const CHECKSUM: &str = "// skillgraft-sha256 ";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where the PTX for `arch` from NVRTC `version` lives in `dir`: the name carries a hash of the
/// source, the options, the architecture and the NVRTC version, so any change misses the cache.
pub fn cache_file(dir: &Path, arch: &str, version: &str) -> PathBuf {
    let key = sha256_hex(format!("{SOURCE}\0{}\0{arch}\0{version}", OPTIONS.join(" ")).as_bytes());
    dir.join(format!("kernels-{arch}-{}.ptx", &key[..16]))
}

/// The cached PTX in `path`, if the file is whole: its last line is the checksum of the rest.
fn read_cached(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let body = text.strip_suffix('\n')?;
    let (ptx, sum) = body.rsplit_once('\n')?;
    let ok = sum.strip_prefix(CHECKSUM) == Some(sha256_hex(ptx.as_bytes()).as_str())
        && !ptx.contains('\0')
        && KERNELS.iter().all(|k| ptx.contains(&format!(".entry {k}(")));
    ok.then(|| ptx.to_string())
}

/// Writes `ptx` with its checksum to `path` through a temporary file and a rename, so a reader
/// never sees half a file.
fn write_cached(path: &Path, ptx: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{ptx}\n{CHECKSUM}{}\n", sha256_hex(ptx.as_bytes())))?;
    std::fs::rename(&tmp, path)
}

/// Where the kernels came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the cache.
    Cached,
    /// Compiled now (and written to the cache when there is one).
    Compiled,
}

/// The PTX for `arch`: from the cache in `dir` when a whole entry is there, else compiled and
/// stored. A damaged entry is compiled again and replaced; a cache that cannot be written only
/// costs the compile next time.
pub fn ptx_for(dir: Option<&Path>, arch: &str) -> Result<(String, Origin), Unavailable> {
    let version = nvrtc_version()?;
    let file = dir.map(|d| cache_file(d, arch, &version));
    if let Some(ptx) = file.as_deref().and_then(read_cached) {
        return Ok((ptx, Origin::Cached));
    }
    if let Some(f) = file.as_deref().filter(|f| f.exists()) {
        tracing::warn!("kernel cache entry {} is damaged; compiling the kernels again", f.display());
    }
    let ptx = compile(arch)?;
    if let Some(f) = &file
        && let Err(e) = write_cached(f, &ptx)
    {
        tracing::warn!("cannot write the kernel cache {}: {e}", f.display());
    }
    Ok((ptx, Origin::Compiled))
}

fn dev(what: &str) -> impl Fn(cudarc::driver::DriverError) -> ComputeError + '_ {
    move |e| ComputeError(format!("CUDA {what}: {e}"))
}

struct Kernels {
    bias_act_forward: CudaFunction,
    act_backward: CudaFunction,
    column_sums: CudaFunction,
    mse: CudaFunction,
    adamw: CudaFunction,
    gather_rows: CudaFunction,
}

/// The CUDA backend: a context on one GPU, a stream, a cuBLAS handle and the loaded kernels.
pub struct CudaCompute {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    idx: RefCell<CudaSlice<u32>>,
    loss: RefCell<CudaSlice<f64>>,
    device: String,
    arch: String,
    origin: Origin,
}

/// The activation as the kernels number it, with its parameter.
fn act_code(act: Activation) -> (i32, f64) {
    match act {
        Activation::Identity => (0, 0.0),
        Activation::Relu => (1, 0.0),
        Activation::LeakyRelu(a) => (2, a as f64),
        Activation::Tanh => (3, 0.0),
        Activation::Sigmoid => (4, 0.0),
        Activation::Elu(a) => (5, a as f64),
        Activation::GeluErf => (6, 0.0),
        Activation::GeluTanh => (7, 0.0),
        Activation::Silu => (8, 0.0),
    }
}

/// A grid-stride launch over `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

fn check(what: &str, ok: bool) -> Result<(), ComputeError> {
    if ok { Ok(()) } else { Err(ComputeError(format!("{what}: a buffer is smaller than the sizes given"))) }
}

impl CudaCompute {
    /// Starts GPU `ordinal`: probes the libraries, creates the context, and compiles (or reads
    /// from the cache in `cache`) the kernels for the device's architecture.
    pub fn new(ordinal: usize, cache: Option<&Path>) -> Result<CudaCompute, Unavailable> {
        if !driver_present() {
            return Err(Unavailable::NoDriver);
        }
        // SAFETY: only tries to open the libraries by their candidate names.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Unavailable::NoCublas);
        }
        if !nvrtc_present() {
            return Err(Unavailable::NoNvrtc);
        }
        // The libraries are there, so cudarc returns errors rather than panicking; a driver too
        // old for a symbol it asks for would still panic, and that too must end as an error.
        let start = std::panic::catch_unwind(|| -> Result<_, Unavailable> {
            match CudaContext::device_count() {
                Ok(n) if n as usize > ordinal => {}
                Ok(n) => return Err(Unavailable::NoDevice(format!("{n} device(s); GPU {ordinal} asked for"))),
                Err(e) => return Err(Unavailable::NoDevice(e.to_string())),
            }
            let ctx = CudaContext::new(ordinal).map_err(|e| Unavailable::Init(e.to_string()))?;
            let (major, minor) = ctx.compute_capability().map_err(|e| Unavailable::Init(e.to_string()))?;
            let name = ctx.name().map_err(|e| Unavailable::Init(e.to_string()))?;
            Ok((ctx, major, minor, name))
        });
        let (ctx, major, minor, name) = match start {
            Ok(r) => r?,
            Err(_) => return Err(Unavailable::Init("the CUDA driver library failed while starting".into())),
        };
        let arch = format!("compute_{major}{minor}");
        let (ptx, origin) = ptx_for(cache, &arch)?;
        let module = match ctx.load_module(Ptx::from_src(ptx.clone())) {
            Ok(m) => m,
            Err(e) if origin == Origin::Cached => {
                tracing::warn!("the cached kernels for {arch} did not load ({e}); compiling them again");
                let fresh = compile(&arch)?;
                if let Some(f) = cache.map(|d| nvrtc_version().map(|v| cache_file(d, &arch, &v)))
                    && let Ok(f) = f
                    && let Err(e) = write_cached(&f, &fresh)
                {
                    tracing::warn!("cannot write the kernel cache {}: {e}", f.display());
                }
                ctx.load_module(Ptx::from_src(fresh)).map_err(|e| Unavailable::Kernels(e.to_string()))?
            }
            Err(e) => return Err(Unavailable::Kernels(format!("the driver refused the PTX for {arch}: {e}"))),
        };
        let f = |n: &str| module.load_function(n).map_err(|e| Unavailable::Kernels(format!("{n}: {e}")));
        let k = Kernels {
            bias_act_forward: f("bias_act_forward")?,
            act_backward: f("act_backward")?,
            column_sums: f("column_sums")?,
            mse: f("mse")?,
            adamw: f("adamw")?,
            gather_rows: f("gather_rows")?,
        };
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| Unavailable::Init(format!("cuBLAS: {e}")))?;
        let init = |e: cudarc::driver::DriverError| Unavailable::Init(e.to_string());
        let idx = RefCell::new(stream.alloc_zeros::<u32>(1).map_err(init)?);
        let loss = RefCell::new(stream.alloc_zeros::<f64>(1).map_err(init)?);
        Ok(CudaCompute { stream, blas, k, idx, loss, device: name, arch, origin })
    }

    /// The GPU's name and the architecture the kernels were built for, e.g. `NVIDIA H200
    /// (compute_90)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.device, self.arch)
    }

    /// Whether the kernels came from the cache.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Waits until the GPU has done everything queued (for timing).
    pub fn synchronize(&self) -> Result<(), ComputeError> {
        self.stream.synchronize().map_err(dev("synchronize"))
    }
}

impl Compute for CudaCompute {
    type Elem = f32;
    type Buf = CudaSlice<f32>;

    fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>, ComputeError> {
        // A zero-length allocation is legal but a zero-length copy is not.
        if host.is_empty() {
            return self.zeros(0);
        }
        self.stream.clone_htod(host).map_err(dev("upload"))
    }

    fn download(&self, buf: &CudaSlice<f32>, out: &mut [f32]) -> Result<(), ComputeError> {
        check("download", buf.len() >= out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        self.stream.memcpy_dtoh(&buf.slice(..out.len()), out).map_err(dev("download"))?;
        self.synchronize()
    }

    fn zeros(&self, n: usize) -> Result<CudaSlice<f32>, ComputeError> {
        self.stream.alloc_zeros::<f32>(n.max(1)).map_err(dev("allocation"))
    }

    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f64,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        beta: f64,
        c: &mut CudaSlice<f32>,
    ) -> Result<(), ComputeError> {
        check("gemm", a.len() >= m * k && b.len() >= k * n && c.len() >= m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let int = |v: usize| i32::try_from(v).map_err(|_| ComputeError(format!("gemm: {v} is beyond cuBLAS's int")));
        let lda = if ta { m } else { k };
        let ldb = if tb { k } else { n };
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        // cuBLAS is column-major and a row-major matrix read column-major is its transpose, so
        // the row-major C = op(A)·op(B) is the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: B goes first.
        let cfg = GemmConfig {
            transa: op(tb),
            transb: op(ta),
            m: int(n)?,
            n: int(m)?,
            k: int(k)?,
            alpha: alpha as f32,
            lda: int(ldb)?,
            ldb: int(lda)?,
            beta: beta as f32,
            ldc: int(n)?,
        };
        // SAFETY: the sizes were checked against the buffers above.
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(|e| ComputeError(format!("cuBLAS sgemm: {e}")))
    }

    fn bias_act_forward(
        &self,
        z: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        act: Activation,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ComputeError> {
        let n = rows * cols;
        check("bias_act_forward", z.len() >= n && out.len() >= n && bias.len() >= cols)?;
        if n == 0 {
            return Ok(());
        }
        let (code, a) = act_code(act);
        let (rows, cols) = (rows as i64, cols as i32);
        let mut l = self.stream.launch_builder(&self.k.bias_act_forward);
        l.arg(z).arg(bias).arg(&rows).arg(&cols).arg(&code).arg(&a).arg(out);
        // SAFETY: the kernel touches rows·cols elements of z and out and cols of bias, checked above.
        unsafe { l.launch(elementwise(n)) }.map(|_| ()).map_err(dev("bias_act_forward"))
    }

    fn act_backward(
        &self,
        grad: &mut CudaSlice<f32>,
        z: &CudaSlice<f32>,
        act: Activation,
        n: usize,
    ) -> Result<(), ComputeError> {
        check("act_backward", grad.len() >= n && z.len() >= n)?;
        if n == 0 || act == Activation::Identity {
            return Ok(());
        }
        let (code, a) = act_code(act);
        let len = n as i64;
        let mut l = self.stream.launch_builder(&self.k.act_backward);
        l.arg(grad).arg(z).arg(&len).arg(&code).arg(&a);
        // SAFETY: the kernel touches n elements of each buffer, checked above.
        unsafe { l.launch(elementwise(n)) }.map(|_| ()).map_err(dev("act_backward"))
    }

    fn column_sums(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ComputeError> {
        check("column_sums", x.len() >= rows * cols && out.len() >= cols)?;
        if cols == 0 {
            return Ok(());
        }
        let (r, c) = (rows as i64, cols as i32);
        let mut l = self.stream.launch_builder(&self.k.column_sums);
        l.arg(x).arg(&r).arg(&c).arg(out);
        let cfg = LaunchConfig {
            grid_dim: (cols.div_ceil(BLOCK as usize) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel reads rows·cols elements of x and writes cols of out, checked above.
        unsafe { l.launch(cfg) }.map(|_| ()).map_err(dev("column_sums"))
    }

    fn mse(
        &self,
        pred: &CudaSlice<f32>,
        target: &CudaSlice<f32>,
        n: usize,
        grad: &mut CudaSlice<f32>,
    ) -> Result<f64, ComputeError> {
        check("mse", pred.len() >= n && target.len() >= n && grad.len() >= n)?;
        if n == 0 {
            return Ok(f64::NAN);
        }
        let mut loss = self.loss.borrow_mut();
        let (len, scale) = (n as i64, 2.0 / n as f64);
        let mut l = self.stream.launch_builder(&self.k.mse);
        l.arg(pred).arg(target).arg(&len).arg(&scale).arg(grad).arg(&mut *loss);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the kernel touches n elements of pred, target and grad (checked) and loss[0].
        unsafe { l.launch(cfg) }.map_err(dev("mse"))?;
        let mut sum = [0.0f64];
        self.stream.memcpy_dtoh(&*loss, &mut sum).map_err(dev("download of the loss"))?;
        self.synchronize()?;
        Ok(sum[0] / n as f64)
    }

    fn adamw(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        src: &CudaSlice<f32>,
        n: usize,
        s: AdamStep,
    ) -> Result<(), ComputeError> {
        check("adamw", [p.len(), g.len(), m.len(), v.len(), src.len()].iter().all(|&l| l >= n))?;
        if n == 0 {
            return Ok(());
        }
        // The same f32 constants the CPU backend derives, so both take the same step.
        let f = |v: f64| v as f32;
        let (b1, b2, nb1, nb2) = (f(s.beta1), f(s.beta2), f(1.0 - s.beta1), f(1.0 - s.beta2));
        let step = f(s.lr / (1.0 - s.beta1.powi(s.t as i32)));
        let unbias_v = f(1.0 / (1.0 - s.beta2.powi(s.t as i32)));
        let (decay, eps) = (f(s.lr * s.pull), f(s.eps));
        let len = n as i64;
        let mut l = self.stream.launch_builder(&self.k.adamw);
        l.arg(p).arg(g).arg(m).arg(v).arg(src).arg(&len);
        l.arg(&b1).arg(&b2).arg(&nb1).arg(&nb2).arg(&step).arg(&unbias_v).arg(&decay).arg(&eps);
        // SAFETY: the kernel touches n elements of each buffer, checked above.
        unsafe { l.launch(elementwise(n)) }.map(|_| ()).map_err(dev("adamw"))
    }

    fn gather_rows(
        &self,
        x: &CudaSlice<f32>,
        idx: &[usize],
        cols: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ComputeError> {
        let rows = x.len() / cols.max(1);
        check("gather_rows", out.len() >= idx.len() * cols && idx.iter().all(|&i| i < rows))?;
        if idx.is_empty() || cols == 0 {
            return Ok(());
        }
        let host: Vec<u32> = idx
            .iter()
            .map(|&i| u32::try_from(i).map_err(|_| ComputeError(format!("gather_rows: row {i} is beyond u32"))))
            .collect::<Result<_, _>>()?;
        let mut dev_idx = self.idx.borrow_mut();
        if dev_idx.len() < host.len() {
            *dev_idx = self.stream.alloc_zeros::<u32>(host.len()).map_err(dev("allocation"))?;
        }
        self.stream.memcpy_htod(&host, &mut *dev_idx).map_err(dev("upload of the batch rows"))?;
        let (n, c) = (idx.len() as i64, cols as i32);
        let mut l = self.stream.launch_builder(&self.k.gather_rows);
        l.arg(x).arg(&*dev_idx).arg(&n).arg(&c).arg(out);
        // SAFETY: every index is below x's rows and out holds idx.len()·cols, checked above.
        unsafe { l.launch(elementwise(idx.len() * cols)) }.map(|_| ()).map_err(dev("gather_rows"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Skips (with a message) where NVRTC is absent, unless `REQUIRE_NVRTC=1` makes that a failure.
    fn nvrtc_or_skip() -> bool {
        if nvrtc_present() {
            return true;
        }
        assert!(
            std::env::var("REQUIRE_NVRTC").as_deref() != Ok("1"),
            "REQUIRE_NVRTC=1 but libnvrtc cannot be loaded: pip install -r tools/requirements-cuda.txt and put \
             nvidia/cuda_nvrtc/lib on LD_LIBRARY_PATH"
        );
        eprintln!("skipped: NVRTC (libnvrtc.so) is not on the library path");
        false
    }

    #[test]
    fn the_isa_version_is_read_from_ptx() {
        assert_eq!(ptx_isa("//\n// Generated by NVIDIA NVVM Compiler\n.version 8.5\n.target sm_87\n"), Some((8, 5)));
        assert_eq!(ptx_isa(".target sm_87\n"), None);
    }

    #[test]
    fn a_damaged_cache_entry_is_compiled_again_and_replaced() {
        if !nvrtc_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (fresh, origin) = ptx_for(Some(dir.path()), "compute_87").unwrap();
        assert_eq!(origin, Origin::Compiled);
        let (again, origin) = ptx_for(Some(dir.path()), "compute_87").unwrap();
        assert_eq!((again.as_str(), origin), (fresh.as_str(), Origin::Cached));
        let file = cache_file(dir.path(), "compute_87", &nvrtc_version().unwrap());
        let whole = std::fs::read(&file).unwrap();
        for damaged in [whole[..whole.len() / 2].to_vec(), whole.iter().map(|b| b ^ 1).collect(), b"\0\0".to_vec()] {
            std::fs::write(&file, &damaged).unwrap();
            let (ptx, origin) = ptx_for(Some(dir.path()), "compute_87").unwrap();
            assert_eq!((ptx.as_str(), origin), (fresh.as_str(), Origin::Compiled));
            assert_eq!(std::fs::read(&file).unwrap(), whole, "the entry was rewritten whole");
        }
    }
}
