//! The CUDA C++ kernels: compiled at start-up with NVRTC for the device's virtual architecture,
//! cached on disk as PTX (keyed by source, options and NVRTC version), and launched raw.
//!
//! Head size and GQA group are compile-time constants of the module (`-DHEAD_DIM`,
//! `-DGQA_GROUP`), so the attention kernels unroll over them; one module serves one model.

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use cudarc::driver::sys::{
    CUdeviceptr, CUfunction_attribute, CUlaunchAttribute, CUlaunchAttributeID,
    CUlaunchAttributeValue, CUlaunchConfig,
};
use cudarc::driver::{CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use sha2::{Digest, Sha256};

use super::device::{driver_err, Gpu};
use super::gemv::GemvVariant;
use super::CudaDtype;
use crate::backend::BackendError;

const SOURCES: [(&str, &str); 6] = [
    ("common.cuh", include_str!("kernels/common.cuh")),
    ("elementwise.cu", include_str!("kernels/elementwise.cu")),
    (
        "decode_attention.cu",
        include_str!("kernels/decode_attention.cu"),
    ),
    (
        "prefill_attention.cu",
        include_str!("kernels/prefill_attention.cu"),
    ),
    ("skinny_gemm.cu", include_str!("kernels/skinny_gemm.cu")),
    ("gemv.cu", include_str!("kernels/gemv.cu")),
];

/// Decode attention: positions per shared-memory tile and threads per CTA (kernel constants).
pub const DECODE_TILE: usize = 64;
pub const DECODE_THREADS: u32 = 128;
/// Threads of an `rms_norm` CTA: rows up to 4096 wide (16 × this) sit in registers (the
/// kernel's RMS_NORM_VEC float4 per thread); the skinny GEMMs' fused norms use the same count,
/// so both add the sum of squares in the same order.
pub const RMS_NORM_THREADS: u32 = (SKINNY_WARPS * 32) as u32;
/// Prefill attention: query rows per CTA.
pub const PREFILL_QUERY_TILE: usize = 64;
pub const PREFILL_THREADS: u32 = 128;
/// Skinny GEMM: output features per CTA (one warp each) and the row counts it is built for.
pub const SKINNY_WARPS: usize = 8;
pub const SKINNY_ROW_VARIANTS: [usize; 4] = [1, 2, 4, 8];
/// Widest row the fused RMSNorm + projection kernels hold in shared memory.
pub const NORM_MAX_INNER: usize = 8192;

/// A kernel argument; each occupies one 8-byte parameter slot (little-endian, so 4-byte values
/// sit at the slot's address).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(CUdeviceptr),
    I32(i32),
    F32(f32),
    U64(u64),
}

impl Arg {
    fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) | Arg::U64(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

/// A null device pointer, for optional kernel inputs.
pub const NULL: Arg = Arg::Ptr(0);

/// Oldest compute capability with programmatic dependent launch (`griddepcontrol`).
pub const PDL_MIN_COMPUTE_CAPABILITY: (i32, i32) = (9, 0);

/// Every kernel of one compiled module.
pub struct Kernels {
    gpu: Arc<Gpu>,
    _module: Arc<CudaModule>,
    /// Launch with programmatic stream serialization (see `common.cuh` for the rules every
    /// kernel follows so that this never changes results).
    programmatic: AtomicBool,
    /// Which kernel serves one-row projections ([`GemvVariant::to_index`]).
    gemv_variant: AtomicU8,
    pub embed_lookup: CudaFunction,
    pub rms_norm: CudaFunction,
    pub swiglu: CudaFunction,
    pub rope_kv_write: CudaFunction,
    pub argmax_rows: CudaFunction,
    pub fill_normal: CudaFunction,
    pub fill_f32: CudaFunction,
    pub decode_attention: CudaFunction,
    pub decode_attention_reduce: CudaFunction,
    pub prefill_attention: CudaFunction,
    /// `skinny_gemm[i]` serves up to `SKINNY_ROW_VARIANTS[i]` rows.
    pub skinny_gemm: [CudaFunction; 4],
    pub skinny_norm_gemm_1: CudaFunction,
    pub skinny_norm_gate_up_swiglu_1: CudaFunction,
    /// One-row GEMV alternatives (kernels/gemv.cu, see [`GemvVariant`]).
    pub gemv_split_k: CudaFunction,
    pub gemv_rows2: CudaFunction,
    pub gemv_persistent: CudaFunction,
    /// Split-K gate/up projection with SwiGLU folded in (one-row steps without fused norms).
    pub gemv_gate_up_swiglu_split_k: CudaFunction,
    /// Split-K QKV projection with rope and the K/V cache write folded in (same steps).
    pub gemv_qkv_rope_split_k: CudaFunction,
    /// RMSNorm folded into one-row split-K projections (docs/cuda-notes.md round 8): the
    /// residual writer leaving per-CTA sums of squares, and the three readers that normalise
    /// their input on the fly.
    pub gemv_split_k_residual_ss: CudaFunction,
    pub gemv_split_k_norm: CudaFunction,
    pub gemv_gate_up_swiglu_split_k_norm: CudaFunction,
    pub gemv_qkv_rope_split_k_norm: CudaFunction,
    pub head_dim: usize,
    pub group: usize,
}

/// Where compiled PTX is cached: `$STATOR_KERNEL_CACHE`, else `~/.cache/stator/kernels`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STATOR_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/stator/kernels"))
}

