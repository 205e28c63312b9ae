//! Broken and lying GGUF files: truncated anywhere, bytes overwritten at
//! random, sizes and offsets past the end, unknown types. Each is one
//! error (or, where the damage is harmless, a file that still reads), never
//! a panic or a read out of bounds.

use std::path::PathBuf;

use sd_gguf::{GgufError, GgufFile};

fn fixture() -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../reference/fixtures/gguf/blocks.gguf");
    std::fs::read(path).unwrap()
}

/// Writes `bytes` to a file of this test's own and reads it fully.
fn read(bytes: &[u8], dir: &std::path::Path, n: usize) -> Result<usize, GgufError> {
    let path = dir.join(format!("case-{n}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    let file = GgufFile::open(&path);
    let _ = std::fs::remove_file(&path);
    let file = file?;
    let mut values = 0;
    for tensor in &file.tensors {
        if let Ok(v) = file.dequantize(tensor) {
            values += v.len();
        }
    }
    Ok(values)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sd-gguf-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// xorshift64*: a fixed stream of mutations, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn truncated_files_are_refused_at_every_length() {
    let bytes = fixture();
    let dir = scratch("truncated");
    let whole = read(&bytes, &dir, 0).unwrap();
    assert!(whole > 0);
    let mut refused = 0;
    for len in 0..bytes.len() {
        match read(&bytes[..len], &dir, len) {
            Err(GgufError::Format { message, .. }) => {
                assert!(!message.is_empty());
                refused += 1;
            }
            Err(other) => panic!("{len}: {other}"),
            // past the last tensor's bytes only padding is cut
            Ok(values) => assert_eq!(values, whole, "{len}"),
        }
    }
    assert!(refused > bytes.len() / 2, "{refused} of {}", bytes.len());
}

#[test]
fn randomly_damaged_files_never_panic() {
    let bytes = fixture();
    let dir = scratch("damaged");
    let mut rng = Rng(0x5D_2026);
    let (mut refused, cases) = (0, 3000);
    for case in 0..cases {
        let mut damaged = bytes.clone();
        for _ in 0..1 + rng.next() % 8 {
            // mostly the header and directory, where the structure is
            let span = if rng.next() % 4 == 0 {
                damaged.len()
            } else {
                1200.min(damaged.len())
            };
            let at = (rng.next() % span as u64) as usize;
            damaged[at] = match rng.next() % 3 {
                0 => 0xFF,
                1 => 0,
                _ => rng.next() as u8,
            };
        }
        if read(&damaged, &dir, case).is_err() {
            refused += 1;
        }
    }
    // (the count is for the record: damage to tensor data reads fine)
    eprintln!("{cases} damaged files: {refused} refused, none panicked");
    assert!(refused > 0);
}

#[test]
fn lying_directories_name_the_tensor() {
    let bytes = fixture();
    let dir = scratch("lying");
    // the first tensor entry: its name, then dims, type and offset
    let name = b"quantized.F32";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let dims_end = at + 4 + 2 * 8;
    let cases: [(usize, Vec<u8>, &str); 3] = [
        (
            dims_end,
            99u32.to_le_bytes().to_vec(),
            "unknown GGML type 99",
        ),
        (
            dims_end + 4,
            (1u64 << 40).to_le_bytes().to_vec(),
            "runs past the end of the file",
        ),
        (
            at + 4,
            u64::MAX.to_le_bytes().to_vec(),
            "runs past the end of the file",
        ),
    ];
    for (n, (offset, value, expected)) in cases.into_iter().enumerate() {
        let mut lying = bytes.clone();
        lying[offset..offset + value.len()].copy_from_slice(&value);
        let error = read(&lying, &dir, n).unwrap_err().to_string();
        assert!(
            error.contains("quantized.F32") && error.contains(expected),
            "{error}"
        );
        assert!(error.contains("case-"), "the file is named: {error}");
    }
}
