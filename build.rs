//! Build script of `infer-core` (referenced as `build = "../../build.rs"`).
//!
//! Without the `cuda` feature it does nothing. With it:
//! - locates the CUDA toolkit: `CUDA_HOME`, `CUDA_PATH`, the directory of `nvcc` on `PATH`,
//!   `/usr/local/cuda`, or the PyPI toolkit of `scripts/install-cuda-toolkit.sh`;
//! - picks the GPU architectures: `CUDA_ARCH` (e.g. `sm_90a` or `80,90a`), else the compute
//!   capability of the visible GPUs (`nvidia-smi`), else `sm_90a`;
//! - compiles `kernels/*.cu` with nvcc through `cc` into a static library (cudart linked
//!   statically; cuBLAS/cuBLASLt are loaded at run time by cudarc);
//! - generates Rust bindings of `kernels/include/infer_kernels.h` with `bindgen`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn toolkit() -> PathBuf {
        for var in ["CUDA_HOME", "CUDA_PATH"] {
            if let Some(p) = std::env::var_os(var).map(PathBuf::from).filter(|p| p.join("bin/nvcc").exists()) {
                return p;
            }
        }
        if let Ok(out) = Command::new("which").arg("nvcc").output()
            && out.status.success()
        {
            let nvcc = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if let Some(home) = nvcc.parent().and_then(Path::parent) {
                return home.to_path_buf();
            }
        }
        for p in ["/usr/local/cuda", "/opt/cuda-pip/nvidia/cu13"] {
            if Path::new(p).join("bin/nvcc").exists() {
                return PathBuf::from(p);
            }
        }
        panic!(
            "the `cuda` feature needs the CUDA toolkit: set CUDA_HOME, put nvcc on PATH, \
             or run scripts/install-cuda-toolkit.sh"
        );
    }

    /// `sm_XY[a]` codes to build for.
    fn archs() -> Vec<String> {
        let norm = |s: &str| {
            let s = s.trim().trim_start_matches("sm_").trim_start_matches("compute_").replace('.', "");
            // Hopper gets the arch-specific `a` variant (wgmma etc.).
            if s == "90" { "90a".to_string() } else { s }
        };
        if let Ok(list) = std::env::var("CUDA_ARCH") {
            let v: Vec<String> = list.split(',').filter(|s| !s.trim().is_empty()).map(norm).collect();
            if !v.is_empty() {
                return v;
            }
        }
        if let Ok(out) = Command::new("nvidia-smi").args(["--query-gpu=compute_cap", "--format=csv,noheader"]).output()
            && out.status.success()
        {
            let mut v: Vec<String> =
                String::from_utf8_lossy(&out.stdout).lines().map(norm).filter(|s| !s.is_empty()).collect();
            v.sort();
            v.dedup();
            if !v.is_empty() {
                return v;
            }
        }
        vec!["90a".to_string()]
    }

    pub fn build() {
        let home = toolkit();
        let root =
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("../..");
        let kernels = root.join("kernels");
        println!("cargo:rerun-if-env-changed=CUDA_HOME");
        println!("cargo:rerun-if-env-changed=CUDA_PATH");
        println!("cargo:rerun-if-env-changed=CUDA_ARCH");
        println!("cargo:rerun-if-changed={}", kernels.display());

        let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
            .expect("kernels/ exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu" || x == "cuh" || x == "h"))
            .collect();
        sources.sort();
        for s in &sources {
            println!("cargo:rerun-if-changed={}", s.display());
        }
        println!("cargo:rerun-if-changed={}", kernels.join("include/infer_kernels.h").display());

        if std::env::var_os("NVCC").is_none() {
            // SAFETY: the build script is single-threaded here (before cc starts any jobs), so
            // no other thread reads the environment concurrently. cc finds nvcc through `NVCC`.
            unsafe { std::env::set_var("NVCC", home.join("bin/nvcc")) };
        }
        let mut b = cc::Build::new();
        b.cuda(true)
            .cudart("static")
            .include(kernels.join("include"))
            .include(&kernels)
            .flag("-O3")
            .flag("-std=c++17")
            .flag("--expt-relaxed-constexpr")
            .flag("-Xcompiler=-fPIC")
            // Never device-debug code (`cc` adds nvcc `-G` for profiles with debuginfo, such as
            // `cargo test`'s, which makes kernels ~100x slower); line info keeps profilers useful.
            .debug(false)
            .flag("-lineinfo")
            .warnings(false);
        for a in archs() {
            b.flag(format!("-gencode=arch=compute_{a},code=sm_{a}"));
        }
        for s in sources.iter().filter(|p| p.extension().is_some_and(|x| x == "cu")) {
            b.file(s);
        }
        b.compile("infer_kernels");
        for lib in ["lib64", "lib"] {
            let dir = home.join(lib);
            if dir.exists() {
                println!("cargo:rustc-link-search=native={}", dir.display());
            }
        }
        println!("cargo:rustc-link-lib=static=cudart_static");
        for l in ["dl", "rt", "pthread"] {
            println!("cargo:rustc-link-lib={l}");
        }

        let bindings = bindgen::Builder::default()
            .header(kernels.join("include/infer_kernels.h").to_string_lossy())
            .clang_arg(format!("-I{}", home.join("include").display()))
            .allowlist_function("infer_.*")
            .allowlist_function("cudaGetErrorString")
            .allowlist_function("cudaSetDevice")
            .allowlist_type("cudaError.*")
            .default_enum_style(bindgen::EnumVariation::NewType { is_bitfield: false, is_global: false })
            .layout_tests(false)
            .generate()
            .expect("bindgen can parse kernels/include/infer_kernels.h (needs libclang: apt-get install libclang-dev)");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        bindings.write_to_file(out.join("infer_kernels.rs")).expect("OUT_DIR is writable");
    }
}