fn full_source() -> String {
    SOURCES
        .iter()
        .map(|(name, text)| format!("// ---- {name}\n{text}\n"))
        .collect()
}

/// Head sizes the kernels support (multiples of 16 for the tensor-core tiles; shared memory
/// of the decode kernel bounds the top).
pub fn supported_head_dim(head_dim: usize) -> bool {
    matches!(head_dim, 32 | 64 | 96 | 128)
}

impl Kernels {
    pub fn compile(
        gpu: &Arc<Gpu>,
        head_dim: usize,
        group: usize,
        dtype: CudaDtype,
    ) -> Result<Self, BackendError> {
        if !supported_head_dim(head_dim) {
            return Err(BackendError::Device(format!(
                "head_dim {head_dim} is not supported by the CUDA kernels"
            )));
        }
        if group == 0 || group > 16 {
            return Err(BackendError::Device(format!(
                "GQA group {group} is not supported (1..=16)"
            )));
        }
        gpu.bind()?;
        let (major, minor) = gpu.compute_capability;
        let arch = format!("compute_{major}{minor}");
        let mut options = vec![
            format!("--gpu-architecture={arch}"),
            format!("-DHEAD_DIM={head_dim}"),
            format!("-DGQA_GROUP={group}"),
            "--std=c++17".to_string(),
        ];
        if dtype == CudaDtype::F16 {
            options.push("-DSTATOR_F16".into());
        }
        let source = full_source();
        let ptx = cached_or_compiled(&source, &options)?;
        let module = gpu
            .ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(driver_err("loading the kernel module"))?;
        let f = |name: &str| module.load_function(name).map_err(driver_err(name));
        Ok(Self {
            gpu: gpu.clone(),
            embed_lookup: f("embed_lookup")?,
            rms_norm: f("rms_norm")?,
            swiglu: f("swiglu")?,
            rope_kv_write: f("rope_kv_write")?,
            argmax_rows: f("argmax_rows")?,
            fill_normal: f("fill_normal")?,
            fill_f32: f("fill_f32")?,
            decode_attention: f("decode_attention")?,
            decode_attention_reduce: f("decode_attention_reduce")?,
            prefill_attention: f("prefill_attention")?,
            skinny_gemm: [
                f("skinny_gemm_1")?,
                f("skinny_gemm_2")?,
                f("skinny_gemm_4")?,
                f("skinny_gemm_8")?,
            ],
            skinny_norm_gemm_1: f("skinny_norm_gemm_1")?,
            skinny_norm_gate_up_swiglu_1: f("skinny_norm_gate_up_swiglu_1")?,
            gemv_split_k: f("gemv_split_k")?,
            gemv_rows2: f("gemv_rows2")?,
            gemv_persistent: f("gemv_persistent")?,
            gemv_gate_up_swiglu_split_k: f("gemv_gate_up_swiglu_split_k")?,
            gemv_qkv_rope_split_k: f("gemv_qkv_rope_split_k")?,
            gemv_split_k_residual_ss: f("gemv_split_k_residual_ss")?,
            gemv_split_k_norm: f("gemv_split_k_norm")?,
            gemv_gate_up_swiglu_split_k_norm: f("gemv_gate_up_swiglu_split_k_norm")?,
            gemv_qkv_rope_split_k_norm: f("gemv_qkv_rope_split_k_norm")?,
            gemv_variant: AtomicU8::new(GemvVariant::default().to_index()),
            _module: module,
            programmatic: AtomicBool::new(false),
            head_dim,
            group,
        })
    }

    /// Whether this device can launch kernels programmatically dependent on their predecessor.
    pub fn supports_programmatic_launch(&self) -> bool {
        self.gpu.compute_capability >= PDL_MIN_COMPUTE_CAPABILITY
    }

    /// Launches from now on with programmatic dependent launch (on) or the ordinary way (off);
    /// ignored (stays off) on devices older than sm_90. Returns whether it is on.
    pub fn set_programmatic_launch(&self, on: bool) -> bool {
        let on = on && self.supports_programmatic_launch();
        self.programmatic.store(on, Ordering::Relaxed);
        on
    }

