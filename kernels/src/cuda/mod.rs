//! CUDA runtime for the kernels: device discovery that explains itself where there is no GPU,
//! NVRTC compilation to cubin (cached in memory and on disk), raw device buffers and launches.
//!
//! cudarc loads the driver and NVRTC at run time (`dynamic-loading`), so everything here builds on
//! machines without CUDA; [`Gpu::new`] turns "no library / no device" into a reason string instead
//! of the panic a call into a missing library would be.

mod blas;
mod buffer;
mod compile;
mod mat;
pub mod moe;
mod slice;
pub mod util;

pub use buffer::{DevBuf, HostCopy};
pub use compile::{compile_cubin, kernel_sources, nvrtc_available, KernelSource};
pub use slice::{DevSlice, DevSliceMut};

// SAFETY: a function handle of a module that lives as long as its `Gpu`.
unsafe impl Send for Kernel {}
unsafe impl Sync for Kernel {}
pub use mat::{suffix, DevMat};

use cudarc::driver::{result, sys, CudaContext, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// For tests that need a GPU: the opened device, or `None` after reporting the skip
/// (`SKIP <test>: no GPU (<reason>)`, see [`crate::skip`]). With `MOE_REQUIRE_GPU` set a missing
/// GPU panics instead, so a GPU run cannot pass by skipping.
pub fn or_skip<T, E: std::fmt::Display>(opened: Result<T, E>) -> Option<T> {
    match opened {
        Ok(device) => Some(device),
        Err(e) => {
            assert!(
                std::env::var_os("MOE_REQUIRE_GPU").is_none(),
                "MOE_REQUIRE_GPU is set but: {e}"
            );
            crate::skip::skip(format!("{} ({e})", crate::skip::NO_GPU));
            None
        }
    }
}

/// Output features per warp (1, 2 or 4) of the GEMV kernels for `bytes` of weights streamed by
/// one launch: more per warp (more loads in flight per lane) for big launches, fewer where that
/// would leave too few warps. Measured on an H100: one token of the Mixtral-shape experts
/// (470 MB w1/w3, 235 MB w2) 0.29 ms with 4 against 0.33 with 2 on w2; at 1024 × 3584 (29 MB)
/// 1 per warp 0.044 ms against 0.051 with 4; q/k/v of 4096 → 6144 (50 MB) faster with 2 than 1.
pub fn gemv_features_per_warp(bytes: usize) -> u32 {
    if bytes >= 128 << 20 {
        4
    } else if bytes >= 32 << 20 {
        2
    } else {
        1
    }
}

/// Rows a GEMV kernel holds in registers for batches of up to `rows` rows: 1, 2, 4 or 8.
pub fn gemv_rows(rows: usize) -> usize {
    rows.clamp(1, 8).next_power_of_two()
}

/// A failed CUDA call or a kernel that did not build, with what was being done.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("cuda: {0}")]
pub struct GpuError(pub String);

pub type GpuResult<T> = Result<T, GpuError>;

pub(crate) fn err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> GpuError + '_ {
    move |e| GpuError(format!("{what}: {e:?}"))
}

/// Why CUDA cannot be used here, or `Ok` with the device count.
pub fn probe() -> Result<usize, String> {
    // SAFETY: only tries to open the shared library.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) on this machine".into());
    }
    result::init().map_err(|e| format!("the CUDA driver did not initialise: {e:?}"))?;
    let n = result::device::get_count().map_err(|e| format!("cannot count CUDA devices: {e:?}"))?;
    if n <= 0 {
        return Err("the CUDA driver found no device".into());
    }
    if !nvrtc_available() {
        return Err(
            "no NVRTC library (libnvrtc.so.13): install the CUDA toolkit or the nvidia-cuda-nvrtc \
             wheel and put its lib folder on LD_LIBRARY_PATH"
                .into(),
        );
    }
    Ok(n as usize)
}

struct LoadedModule {
    module: sys::CUmodule,
    functions: HashMap<String, Kernel>,
}

/// A loaded kernel and its parameter count (checked at every launch: a launch with the wrong
/// number of arguments would otherwise crash inside the driver).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    f: sys::CUfunction,
    params: Option<usize>,
}

fn param_count(f: sys::CUfunction) -> Option<usize> {
    let mut n = 0;
    loop {
        let (mut off, mut size) = (0usize, 0usize);
        // SAFETY: a loaded function; the driver writes two sizes.
        let r = unsafe { sys::cuFuncGetParamInfo(f, n, &mut off, &mut size) };
        match r {
            sys::CUresult::CUDA_SUCCESS => n += 1,
            // Index past the last parameter.
            sys::CUresult::CUDA_ERROR_INVALID_VALUE => return Some(n),
            // A driver without the query: no check.
            _ => return None,
        }
        if n > 256 {
            return None;
        }
    }
}

/// Launches captured by [`Gpu::capture`], replayed with one call.
pub struct GpuGraph(cudarc::driver::CudaGraph);

impl GpuGraph {
    /// Queues the whole graph on the stream it was captured on.
    pub fn launch(&self) -> GpuResult<()> {
        self.0.launch().map_err(err("launching a graph"))
    }
}

/// One device, one stream: every op is queued on it in order, so no op waits on the host.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: u32,
    pub total_mem: usize,
    modules: Mutex<HashMap<&'static str, LoadedModule>>,
    blas: Mutex<Option<blas::BlasHandle>>,
}

