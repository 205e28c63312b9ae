//! The Rust side of csrc/aoti.cpp: [`CompiledPackage`], a model compiled ahead
//! of time by torch's compiler (AOTInductor's `.pt2` package, made by
//! `torch._inductor.aoti_compile_and_package`), loaded and run by libtorch's
//! own `AOTIModelPackageLoader` (on the CPU, by the runner it would make, on
//! the code taken out of the package here): Inductor's fused kernels
//! without Python.
//!
//! A package holds machine code for the CPU (instruction set included) or
//! the GPU it was compiled on, and a graph of fixed shapes; which package
//! fits which run is the caller's to decide from [`metadata`].

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CString};
use std::path::Path;

use tch::{Device, Tensor};

use crate::error::{CoreError, Result};
use crate::ffi::shim_error;

extern "C" {
    fn sd_aoti_load(path: *const c_char, device_index: i32, error: *mut *mut c_char)
        -> *mut c_void;
    fn sd_aoti_load_cpu_so(so_path: *const c_char, error: *mut *mut c_char) -> *mut c_void;
    fn sd_aoti_free(loader: *mut c_void);
    fn sd_aoti_torch_version() -> *mut c_char;
    fn sd_aoti_cpu_capability() -> *mut c_char;
    fn sd_aoti_metadata(path: *const c_char, error: *mut *mut c_char) -> *mut c_char;
    fn sd_aoti_run(
        loader: *mut c_void,
        inputs: *const *mut torch_sys::C_tensor,
        count: usize,
        outputs: *mut *mut torch_sys::C_tensor,
        capacity: usize,
        error: *mut *mut c_char,
    ) -> i64;
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.to_string_lossy().as_bytes()).map_err(|_| {
        CoreError::invalid(
            "compiled package",
            format!("{}: a NUL in the path", path.display()),
        )
    })
}