    pub fn programmatic_launch(&self) -> bool {
        self.programmatic.load(Ordering::Relaxed)
    }

    /// Serves one-row projections with `variant` from now on.
    pub fn set_gemv_variant(&self, variant: GemvVariant) {
        self.gemv_variant
            .store(variant.to_index(), Ordering::Relaxed);
    }

    pub fn gemv_variant(&self) -> GemvVariant {
        GemvVariant::from_index(self.gemv_variant.load(Ordering::Relaxed))
    }

    /// Streaming multiprocessors of the device (sizes persistent grids).
    pub fn num_sms(&self) -> i32 {
        self.gpu.num_sms
    }

    /// Launches `f` on the backend's stream.
    pub fn launch(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<(), BackendError> {
        let mut slots = [0u64; 24];
        if args.len() > slots.len() {
            return Err(BackendError::Device(format!(
                "{} kernel arguments, at most 24",
                args.len()
            )));
        }
        for (slot, arg) in slots.iter_mut().zip(args) {
            *slot = arg.slot();
        }
        let mut params: Vec<*mut c_void> = slots[..args.len()]
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        if self.programmatic_launch() {
            return self.launch_programmatic(f, grid, block, &mut params);
        }
        // SAFETY: each parameter points at an 8-byte slot holding a value of the kernel's
        // parameter type; the driver copies them before returning. Pointer arguments are live
        // device allocations sized by the callers in this module.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                grid,
                (block, 1, 1),
                0,
                self.gpu.stream(),
                &mut params,
            )
        }
        .map_err(driver_err("kernel launch"))
    }

    /// `cuLaunchKernelEx` with programmatic stream serialization: the kernel may start once
    /// every CTA of the previous kernel on the stream has run `griddepcontrol.launch_dependents`,
    /// and orders itself after it with `griddepcontrol.wait`. Recorded as a programmatic edge
    /// when the stream is being captured into a graph.
    fn launch_programmatic(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), BackendError> {
        let mut value = CUlaunchAttributeValue { pad: [0; 64] };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attribute = CUlaunchAttribute {
            id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let config = CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: self.gpu.stream(),
            attrs: &mut attribute,
            numAttrs: 1,
        };
        // SAFETY: as in `launch`; `config` and the attribute it points at outlive the call,
        // which copies them.
        unsafe {
            cudarc::driver::sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(driver_err("programmatic kernel launch"))
    }

    /// `y[rows, out] (+)= x[rows, inn] · w[out, inn]ᵀ` for at most 8 rows by streaming the
    /// weights once (decode steps); one row goes to the kernel of [`Self::gemv_variant`].
    /// `None` when the shape does not suit it (caller falls back to cuBLAS).
    #[allow(clippy::too_many_arguments)]
    pub fn skinny_gemm(
        &self,
        y: CUdeviceptr,
        y_f32: bool,
        x: CUdeviceptr,
        w: CUdeviceptr,
        rows: usize,
        inn: usize,
        out: usize,
        accumulate: bool,
    ) -> Option<Result<(), BackendError>> {
        self.skinny_gemm_with(
            self.gemv_variant(),
            y,
            y_f32,
            x,
            w,
            rows,
            inn,
            out,
            accumulate,
        )
    }

    /// [`Self::skinny_gemm`] with an explicit one-row kernel (checks and benchmarks compare
    /// them); `gemv` is ignored for more than one row.
    #[allow(clippy::too_many_arguments)]
    pub fn skinny_gemm_with(
        &self,
        gemv: GemvVariant,
        y: CUdeviceptr,
        y_f32: bool,
        x: CUdeviceptr,
        w: CUdeviceptr,
        rows: usize,
        inn: usize,
        out: usize,
        accumulate: bool,
    ) -> Option<Result<(), BackendError>> {
        let variant = SKINNY_ROW_VARIANTS.iter().position(|&r| r >= rows)?;
        if rows == 0
            || !inn.is_multiple_of(8)
            || !x.is_multiple_of(16)
            || !w.is_multiple_of(16)
            || inn > i32::MAX as usize
            || out > i32::MAX as usize
        {
            return None;
        }
        if rows == 1 {
            return Some(self.launch_gemv_one_row(gemv, y, y_f32, x, w, inn, out, accumulate));
        }
        Some(self.launch(
            &self.skinny_gemm[variant],
            (out.div_ceil(SKINNY_WARPS) as u32, 1, 1),
            (SKINNY_WARPS * 32) as u32,
            &[
                Arg::Ptr(w),
                Arg::Ptr(x),
                Arg::Ptr(y),
                Arg::I32(rows as i32),
                Arg::I32(inn as i32),
                Arg::I32(out as i32),
                Arg::I32(y_f32 as i32),
                Arg::I32(accumulate as i32),
            ],
        ))
    }

    /// Whether the fused one-row RMSNorm + projection kernels serve rows of `inn` values from
    /// these buffers (16-byte aligned weights, whole 16-byte chunks, the row fits shared memory).
    pub fn fused_norm_fits(&self, inn: usize, w: CUdeviceptr) -> bool {
        inn > 0 && inn <= NORM_MAX_INNER && inn.is_multiple_of(8) && w.is_multiple_of(16)
    }

    /// `y[out] (+)= rmsnorm(hidden[inn]) · w[out, inn]ᵀ` for a one-row step (the caller checks
    /// [`Self::fused_norm_fits`]).
    #[allow(clippy::too_many_arguments)]
    pub fn skinny_norm_gemm(
        &self,
        y: CUdeviceptr,
        y_f32: bool,
        hidden: CUdeviceptr,
        norm_weight: CUdeviceptr,
        w: CUdeviceptr,
        inn: usize,
        out: usize,
        accumulate: bool,
        eps: f32,
    ) -> Result<(), BackendError> {
        self.launch(
            &self.skinny_norm_gemm_1,
            (out.div_ceil(SKINNY_WARPS) as u32, 1, 1),
            (SKINNY_WARPS * 32) as u32,
            &[
                Arg::Ptr(w),
                Arg::Ptr(hidden),
                Arg::Ptr(norm_weight),
                Arg::Ptr(y),
                Arg::I32(inn as i32),
                Arg::I32(out as i32),
                Arg::I32(y_f32 as i32),
                Arg::I32(accumulate as i32),
                Arg::F32(eps),
            ],
        )
    }

    /// `act[inter] = SwiGLU(rmsnorm(hidden[inn]) · gate_up[2 inter, inn]ᵀ)` for a one-row step
    /// (the caller checks [`Self::fused_norm_fits`]).
    #[allow(clippy::too_many_arguments)]
    pub fn skinny_norm_gate_up_swiglu(
        &self,
        act: CUdeviceptr,
        hidden: CUdeviceptr,
        norm_weight: CUdeviceptr,
        gate_up: CUdeviceptr,
        inn: usize,
        inter: usize,
        eps: f32,
    ) -> Result<(), BackendError> {
        self.launch(
            &self.skinny_norm_gate_up_swiglu_1,
            (inter.div_ceil(SKINNY_WARPS) as u32, 1, 1),
            (SKINNY_WARPS * 32) as u32,
            &[
                Arg::Ptr(gate_up),
                Arg::Ptr(hidden),
                Arg::Ptr(norm_weight),
                Arg::Ptr(act),
                Arg::I32(inn as i32),
                Arg::I32(inter as i32),
                Arg::F32(eps),
            ],
        )
    }

    /// (registers per thread, local-memory bytes per thread) of a kernel: spills show as local
    /// memory.
    pub fn resources(&self, f: &CudaFunction) -> Result<(i32, i32), BackendError> {
        let regs = f
            .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS)
            .map_err(driver_err("cuFuncGetAttribute"))?;
        let local = f
            .get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)
            .map_err(driver_err("cuFuncGetAttribute"))?;
        Ok((regs, local))
    }
}

