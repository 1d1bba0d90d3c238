//! Projections through cuBLAS: `Y[tokens, out] (+)= X[tokens, in] · W[out, in]ᵀ` with 16-bit
//! inputs, f32 accumulation, and an f32 or 16-bit output.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::result as blas;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasHandle_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::driver::sys::CUdeviceptr;

use super::device::{DeviceBuffer, Gpu};
use super::CudaDtype;
use crate::backend::BackendError;

/// Element type of a GEMM output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    F32,
    /// The model's 16-bit type.
    Half,
}

/// cuBLAS workspace: set explicitly so that captured GEMMs (CUDA graphs) use the same memory
/// and pick the same algorithms as eager ones (32 MiB is what cuBLAS uses on Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

pub struct Blas {
    _gpu: Arc<Gpu>,
    handle: cublasHandle_t,
    half: cudaDataType_t,
    _workspace: DeviceBuffer,
}

// SAFETY: the handle is used only through &mut-free calls ordered on one stream by the owning
// backend, which is itself used from one thread at a time.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

fn blas_err(what: &str) -> impl FnOnce(blas::CublasError) -> BackendError + '_ {
    move |e| BackendError::Device(format!("cuBLAS {what}: {e:?}"))
}

impl Blas {
    pub fn new(gpu: &Arc<Gpu>, dtype: CudaDtype) -> Result<Self, BackendError> {
        gpu.bind()?;
        let workspace = gpu.alloc(WORKSPACE_BYTES, "cuBLAS workspace")?;
        let handle = blas::create_handle().map_err(blas_err("create"))?;
        // SAFETY: handle just created; the stream outlives it (both owned by the backend's Gpu).
        unsafe { blas::set_stream(handle, gpu.stream() as _) }.map_err(blas_err("set stream"))?;
        // SAFETY: the workspace is a live allocation of WORKSPACE_BYTES owned by this value,
        // which outlives the handle (destroyed in Drop before the buffer is freed).
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(
                handle,
                workspace.ptr() as *mut c_void,
                WORKSPACE_BYTES,
            )
        }
        .result()
        .map_err(blas_err("set workspace"))?;
        let half = match dtype {
            CudaDtype::Bf16 => cudaDataType_t::CUDA_R_16BF,
            CudaDtype::F16 => cudaDataType_t::CUDA_R_16F,
        };
        Ok(Self {
            _gpu: gpu.clone(),
            handle,
            half,
            _workspace: workspace,
        })
    }

    /// `y[rows, out] = x[rows, inn] · w[out, inn]ᵀ + (accumulate ? y : 0)`, all row-major.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        y: CUdeviceptr,
        y_type: OutType,
        x: CUdeviceptr,
        w: CUdeviceptr,
        rows: usize,
        inn: usize,
        out: usize,
        accumulate: bool,
    ) -> Result<(), BackendError> {
        let alpha = 1.0f32;
        let beta = if accumulate { 1.0f32 } else { 0.0 };
        let c_type = match y_type {
            OutType::F32 => cudaDataType_t::CUDA_R_32F,
            OutType::Half => self.half,
        };
        let dim = |v: usize| {
            i32::try_from(v)
                .map_err(|_| BackendError::Device(format!("GEMM dimension {v} too large")))
        };
        // Column-major view: Yᵀ[out, rows] = W[inn, out]ᵀ · Xᵀ[inn, rows].
        // SAFETY: callers pass live buffers holding rows*inn, out*inn and rows*out elements.
        unsafe {
            blas::gemm_ex(
                self.handle,
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                dim(out)?,
                dim(rows)?,
                dim(inn)?,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                self.half,
                dim(inn)?,
                x as *const c_void,
                self.half,
                dim(inn)?,
                &beta as *const f32 as *const c_void,
                y as *mut c_void,
                c_type,
                dim(out)?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("gemm"))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: destroyed once; errors at teardown cannot be acted upon.
        let _ = unsafe { blas::destroy_handle(self.handle) };
    }
}