// SAFETY: the raw module/function handles are process-wide driver objects; access to the map is
// behind a mutex and the context is bound on every entry point.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Opens device `ordinal`, or says why it cannot.
    pub fn new(ordinal: usize) -> GpuResult<Arc<Gpu>> {
        let n = probe().map_err(GpuError)?;
        if ordinal >= n {
            return Err(GpuError(format!(
                "no CUDA device {ordinal}: this machine has {n}"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(err("creating the context"))?;
        let stream = ctx.new_stream().map_err(err("creating a stream"))?;
        let attr = |a| ctx.attribute(a).map_err(err("reading a device attribute"));
        let sm_count =
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        Ok(Arc::new(Gpu {
            name: ctx.name().map_err(err("reading the device name"))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(err("reading the compute capability"))?,
            total_mem: ctx.total_mem().map_err(err("reading the memory size"))?,
            sm_count,
            ordinal,
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
        }))
    }

    /// `sm_90` and the like, for NVRTC.
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }

    pub fn bind(&self) -> GpuResult<()> {
        self.ctx
            .bind_to_thread()
            .map_err(err("binding the context"))
    }

    pub fn stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Captures the launches `f` queues on this device's stream into a graph; nothing runs until
    /// the graph is launched. Everything `f` uses must already be allocated and loaded.
    pub fn capture(&self, f: impl FnOnce() -> GpuResult<()>) -> GpuResult<GpuGraph> {
        self.bind()?;
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(err("beginning a graph capture"))?;
        let queued = f();
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(err("ending a graph capture"));
        queued?;
        graph?
            .map(GpuGraph)
            .ok_or_else(|| GpuError("the graph capture recorded nothing".into()))
    }

    pub fn synchronize(&self) -> GpuResult<()> {
        self.bind()?;
        // SAFETY: the stream belongs to this context.
        unsafe { result::stream::synchronize(self.stream()) }.map_err(err("synchronize"))
    }

    /// The function `name` of `src`, compiling and loading the module at first use.
    pub fn function(&self, src: &KernelSource, name: &str) -> GpuResult<Kernel> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if !modules.contains_key(src.name) {
            self.bind()?;
            let cubin = compile::cached_cubin(src, &self.arch())?;
            // SAFETY: a cubin that NVRTC built for this device's architecture.
            let module = unsafe { result::module::load_data(cubin.as_ptr() as *const c_void) }
                .map_err(err(&format!("loading module {}", src.name)))?;
            modules.insert(
                src.name,
                LoadedModule {
                    module,
                    functions: HashMap::new(),
                },
            );
        }
        let m = modules.get_mut(src.name).expect("inserted above");
        if let Some(&f) = m.functions.get(name) {
            return Ok(f);
        }
        let cname = std::ffi::CString::new(name).expect("kernel names have no NUL");
        // SAFETY: the module is loaded and stays loaded for the life of `self`.
        let f = unsafe { result::module::get_function(m.module, cname) }
            .map_err(err(&format!("kernel {name} in {}", src.name)))?;
        let k = Kernel {
            f,
            params: param_count(f),
        };
        m.functions.insert(name.to_string(), k);
        Ok(k)
    }

    /// Queues `f` on the stream. `args` are pointers to each argument's value.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and size, and every device
    /// pointer among them must stay valid until the kernel has run.
    pub unsafe fn launch(
        &self,
        k: Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        args: &mut [*mut c_void],
    ) -> GpuResult<()> {
        if let Some(n) = k.params {
            if n != args.len() {
                return Err(GpuError(format!(
                    "kernel launch with {} arguments for {n} parameters",
                    args.len()
                )));
            }
        }
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        self.bind()?;
        result::launch_kernel(k.f, grid, block, shared_bytes, self.stream(), args)
            .map_err(err("kernel launch"))
    }

    pub fn alloc(self: &Arc<Self>, bytes: usize) -> GpuResult<DevBuf> {
        DevBuf::alloc(self, bytes)
    }

    /// Device time between two points of the stream, for benchmarks.
    pub fn event(&self) -> GpuResult<GpuEvent> {
        self.bind()?;
        let e = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map_err(err("creating an event"))?;
        Ok(GpuEvent(e))
    }

    pub fn record(&self, e: &GpuEvent) -> GpuResult<()> {
        // SAFETY: both handles belong to this context.
        unsafe { result::event::record(e.0, self.stream()) }.map_err(err("recording an event"))
    }

    /// Bytes free and total on the device.
    pub fn mem_info(&self) -> GpuResult<(usize, usize)> {
        self.bind()?;
        result::mem_get_info().map_err(err("reading memory info"))
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let _ = self.bind();
        let _ = self.synchronize();
        // The cuBLAS handle goes before the context it was made in.
        drop(
            self.blas
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        for (_, m) in self
            .modules
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            // SAFETY: no kernel of the module is queued any more (synchronized above).
            let _ = unsafe { result::module::unload(m.module) };
        }
    }
}

pub struct GpuEvent(sys::CUevent);

impl GpuEvent {
    /// Milliseconds from `self` to `end`, waiting for `end`.
    pub fn elapsed_ms(&self, end: &GpuEvent) -> GpuResult<f32> {
        // SAFETY: both events were recorded on one stream.
        unsafe {
            result::event::synchronize(end.0).map_err(err("waiting for an event"))?;
            result::event::elapsed(self.0, end.0).map_err(err("reading event time"))
        }
    }
}

impl Drop for GpuEvent {
    fn drop(&mut self) {
        // SAFETY: created by `Gpu::event`.
        let _ = unsafe { result::event::destroy(self.0) };
    }
}

// SAFETY: events are plain driver handles.
unsafe impl Send for GpuEvent {}

/// Kernel arguments: each entry points at a value that outlives the launch call.
#[macro_export]
macro_rules! kargs {
    ($($a:expr),* $(,)?) => {
        [$( &$a as *const _ as *mut ::std::ffi::c_void ),*]
    };
}
