//! The LoRA and embedding readers, and the model-weight loader they share
//! the safetensors parsing with, on untrusted bytes: arbitrary bytes, and
//! valid files with mutated headers (lengths, shapes, dtypes, offsets,
//! names), truncated or extended. Each must give a clear error or a file
//! that then merges or fails cleanly: never a panic, never an allocation
//! larger than the file (safetensors checks every shape against the bytes
//! present before a tensor is read, and every adapter is shape-checked
//! against its weight before anything is computed).
//!
//! Bounded here (`SD_FUZZ_ITERATIONS`, 1500 by default, a few seconds;
//! `SD_FUZZ_SEED` picks another sequence);
//! docs/development.md gives the longer run.

use std::path::{Path, PathBuf};

use sd_lora::{Component, EmbeddingFile, LoraFile, Merged, Target, Targets};
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seed_files(dir: &Path) -> Vec<Vec<u8>> {
    let randn = |s: &[i64]| Tensor::randn(s, (Kind::Float, Device::Cpu));
    let files: Vec<Vec<(&str, Tensor)>> = vec![
        vec![
            ("lora_unet_blocks_0_to_k.lora_down.weight", randn(&[2, 4])),
            ("lora_unet_blocks_0_to_k.lora_up.weight", randn(&[6, 2])),
            ("lora_unet_blocks_0_to_k.alpha", Tensor::from(1.0f32)),
            (
                "lora_unet_blocks_0_conv.lora_down.weight",
                randn(&[2, 2, 3, 3]),
            ),
            (
                "lora_unet_blocks_0_conv.lora_mid.weight",
                randn(&[2, 2, 3, 3]),
            ),
            (
                "lora_unet_blocks_0_conv.lora_up.weight",
                randn(&[6, 2, 1, 1]),
            ),
        ],
        vec![
            ("lora_unet_blocks_0_to_k.hada_w1_a", randn(&[6, 2])),
            ("lora_unet_blocks_0_to_k.hada_w1_b", randn(&[2, 4])),
            ("lora_unet_blocks_0_to_k.hada_w2_a", randn(&[6, 2])),
            ("lora_unet_blocks_0_to_k.hada_w2_b", randn(&[2, 4])),
            ("lora_unet_blocks_0_conv.lokr_w1", randn(&[2, 1])),
            ("lora_unet_blocks_0_conv.lokr_w2_a", randn(&[3, 1])),
            ("lora_unet_blocks_0_conv.lokr_w2_b", randn(&[1, 18])),
        ],
        vec![("emb_params", randn(&[3, 4]))],
        // a model's own weights, for the loader
        vec![
            ("blocks.0.to_k.weight", randn(&[6, 4])),
            ("blocks.0.conv.weight", randn(&[6, 2, 3, 3])),
        ],
        vec![("clip_l", randn(&[2, 4])), ("clip_g", randn(&[2, 8]))],
    ];
    files
        .into_iter()
        .enumerate()
        .map(|(i, tensors)| {
            let path = dir.join(format!("seed{i}.safetensors"));
            Tensor::write_safetensors(&tensors, &path).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect()
}

/// One mutation of a valid file, aimed mostly at its JSON header.
fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.len() < 9 {
        out.push(rng.next() as u8);
        return out;
    }
    let claimed = u64::from_le_bytes(out[..8].try_into().unwrap());
    let header_end = usize::try_from(claimed)
        .unwrap_or(usize::MAX)
        .saturating_add(8)
        .min(out.len());
    match rng.below(8) {
        0 => {
            // a digit of a shape or an offset
            let digits: Vec<usize> = (8..header_end)
                .filter(|&i| out[i].is_ascii_digit())
                .collect();
            if let Some(&i) = digits.get(rng.below(digits.len())) {
                // (any position of the header may hold a digit)
                out[i] = b"0123456789"[rng.below(10)];
            }
        }
        1 => {
            // another dtype
            let text = String::from_utf8_lossy(&out[8..header_end]).to_string();
            let dtypes = [
                "F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "F8_E4M3", "I8",
            ];
            let from = dtypes[rng.below(3)];
            let to = dtypes[rng.below(dtypes.len())];
            let changed = text.replacen(from, to, 1 + rng.below(3));
            let mut header = changed.into_bytes();
            header.resize(header_end - 8, b' ');
            out.splice(8..header_end, header);
        }
        2 => {
            // the header length itself
            let n = u64::from_le_bytes(out[..8].try_into().unwrap());
            let m = match rng.below(4) {
                0 => n.wrapping_add(rng.below(16) as u64),
                1 => n.saturating_sub(rng.below(16) as u64),
                2 => u64::MAX - rng.below(4) as u64,
                _ => rng.next(),
            };
            out[..8].copy_from_slice(&m.to_le_bytes());
        }
        3 => out.truncate(rng.below(out.len()).max(1)),
        4 => out.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
        5 => {
            // random bytes anywhere
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
        }
        6 => {
            // a shape made huge
            let text = String::from_utf8_lossy(&out[8..header_end]).to_string();
            if let Some(at) = text.find("\"shape\":[") {
                let i = 8 + at + 9;
                let huge = b"99999999999";
                out.splice(i..i, huge.iter().copied().chain([b',']));
                let n = (header_end - 8 + huge.len() + 1) as u64;
                out[..8].copy_from_slice(&n.to_le_bytes());
            }
        }
        _ => {
            // a key renamed to another adapter part
            let text = String::from_utf8_lossy(&out[8..header_end]).to_string();
            let parts = [
                "lora_down.weight",
                "lora_up.weight",
                "lora_mid.weight",
                "alpha",
                "hada_t1",
                "lokr_t2",
                "diff",
                "dora_scale",
            ];
            let from = parts[rng.below(parts.len())];
            let to = parts[rng.below(parts.len())];
            if from.len() == to.len() || rng.below(2) == 0 {
                let mut header = text.replacen(from, to, 1).into_bytes();
                let n = header.len() as u64;
                out.splice(8..header_end, header.drain(..));
                out[..8].copy_from_slice(&n.to_le_bytes());
            }
        }
    }
    out
}

fn model() -> (VarStore, VarStore) {
    let unet = VarStore::new(Device::Cpu);
    let randn = Init::Randn {
        mean: 0.,
        stdev: 1.,
    };
    let block = unet.root() / "blocks" / "0";
    let _ = (&block / "to_k").var("weight", &[6, 4], randn);
    let _ = (&block / "conv").var("weight", &[6, 2, 3, 3], randn);
    let text = VarStore::new(Device::Cpu);
    let _ = (text.root() / "text_model" / "q").var("weight", &[4, 4], randn);
    (unet, text)
}

#[test]
fn readers_survive_mutated_and_random_files() {
    let iterations: usize = std::env::var("SD_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let dir = std::env::temp_dir().join(format!("sd-lora-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = seed_files(&dir);
    let (unet, text) = model();
    let (scratch, _) = model();
    let originals: Vec<(String, Tensor)> = unet
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.copy()))
        .collect();
    let targets = Targets::new(vec![
        Target {
            component: Component::Unet,
            store: &unet,
            aliases: vec![],
        },
        Target {
            component: Component::TextEncoder,
            store: &text,
            aliases: vec![],
        },
    ]);
    let seed = std::env::var("SD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_9876u64);
    let mut rng = Rng(seed | 1);
    let path: PathBuf = dir.join("case.safetensors");
    let (mut opened, mut merged_ok) = (0, 0);
    for i in 0..iterations {
        let bytes = if i % 10 == 0 {
            (0..rng.below(300)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            let mut bytes = mutate(&mut rng, seed);
            if rng.below(3) == 0 {
                bytes = mutate(&mut rng, &bytes);
            }
            bytes
        };
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(lora) = LoraFile::open(&path) {
            opened += 1;
            let mut merged = Merged::new();
            if merged.apply(&lora, 0.5, &targets).is_ok() {
                merged_ok += 1;
            }
            merged.restore(&targets).unwrap();
        } else if let Err(e) = LoraFile::open(&path) {
            assert!(!e.to_string().is_empty());
        }
        let _ = EmbeddingFile::open(&path, None).map(|e| e.tokens());
        // the model loader, reading whatever names match into a scratch model
        let options = sd_core::weights::LoadOptions {
            allow_unexpected: true,
            ..Default::default()
        };
        let _ = sd_core::weights::load_safetensors(&scratch, &[&path], &options);
        let _ = EmbeddingFile::open(&path, Some("tok"));
    }
    // The weights are back, and the run reached the merge code at all.
    let now = unet.variables();
    for (name, before) in &originals {
        assert!(now[name].equal(before), "{name}");
    }
    println!("{iterations} cases: {opened} opened, {merged_ok} merged");
    assert!(
        opened > iterations / 10 && merged_ok > 0,
        "{opened} opened, {merged_ok} merged"
    );
}
