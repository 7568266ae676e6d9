//! Links libtorch so that the binary runs without LD_LIBRARY_PATH (and finds libtorch_cuda.so, which it
//! loads at run time when there is a GPU).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // torch-sys (links = "tch") tells its direct dependents where libtorch's shared libraries are.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = Path::new(&lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // libtorch_cuda.so is not linked (Rust's --as-needed would drop it anyway, no symbol of it being used):
    // src/device.rs loads it at run time when an NVIDIA driver is present, through this rpath.
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
