//! Devices and dtypes as users write them: `cpu`, `cuda`, `cuda:1`; `f32`, `f16`, `bf16`.

use tch::{Device, Kind};

use crate::error::{CoreError, Result};

/// Parses `cpu`, `cuda` (device 0) or `cuda:N`, and checks that CUDA is there when asked for.
pub fn parse_device(text: &str) -> Result<Device> {
    let device = match text.trim() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Device::Cuda(index),
            _ => return Err(CoreError::InvalidDevice(text.to_string())),
        },
    };
    let Device::Cuda(index) = device else {
        unreachable!("only CUDA devices reach this point")
    };
    if !tch::Cuda::is_available() || index >= tch::Cuda::device_count() as usize {
        return Err(CoreError::CudaUnavailable(text.to_string()));
    }
    Ok(device)
}

pub use crate::ffi::transfer::upload;

/// Bytes a new allocation on `device` could still get, where that can be
/// known: `MemAvailable` of /proc/meminfo for the CPU (Linux), the driver's
/// free memory plus the caching allocator's unused reserve for CUDA.
pub fn available_memory(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => {
            let text = std::fs::read_to_string("/proc/meminfo").ok()?;
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        }
        Device::Cuda(index) => crate::ffi::cuda_memory::free(index).ok(),
        _ => None,
    }
}

/// Parses the floating-point dtypes a model can run in.
pub fn parse_dtype(text: &str) -> Result<Kind> {
    match text.trim() {
        "f32" | "fp32" | "float32" => Ok(Kind::Float),
        "f16" | "fp16" | "float16" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        _ => Err(CoreError::InvalidDType(text.to_string())),
    }
}

/// The short name of a floating-point kind, the inverse of [`parse_dtype`].
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        Kind::Double => "f64",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn host_memory_is_known_and_plausible() {
        let bytes = available_memory(Device::Cpu).expect("/proc/meminfo on Linux");
        assert!(bytes > 1 << 26 && bytes < 1 << 50, "{bytes}");
    }

    #[test]
    fn upload_to_cuda_equals_to_device_and_is_plain_elsewhere() {
        let _rng = crate::GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let x = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
        assert_eq!(upload(&x, Device::Cpu).unwrap(), x);
        if tch::Cuda::is_available() {
            let y = upload(&x, Device::Cuda(0)).unwrap();
            assert_eq!(y.device(), Device::Cuda(0));
            assert_eq!(y.to_device(Device::Cpu), x);
        }
    }

    #[test]
    fn parses_cpu_and_dtypes() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_dtype("bf16").unwrap(), Kind::BFloat16);
        assert_eq!(parse_dtype("f16").unwrap(), Kind::Half);
        assert_eq!(dtype_name(parse_dtype("float32").unwrap()), "f32");
    }

    #[test]
    fn rejects_bad_text_with_the_value_named() {
        let err = parse_device("gpu0").unwrap_err().to_string();
        assert!(err.contains("'gpu0'"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("'cuda:x'"), "{err}");
        let err = parse_dtype("int8").unwrap_err().to_string();
        assert!(err.contains("'int8'"), "{err}");
    }

    #[test]
    fn cuda_request_fails_cleanly_without_cuda() {
        if tch::Cuda::is_available() {
            return;
        }
        let err = parse_device("cuda:0").unwrap_err();
        assert!(matches!(err, CoreError::CudaUnavailable(_)), "{err}");
    }
}
