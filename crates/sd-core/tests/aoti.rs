//! AOTInductor packages through libtorch's loader (`sd_core::ffi::aoti`): a
//! small convolution/attention/GELU graph compiled by torch's compiler in the
//! project's virtualenv (on this machine: a package holds this CPU's machine
//! code, so none is committed), loaded and run from Rust, against the same
//! module run eagerly by torch. Fusion changes rounding: the bound is the
//! error model's for a reordered computation, in every mode. A missing file
//! is refused naming it.

use std::path::{Path, PathBuf};
use std::process::Command;

use sd_core::ffi::aoti::{metadata, CompiledPackage};
use sd_testkit::parity::{assert_matches_reordered, read_tensors, reference_dir, take};
use tch::Device;

const COMPILE: &str = r#"
import sys, torch
from safetensors.torch import save_file
out = sys.argv[1]
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.qkv = torch.nn.Linear(8, 24)
    def forward(self, x, t):
        h = torch.nn.functional.silu(self.norm(self.conv(x))) * t.view(-1, 1, 1, 1)
        tokens = h.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).view(tokens.shape[0], -1, 3, 2, 4).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return torch.nn.functional.gelu(a.transpose(1, 2).flatten(2)), h.mean()
torch.manual_seed(0)
block = Block().eval()
inputs = (torch.randn(2, 4, 8, 8), torch.tensor([0.5, 2.0]))
with torch.no_grad():
    eager = block(*inputs)
    program = torch.export.export(block, inputs)
    torch._inductor.aoti_compile_and_package(program, package_path=out + "/block.pt2",
        inductor_configs={"aot_inductor.metadata": {"sd.model": "test-block"}})
save_file({"x": inputs[0], "t": inputs[1], "out0": eager[0], "out1": eager[1].reshape(1)}, out + "/block.safetensors")
"#;

/// The package, compiled once per build folder by the virtualenv's torch.
fn package() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("aoti-block");
    if dir.join("block.pt2").exists() && dir.join("block.safetensors").exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let python = reference_dir().join("../.venv/bin/python");
    let run = Command::new(&python)
        .args(["-c", COMPILE, dir.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (bash scripts/setup.sh --reference)",
                python.display()
            )
        });
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    dir
}

#[test]
fn a_compiled_package_runs_as_torch_eager() {
    let dir = package();
    let meta = metadata(&dir.join("block.pt2")).unwrap();
    assert_eq!(
        meta.get("sd.model").map(String::as_str),
        Some("test-block"),
        "{meta:?}"
    );
    // SAFETY: compiled just now by this machine's torch
    let compiled = unsafe { CompiledPackage::load(&dir.join("block.pt2"), Device::Cpu) }.unwrap();
    let reference = read_tensors(dir.join("block.safetensors")).unwrap();
    let t = |k: &str| take(&reference, k).unwrap();
    let outputs = compiled.run(&[&t("x"), &t("t")]).unwrap();
    assert_eq!(outputs.len(), 2);
    assert_matches_reordered("block out0", &outputs[0], &t("out0"), 3);
    assert_matches_reordered("block out1", &outputs[1].reshape([1]), &t("out1"), 3);
    // a wrong input count is an error, not a crash
    let Err(error) = compiled.run(&[&t("x")]) else {
        panic!("ran on one input")
    };
    assert!(
        error.to_string().contains("compiled package run"),
        "{error}"
    );
}

#[test]
fn a_missing_package_is_refused_naming_it() {
    let missing = Path::new("/nonexistent/unet.pt2");
    // SAFETY: there is no file to run
    let loaded = unsafe { CompiledPackage::load(missing, Device::Cpu) };
    let error = loaded.unwrap_err().to_string();
    assert!(error.contains("/nonexistent/unet.pt2"), "{error}");
    let error = metadata(missing).unwrap_err().to_string();
    assert!(error.contains("/nonexistent/unet.pt2"), "{error}");
}
