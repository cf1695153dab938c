//! NVRTC: CUDA C → cubin for the device's architecture, cached in memory (per `Gpu`) and on disk
//! (`$MOE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/moe/kernels`, else `~/.cache/moe/kernels`).
//! A cubin loads in well under a millisecond; PTX would pay a driver JIT at every start.

use super::{GpuError, GpuResult};
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;
use std::path::PathBuf;

/// One `.cu` file: compiled as a unit, after the shared prelude.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    pub name: &'static str,
    pub code: &'static str,
}

const PRELUDE: &str = include_str!("common.cuh");

/// Every kernel source of the crate, for compile checks.
pub fn kernel_sources() -> Vec<KernelSource> {
    vec![
        crate::embedding::cuda::SOURCE,
        crate::rms_norm::cuda::SOURCE,
        crate::rope::cuda::SOURCE,
        crate::attention::cuda::SOURCE,
        crate::linear::cuda::SOURCE,
        crate::router_topk::cuda::SOURCE,
        crate::expert_ffn::cuda::SOURCE,
        crate::combine::cuda::SOURCE,
        crate::sample::cuda::SOURCE,
        super::util::SOURCE,
    ]
}

pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { sys::is_culib_present() }
}

fn options(arch: &str) -> Vec<String> {
    let mut o = vec![];
    // MOE_PTXAS_VERBOSE=1 prints each kernel's registers, stack and spills with the build.
    if std::env::var_os("MOE_PTXAS_VERBOSE").is_some() {
        o.push("--ptxas-options=-v".to_string());
    }
    o.extend([
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "--device-as-default-execution-space".into(),
    ]);
    // Extra `-D` definitions for tuning sweeps (part of the cache key, like every option).
    if let Ok(defs) = std::env::var("MOE_NVRTC_DEFINES") {
        o.extend(defs.split_whitespace().map(str::to_string));
    }
    o
}

/// Compiles `src` for `arch` (`sm_90`, …) and returns the cubin, or the compiler's log.
pub fn compile_cubin(src: &KernelSource, arch: &str) -> GpuResult<Vec<u8>> {
    if !nvrtc_available() {
        return Err(GpuError("no NVRTC library (libnvrtc.so.13) found".into()));
    }
    let full = format!("{PRELUDE}\n#line 1 \"{}.cu\"\n{}", src.name, src.code);
    let code = CString::new(full).map_err(|_| GpuError(format!("{}: NUL in source", src.name)))?;
    let name = CString::new(format!("{}.cu", src.name)).expect("no NUL");
    let prog = result::create_program(&code, Some(&name))
        .map_err(|e| GpuError(format!("{}: nvrtcCreateProgram: {e:?}", src.name)))?;
    let opts = options(arch);
    // SAFETY: `prog` is live until destroyed below; buffers are sized by NVRTC.
    unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = result::get_program_log(prog)
            .map(|l| {
                let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        if std::env::var_os("MOE_PTXAS_VERBOSE").is_some() {
            eprintln!("{}:\n{log}", src.name);
        }
        if let Err(e) = compiled {
            let _ = result::destroy_program(prog);
            return Err(GpuError(format!(
                "{}.cu does not compile for {arch} ({e:?}):\n{log}",
                src.name
            )));
        }
        let mut size = 0usize;
        let r = sys::nvrtcGetCUBINSize(prog, &mut size).result();
        let mut cubin = vec![0u8; size];
        let r = r.and_then(|_| sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut _).result());
        let _ = result::destroy_program(prog);
        r.map_err(|e| GpuError(format!("{}: reading the cubin: {e:?}", src.name)))?;
        if cubin.is_empty() {
            return Err(GpuError(format!(
                "{}: NVRTC gave no cubin for {arch} (a virtual architecture?)",
                src.name
            )));
        }
        Ok(cubin)
    }
}

fn nvrtc_version() -> (i32, i32) {
    let (mut a, mut b) = (0, 0);
    // SAFETY: writes two ints.
    let _ = unsafe { sys::nvrtcVersion(&mut a, &mut b) };
    (a, b)
}

/// FNV-1a: stable across builds, unlike `DefaultHasher`.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MOE_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("moe/kernels"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/moe/kernels"))
}

/// The cubin from the disk cache when its key matches, else compiled and stored (best effort: a
/// read-only cache only costs the compile).
pub(super) fn cached_cubin(src: &KernelSource, arch: &str) -> GpuResult<Vec<u8>> {
    let (ma, mi) = nvrtc_version();
    let key = fnv(&[
        PRELUDE.as_bytes(),
        src.code.as_bytes(),
        arch.as_bytes(),
        options(arch).join(" ").as_bytes(),
        format!("{ma}.{mi}").as_bytes(),
    ]);
    let path = cache_dir().map(|d| d.join(format!("{}-{arch}-{key:016x}.cubin", src.name)));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
    }
    let cubin = compile_cubin(src, arch)?;
    if let Some(p) = &path {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &cubin).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    Ok(cubin)
}
