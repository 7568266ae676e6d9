//! Links libtorch so that the binary runs without LD_LIBRARY_PATH and finds CUDA when it is there.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // torch-sys (links = "tch") tells its direct dependents where libtorch's shared libraries are.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = Path::new(&lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // Rust links with --as-needed, which drops libtorch_cuda.so because no symbol of it is referenced
    // directly; without it libtorch registers no CUDA backend and CUDA is never available.
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-env=CHARRNN_LIBTORCH_VERSION={}", libtorch_version(lib));
}

/// The libtorch version: `build-version` of a libtorch archive, or `version.py` of a PyTorch wheel.
fn libtorch_version(lib: &Path) -> String {
    let root = lib.parent().unwrap_or(lib);
    if let Ok(v) = std::fs::read_to_string(root.join("build-version")) {
        return v.trim().to_string();
    }
    if let Ok(py) = std::fs::read_to_string(root.join("version.py")) {
        for line in py.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                let v = rest.trim_start_matches([' ', '=', ':', 's', 't', 'r']).trim();
                return v.trim_matches(|c| c == '\'' || c == '"').to_string();
            }
        }
    }
    "unknown".to_string()
}
