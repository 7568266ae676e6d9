//! Choosing the compute device, and what this build of libtorch can use.
use crate::error::{Error, Result};
use crate::world::world;
use tch::{Cuda, Device};

/// A device as the user asks for it: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA device when there is one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(given: &str) -> std::result::Result<Self, String> {
        // In any case: `CPU`, `Cuda:1`.
        let s = given.to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device {given:?} (expected auto, cpu, cuda or cuda:N)")),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The libtorch device, or [`Error::DeviceUnavailable`] saying why a CUDA device cannot be used.
    pub fn resolve(self) -> Result<Device> {
        if self == DeviceSpec::Cpu {
            // Without asking libtorch about CUDA, so that its CUDA backend is never loaded.
            return Ok(Device::Cpu);
        }
        let cuda = CudaStatus::probe();
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            // With several processes on a machine, one GPU each, by the rank among them.
            DeviceSpec::Auto if cuda.devices > 0 => Ok(Device::Cuda(world().local().0 % cuda.devices)),
            DeviceSpec::Auto => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) if n < cuda.devices => Ok(Device::Cuda(n)),
            DeviceSpec::Cuda(_) => {
                let reason = match cuda.missing_reason() {
                    Some(r) => format!("{r}; use --device cpu"),
                    None => format!("this machine has {} CUDA device(s)", cuda.devices),
                };
                Err(Error::DeviceUnavailable { requested: self.to_string(), reason })
            }
        }
    }
}

/// What libtorch can see of CUDA on this machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CudaStatus {
    /// libtorch's CUDA backend (libtorch_cuda.so) is loaded into this process (charrnn loads it when an
    /// NVIDIA driver is present: see [`load_cuda_backend`]).
    pub backend_loaded: bool,
    /// An NVIDIA kernel driver is present.
    pub driver_present: bool,
    /// CUDA devices libtorch can use.
    pub devices: usize,
    /// The GPUs' model names as the NVIDIA driver lists them (`/proc/driver/nvidia/gpus/*/information`), in
    /// bus order; this ignores `CUDA_VISIBLE_DEVICES`.
    pub gpu_names: Vec<String>,
}

impl CudaStatus {
    /// Looks at this process and machine, first loading libtorch's CUDA backend if there is a driver.
    pub fn probe() -> Self {
        load_cuda_backend();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        CudaStatus {
            backend_loaded: maps.contains("libtorch_cuda.so"),
            driver_present: driver_present(),
            devices: if Cuda::is_available() { Cuda::device_count().max(0) as usize } else { 0 },
            gpu_names: gpu_names(std::path::Path::new("/proc/driver/nvidia/gpus")),
        }
    }

    /// Why no CUDA device is usable, or `None` when one is.
    pub fn missing_reason(&self) -> Option<&'static str> {
        if self.devices > 0 {
            None
        } else if !self.driver_present {
            Some("no NVIDIA driver on this machine (/proc/driver/nvidia/version is missing)")
        } else if !self.backend_loaded {
            Some("libtorch's CUDA backend (libtorch_cuda.so) could not be loaded: a CPU-only libtorch, or its CUDA libraries are missing")
        } else {
            Some("the NVIDIA driver reports no usable CUDA device (check CUDA_VISIBLE_DEVICES and nvidia-smi)")
        }
    }
}

fn driver_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
}

/// Loads libtorch's CUDA backend, `libtorch_cuda.so` (found through the binary's rpath or
/// `LD_LIBRARY_PATH`), with the CUDA libraries it needs, once per process and only when an NVIDIA driver is
/// present; returns whether it is loaded.
///
/// charrnn does not link it: on a machine without a GPU its CUDA libraries would cost about 150 MB of
/// resident memory and part of a second of start-up for nothing. libtorch registers CUDA when the library
/// loads and caches the first answer to "is there CUDA?", so this must run before that question is asked:
/// [`CudaStatus::probe`], and so [`DeviceSpec::resolve`], call it first.
pub fn load_cuda_backend() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        if !driver_present() {
            return false;
        }
        extern "C" {
            fn dlopen(filename: *const std::ffi::c_char, flags: std::ffi::c_int) -> *mut std::ffi::c_void;
        }
        const RTLD_NOW: std::ffi::c_int = 2;
        const RTLD_GLOBAL: std::ffi::c_int = 0x100;
        // SAFETY: a NUL-terminated name; the handle is kept open for the life of the process.
        !unsafe { dlopen(c"libtorch_cuda.so".as_ptr(), RTLD_NOW | RTLD_GLOBAL) }.is_null()
    })
}