fn cached_or_compiled(source: &str, options: &[String]) -> Result<String, BackendError> {
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: NVRTC is loaded (checked in Gpu::open); the out pointers are valid.
    let _ = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    let nvrtc_version = format!("{major}.{minor}");
    let mut hasher = Sha256::new();
    hasher.update(source.as_bytes());
    for option in options {
        hasher.update([0u8]);
        hasher.update(option.as_bytes());
    }
    hasher.update(nvrtc_version.as_bytes());
    let key: String = hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = cache_dir().map(|dir| dir.join(format!("{key}.ptx")));
    if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        tracing::debug!(path = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(), "kernel cache hit");
        return Ok(text);
    }
    let started = std::time::Instant::now();
    let opts = CompileOptions {
        options: options.to_vec(),
        name: Some("stator_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| match e {
        CompileError::CompileError { log, .. } => BackendError::Device(format!(
            "NVRTC failed to compile the kernels:\n{}",
            log.to_string_lossy()
        )),
        other => BackendError::Device(format!("NVRTC: {other:?}")),
    })?;
    let text = ptx.to_src();
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        ?options,
        "compiled CUDA kernels"
    );
    if let Some(path) = path {
        // A cache we cannot write only costs a recompile next time.
        let written = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, &text)?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the kernel cache");
        }
    }
    Ok(text)
}