/// A strdup'd text from the shim, taken over and freed.
fn take_text(text: *mut c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated copy made by strdup in the shim.
    let owned = unsafe { std::ffi::CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated with malloc by strdup, freed only here.
    unsafe { libc::free(text.cast()) };
    owned
}

/// The linked libtorch's version (`2.11.0`): a package runs only with the
/// libtorch it was compiled for.
pub fn torch_version() -> String {
    // SAFETY: no arguments; a strdup'd text back.
    take_text(unsafe { sd_aoti_torch_version() })
}

/// The instruction set ATen's CPU kernels use here (`AVX512`, `AVX2`,
/// `DEFAULT`; `ATEN_CPU_CAPABILITY` lowers it): a CPU package holds code
/// for the set it was compiled with.
pub fn cpu_capability() -> String {
    // SAFETY: no arguments; a strdup'd text back.
    take_text(unsafe { sd_aoti_cpu_capability() })
}

/// The metadata a package carries (`key=value` pairs its compiler and the
/// caller of `aoti_compile_and_package` wrote), read without loading code.
pub fn metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let c = c_path(path)?;
    let mut error = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path; the shim returns a strdup'd text or null
    // with an error message.
    let text = unsafe { sd_aoti_metadata(c.as_ptr(), &mut error) };
    if text.is_null() {
        return Err(shim_error(
            &format!("compiled package {}", path.display()),
            error,
        ));
    }
    // SAFETY: a NUL-terminated copy made by strdup, freed here.
    let lines = unsafe { std::ffi::CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated with malloc by strdup, freed only here.
    unsafe { libc::free(text.cast()) };
    Ok(lines
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// A loaded package.
#[derive(Debug)]
pub struct CompiledPackage {
    loader: *mut c_void,
}

impl CompiledPackage {
    /// Loads the package at `path` for `device`: its compiled code is
    /// extracted and opened here.
    ///
    /// # Safety
    ///
    /// A package is native code that runs in this process: only load one
    /// compiled by a trusted torch for this machine (its instruction set:
    /// [`cpu_capability`]) and this libtorch ([`torch_version`]), as the
    /// metadata records. A package for another CPU can crash the process.
    pub unsafe fn load(path: &Path, device: Device) -> Result<Self> {
        if device == Device::Cpu {
            if let Some(so) = CpuCode::extract(path)? {
                let c = c_path(&so.path)?;
                let mut error = std::ptr::null_mut();
                // SAFETY: a NUL-terminated path to the package's own code
                // (the caller's promise covers it); the shim returns a new
                // handle or null with an error message. The file may go
                // once it is open (`so` is dropped after).
                let loader = unsafe { sd_aoti_load_cpu_so(c.as_ptr(), &mut error) };
                if loader.is_null() {
                    let what = format!("compiled package {}", path.display());
                    return Err(shim_error(&what, error));
                }
                return Ok(CompiledPackage { loader });
            }
        }
        let c = c_path(path)?;
        let index = match device {
            Device::Cuda(i) => i as i32,
            _ => -1,
        };
        let mut error = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path; the shim returns a new loader or null
        // with an error message.
        let loader = unsafe { sd_aoti_load(c.as_ptr(), index, &mut error) };
        if loader.is_null() {
            return Err(shim_error(
                &format!("compiled package {}", path.display()),
                error,
            ));
        }
        Ok(CompiledPackage { loader })
    }

    /// Runs the package's graph on `inputs` (in its call order), giving its
    /// outputs.
    pub fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        const CAPACITY: usize = 16;
        let pointers: Vec<*mut torch_sys::C_tensor> =
            inputs.iter().map(|t| t.as_ptr() as *mut _).collect();
        let mut outputs = [std::ptr::null_mut(); CAPACITY];
        let mut error = std::ptr::null_mut();
        // SAFETY: `loader` is live (freed only in Drop); the inputs are live
        // tch tensors for the call; the shim writes at most CAPACITY new
        // tensors and returns their count, or -1 with an error message.
        let count = unsafe {
            sd_aoti_run(
                self.loader,
                pointers.as_ptr(),
                pointers.len(),
                outputs.as_mut_ptr(),
                CAPACITY,
                &mut error,
            )
        };
        if count < 0 {
            return Err(shim_error("compiled package run", error));
        }
        // SAFETY: each of the first `count` pointers is a new at::Tensor the
        // shim handed over; from_ptr takes ownership.
        Ok(outputs[..count as usize]
            .iter()
            .map(|&p| unsafe { Tensor::from_ptr(p) })
            .collect())
    }
}

/// A CPU package's compiled code (its one `*.wrapper.so`, the weights
/// inside), copied out of the package into a folder of its own, removed
/// when dropped. libtorch's loader extracts every file of a package in small
/// writes each time it loads one; copying out the one that runs, in large
/// writes, took the full-size f32 UNet's load from 11–15 s to 9–10 s
/// (docs/compile.md).
struct CpuCode {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl CpuCode {
    /// The code of the package at `package`, or `None` when it has no
    /// single `.wrapper.so` (a layout this does not know: libtorch's loader
    /// opens it).
    fn extract(package: &Path) -> Result<Option<CpuCode>> {
        let io = |e: std::io::Error| CoreError::io(package, e);
        let bad = |e: zip::result::ZipError| {
            CoreError::invalid("compiled package", format!("{}: {e}", package.display()))
        };
        let mut archive =
            zip::ZipArchive::new(std::fs::File::open(package).map_err(io)?).map_err(bad)?;
        let names: Vec<String> = archive
            .file_names()
            .filter(|n| n.ends_with(".wrapper.so"))
            .map(String::from)
            .collect();
        let [name] = &names[..] else {
            return Ok(None);
        };
        static LOADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sd-aoti-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
        let code = CpuCode {
            path: dir.join("model.wrapper.so"),
            dir,
        };
        let mut entry = archive.by_name(name).map_err(bad)?;
        let file = std::fs::File::create(&code.path).map_err(|e| CoreError::io(&code.path, e))?;
        let mut out = std::io::BufWriter::with_capacity(8 << 20, file);
        std::io::copy(&mut entry, &mut out).map_err(io)?;
        out.into_inner()
            .map_err(|e| CoreError::io(&code.path, e.into_error()))?;
        Ok(Some(code))
    }
}

impl Drop for CpuCode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// SAFETY: the handle is libtorch's `AOTIModelPackageLoader` or the
// `AOTIModelContainerRunnerCpu` it would make; `run` takes a
// model instance from its container under a lock (waiting while another thread
// holds the only one), so calls from several threads are serialised, and it
// owns nothing tied to the thread that made it. The unsafe part, trusting the
// package's code, was promised at `load`.
unsafe impl Send for CompiledPackage {}
// SAFETY: as above: `&self` methods only call the loader's locked `run`.
unsafe impl Sync for CompiledPackage {}

impl Drop for CompiledPackage {
    fn drop(&mut self) {
        // SAFETY: made by sd_aoti_load, freed once.
        unsafe { sd_aoti_free(self.loader) };
    }
}