/// Process-wide settings that charrnn's results and speed depend on; call once at the start of `main`,
/// before libtorch starts and before any other thread exists.
///
/// - `MKL_DYNAMIC=FALSE` (unless set): with MKL's default dynamic threading a busy machine can make a matrix
///   product use fewer threads, which changes the order of its sums, so the same seed would not always give
///   the same bits and a resumed run could drift from an uninterrupted one.
/// - glibc's allocator keeps blocks up to 32 MB on its heap and returns freed memory to the system only
///   beyond 1 GB. With its defaults a training step's large tensors (the logits, 8 MB at the textbook's
///   sizes) come from fresh memory maps that are page-faulted in and given back at every step (what that
///   costs is measured in the README's benchmarks).
pub fn prepare_process() {
    if std::env::var_os("MKL_DYNAMIC").is_none() {
        std::env::set_var("MKL_DYNAMIC", "FALSE");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: plain calls into the C library, made before any other thread allocates.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// Whether `device` multiplies bfloat16 operands natively: a CPU with AVX512-BF16 or AMX-BF16 (the flags of
/// `/proc/cpuinfo`, or of `CHARRNN_CPU_FLAGS` when set, which tests use to play another CPU), a CUDA device
/// of compute capability 8.0 or newer (asked of the CUDA runtime libtorch loads). `None` when it cannot
/// tell.
pub fn native_bf16(device: Device) -> Option<bool> {
    match device {
        Device::Cuda(index) => cuda_capability_major(index as i32).map(|major| major >= 8),
        _ => {
            let flags = match std::env::var("CHARRNN_CPU_FLAGS") {
                Ok(flags) => flags,
                Err(_) => std::fs::read_to_string("/proc/cpuinfo").ok()?,
            };
            Some(cpu_flags_have_bf16(&flags))
        }
    }
}

/// Whether a `flags` line of `/proc/cpuinfo` (or the whole file) names a native bfloat16 product.
fn cpu_flags_have_bf16(cpuinfo: &str) -> bool {
    cpuinfo.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16")
}

/// The major compute capability of CUDA device `index`, from the CUDA runtime's `cudaDeviceGetAttribute`
/// (attribute 75, `cudaDevAttrComputeCapabilityMajor`), found among the libraries already loaded.
pub fn cuda_capability_major(index: i32) -> Option<i32> {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }
    // SAFETY: RTLD_DEFAULT (null) searches the loaded libraries; the symbol, when found, has the CUDA
    // runtime's documented signature `cudaError_t (int*, cudaDeviceAttr, int)`.
    let f = unsafe { dlsym(std::ptr::null_mut(), c"cudaDeviceGetAttribute".as_ptr()) };
    if f.is_null() {
        return None;
    }
    let f: extern "C" fn(*mut c_int, c_int, c_int) -> c_int = unsafe { std::mem::transmute(f) };
    let mut major: c_int = 0;
    (f(&mut major, 75, index) == 0).then_some(major)
}

/// The `Model:` line of each `<gpus>/*/information` file, sorted by folder (the PCI bus address).
fn gpu_names(gpus: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(gpus) else { return Vec::new() };
    let mut dirs: Vec<std::path::PathBuf> = entries.flatten().map(|e| e.path()).collect();
    dirs.sort();
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.join("information")).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string())))
        .collect()
}

/// A device's name as charrnn prints it: `cpu` or `cuda:N`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_string(),
    }
}

/// Sets libtorch's intra-op CPU thread count; `None` keeps libtorch's default (one per core).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    match threads {
        Some(0) => Err(Error::config("--threads", "must be at least 1")),
        Some(n) => {
            tch::set_num_threads(n as i32);
            Ok(())
        }
        None => {
            // Several processes on one machine share its cores rather than each taking them all.
            let (_, local) = world().local();
            if local > 1 {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                tch::set_num_threads((cores / local).max(1) as i32);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_and_print() {
        for (s, d) in [
            ("auto", DeviceSpec::Auto),
            ("cpu", DeviceSpec::Cpu),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d);
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_always_resolves_and_missing_cuda_is_explained() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
        let status = CudaStatus::probe();
        let beyond = DeviceSpec::Cuda(status.devices);
        let err = beyond.resolve().unwrap_err().to_string();
        assert!(err.starts_with(&format!("device cuda:{} is not available: ", status.devices)), "{err}");
        if status.devices == 0 {
            assert_eq!(DeviceSpec::Auto.resolve().unwrap(), Device::Cpu);
            assert!(status.missing_reason().is_some());
        }
    }

    #[test]
    fn bf16_units_are_read_from_the_cpu_flags() {
        // Flags as /proc/cpuinfo lists them (abridged): an AMD Zen 3, a Zen 4/5, an Intel Sapphire Rapids.
        let zen3 = "flags : fpu vme avx avx2 fma bmi2 sha_ni";
        let zen4 = "flags : fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni";
        let spr = "flags : fpu avx2 avx512f amx_bf16 amx_tile amx_int8";
        assert!(!cpu_flags_have_bf16(zen3));
        assert!(cpu_flags_have_bf16(zen4) && cpu_flags_have_bf16(spr));
        assert!(!cpu_flags_have_bf16("flags : avx512_bf16x"), "whole flags only");
    }

    #[test]
    fn gpu_names_come_from_the_driver_listing() {
        let dir = tempfile::tempdir().unwrap();
        for (bus, model) in [("0000:41:00.0", "NVIDIA H200"), ("0000:01:00.0", "NVIDIA H100 80GB HBM3")] {
            std::fs::create_dir(dir.path().join(bus)).unwrap();
            std::fs::write(dir.path().join(bus).join("information"), format!("Model: \t\t {model}\nIRQ: 12\n"))
                .unwrap();
        }
        assert_eq!(gpu_names(dir.path()), vec!["NVIDIA H100 80GB HBM3".to_string(), "NVIDIA H200".to_string()]);
        assert!(gpu_names(&dir.path().join("missing")).is_empty());
    }
}
