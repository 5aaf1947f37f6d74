//! Every CUDA kernel compiles with NVRTC for the Jetson Orin (compute_87) and for Hopper
//! (compute_90), and the PTX is one a JetPack 6 driver (CUDA 12.6, PTX ISA 8.5) can load. No GPU
//! is needed, but NVRTC is, so the test is `#[ignore]`d: CI runs it with the pinned NVRTC wheel
//! (`cargo test --features cuda --test cuda_kernels -- --ignored`), then `ptxas` on the files
//! written to `SKILLGRAFT_PTX_OUT`.
#![cfg(feature = "cuda")]

use skillgraft::adapt::cuda;

/// The newest PTX ISA the CUDA 12.6 driver of JetPack 6 accepts.
const JETPACK6_ISA: (u32, u32) = (8, 5);

#[test]
#[ignore = "needs NVRTC: pip install -r tools/requirements-cuda.txt, its nvidia/cuda_nvrtc/lib on LD_LIBRARY_PATH, then -- --ignored"]
fn every_kernel_compiles_for_orin_and_hopper_within_jetpack_6s_ptx_isa() {
    assert!(
        cuda::nvrtc_present(),
        "libnvrtc cannot be loaded: `pip install -r tools/requirements-cuda.txt` and put its nvidia/cuda_nvrtc/lib on \
         LD_LIBRARY_PATH"
    );
    let version = cuda::nvrtc_version().unwrap();
    let out = std::env::var_os("SKILLGRAFT_PTX_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ptx"));
    std::fs::create_dir_all(&out).unwrap();
    for (arch, sm) in [("compute_87", "sm_87"), ("compute_90", "sm_90")] {
        let ptx = cuda::compile(arch).unwrap_or_else(|e| panic!("{e}"));
        let isa = cuda::ptx_isa(&ptx).expect("the PTX declares its ISA version");
        assert!(
            isa <= JETPACK6_ISA,
            "NVRTC {version} emits PTX ISA {}.{} for {arch}; a JetPack 6 driver (CUDA 12.6) loads up to {}.{}: \
             use the NVRTC pinned in tools/requirements-cuda.txt",
            isa.0,
            isa.1,
            JETPACK6_ISA.0,
            JETPACK6_ISA.1
        );
        assert!(ptx.contains(&format!(".target {sm}")), "{arch}: {}", &ptx[..ptx.len().min(400)]);
        for k in cuda::KERNELS {
            assert!(ptx.contains(&format!(".entry {k}(")), "{arch}: kernel {k} missing from the PTX");
        }
        let file = out.join(format!("kernels_{sm}.ptx"));
        std::fs::write(&file, &ptx).unwrap();
        eprintln!("NVRTC {version}, {arch}: PTX ISA {}.{}, {} bytes -> {}", isa.0, isa.1, ptx.len(), file.display());
    }
}
