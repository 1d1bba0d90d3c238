//! The CUDA context, stream and raw device buffers, with every driver result mapped to a
//! [`BackendError`]. Library presence is checked before any CUDA symbol is touched: with dynamic
//! loading, calling into a missing library panics instead of returning an error.

use std::sync::Arc;

use cudarc::driver::result::{self as drv, DriverError};
use cudarc::driver::sys::{self as dsys, CUdeviceptr, CUstream};
use cudarc::driver::{CudaContext, CudaStream};

use crate::backend::BackendError;

/// Oldest driver API this backend is built against (CUDA 12.0).
const MIN_DRIVER_VERSION: i32 = 12_000;

/// Maps a driver error to a backend error, naming what was being done.
pub(crate) fn driver_err(what: &str) -> impl FnOnce(DriverError) -> BackendError + '_ {
    move |e| {
        if e.0 == dsys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            BackendError::OutOfMemory(format!("{what}: {e:?}"))
        } else {
            BackendError::Device(format!("{what}: {e:?}"))
        }
    }
}

/// Which CUDA libraries could be loaded; `None` when all are present, else the missing names.
fn missing_libraries() -> Option<String> {
    // SAFETY: these only try to dlopen the libraries; no CUDA symbol is called.
    let present = unsafe {
        [
            ("libcuda (driver)", dsys::is_culib_present()),
            ("libnvrtc", cudarc::nvrtc::sys::is_culib_present()),
            ("libcublas", cudarc::cublas::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = present
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// True when the CUDA libraries load and at least one device is visible.
pub fn cuda_available() -> bool {
    missing_libraries().is_none()
        && drv::init().is_ok()
        && drv::device::get_count().map(|n| n > 0).unwrap_or(false)
}

/// One device's context and the single stream every operation of a backend is ordered on.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub num_sms: i32,
}

impl Gpu {
    pub fn open(ordinal: usize) -> Result<Arc<Self>, BackendError> {
        if let Some(missing) = missing_libraries() {
            return Err(BackendError::Device(format!(
                "CUDA libraries not found: {missing}"
            )));
        }
        drv::init().map_err(driver_err("cuInit"))?;
        let mut version = 0i32;
        // SAFETY: the driver library is loaded and initialised; `version` is a valid out pointer.
        unsafe { dsys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(driver_err("cuDriverGetVersion"))?;
        if version < MIN_DRIVER_VERSION {
            return Err(BackendError::Device(format!(
                "CUDA driver {}.{} is too old: {}.{} or newer is needed",
                version / 1000,
                version % 1000 / 10,
                MIN_DRIVER_VERSION / 1000,
                MIN_DRIVER_VERSION % 1000 / 10
            )));
        }
        let count = drv::device::get_count().map_err(driver_err("cuDeviceGetCount"))?;
        if ordinal >= count as usize {
            return Err(BackendError::Device(format!(
                "CUDA device {ordinal} requested, {count} visible"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err("creating the CUDA context"))?;
        let stream = ctx
            .new_stream()
            .map_err(driver_err("creating a CUDA stream"))?;
        let name = ctx.name().map_err(driver_err("reading the device name"))?;
        let compute_capability = ctx
            .compute_capability()
            .map_err(driver_err("reading the compute capability"))?;
        let num_sms = ctx
            .attribute(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("reading the SM count"))?;
        if compute_capability.0 < 8 {
            return Err(BackendError::Device(format!(
                "{name} has compute capability {}.{}; the CUDA backend needs 8.0 or newer (bf16 tensor cores)",
                compute_capability.0, compute_capability.1
            )));
        }
        Ok(Arc::new(Self {
            ctx,
            stream,
            name,
            compute_capability,
            num_sms,
        }))
    }

    pub fn stream(&self) -> CUstream {
        self.stream.cu_stream()
    }

    /// The stream as cudarc's handle (graph capture needs it).
    pub(crate) fn cuda_stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Makes this context current on the calling thread (a backend may move between threads).
    pub fn bind(&self) -> Result<(), BackendError> {
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("binding the CUDA context"))
    }

    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.stream
            .synchronize()
            .map_err(driver_err("stream synchronize"))
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize), BackendError> {
        self.bind()?;
        drv::mem_get_info().map_err(driver_err("cuMemGetInfo"))
    }

    pub fn alloc(self: &Arc<Self>, bytes: usize, what: &str) -> Result<DeviceBuffer, BackendError> {
        self.bind()?;
        // SAFETY: plain cuMemAlloc; the pointer is owned by the returned buffer and freed on drop.
        let ptr = unsafe { drv::malloc_sync(bytes.max(1)) }.map_err(driver_err(what))?;
        Ok(DeviceBuffer {
            gpu: self.clone(),
            ptr,
            bytes,
        })
    }

    /// Copies `src` to device address `dst` on the stream. Pageable sources are staged by the
    /// driver before this returns, so the caller may reuse `src` at once.
    pub fn upload<T>(&self, dst: CUdeviceptr, src: &[T]) -> Result<(), BackendError> {
        // SAFETY: callers pass a destination with room for `src` (checked by DeviceBuffer users).
        unsafe { drv::memcpy_htod_async(dst, src, self.stream()) }
            .map_err(driver_err("host-to-device copy"))
    }

    /// Copies device memory into `dst` and waits for it.
    pub fn download<T>(&self, dst: &mut [T], src: CUdeviceptr) -> Result<(), BackendError> {
        // SAFETY: `src` holds at least `dst.len()` elements; the synchronize below keeps `dst`
        // borrowed until the copy has landed.
        unsafe { drv::memcpy_dtoh_async(dst, src, self.stream()) }
            .map_err(driver_err("device-to-host copy"))?;
        self.synchronize()
    }

    pub fn copy_device(
        &self,
        dst: CUdeviceptr,
        src: CUdeviceptr,
        bytes: usize,
    ) -> Result<(), BackendError> {
        // SAFETY: both ranges are live allocations of at least `bytes` (caller's contract).
        unsafe { drv::memcpy_dtod_async(dst, src, bytes, self.stream()) }
            .map_err(driver_err("device-to-device copy"))
    }
}

/// An owned device allocation, freed on drop.
pub struct DeviceBuffer {
    gpu: Arc<Gpu>,
    ptr: CUdeviceptr,
    bytes: usize,
}

impl DeviceBuffer {
    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// Device address of element `index` of a buffer of `T`.
    pub fn at<T>(&self, index: usize) -> CUdeviceptr {
        self.ptr + (index * std::mem::size_of::<T>()) as u64
    }
    /// Writes `data` at the start of the buffer.
    pub fn write<T>(&self, data: &[T]) -> Result<(), BackendError> {
        let bytes = std::mem::size_of_val(data);
        if bytes > self.bytes {
            return Err(BackendError::Device(format!(
                "upload of {bytes} bytes into a {}-byte buffer",
                self.bytes
            )));
        }
        self.gpu.upload(self.ptr, data)
    }
    /// Reads the first `out.len()` elements.
    pub fn read<T>(&self, out: &mut [T]) -> Result<(), BackendError> {
        let bytes = std::mem::size_of_val(out);
        if bytes > self.bytes {
            return Err(BackendError::Device(format!(
                "download of {bytes} bytes from a {}-byte buffer",
                self.bytes
            )));
        }
        self.gpu.download(out, self.ptr)
    }
    /// Sets every byte to `value`.
    pub fn fill_bytes(&self, value: u8) -> Result<(), BackendError> {
        // SAFETY: the range is this allocation.
        unsafe { drv::memset_d8_async(self.ptr, value, self.bytes, self.gpu.stream()) }
            .map_err(driver_err("cuMemsetD8"))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // Errors here cannot be reported; a failed free only leaks until the context goes away.
        if self.gpu.bind().is_ok() {
            let _ = self.gpu.synchronize();
            // SAFETY: `ptr` came from cuMemAlloc and is freed exactly once.
            let _ = unsafe { drv::free_sync(self.ptr) };
        }
    }
}

/// Page-locked host memory, for KV block transfers at full PCIe speed.
pub struct PinnedBuffer {
    gpu: Arc<Gpu>,
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: the buffer is plain host memory owned by this value.
unsafe impl Send for PinnedBuffer {}

impl PinnedBuffer {
    pub fn new(gpu: &Arc<Gpu>, bytes: usize) -> Result<Self, BackendError> {
        gpu.bind()?;
        // SAFETY: cuMemHostAlloc of `bytes`; freed on drop.
        let ptr = unsafe { drv::malloc_host(bytes.max(1), 0) }
            .map_err(driver_err("cuMemHostAlloc"))? as *mut u8;
        Ok(Self {
            gpu: gpu.clone(),
            ptr,
            bytes,
        })
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points at `bytes` bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() {
            // SAFETY: allocated by cuMemHostAlloc, freed once.
            let _ = unsafe { drv::free_host(self.ptr as *mut std::ffi::c_void) };
        }
    }
}
