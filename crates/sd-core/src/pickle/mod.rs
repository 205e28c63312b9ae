//! PyTorch checkpoints (`torch.save`'s zip format: `.pth`, `.pt`, `.bin`,
//! `.ckpt`) read without running any of their code. A checkpoint is a Python
//! pickle, a program for a small stack machine that may call any Python
//! function it names; `torch.load` without `weights_only` runs it. Here only
//! the instructions that build data are interpreted, and the only callables
//! accepted are those that rebuild tensors and ordered dicts
//! (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`,
//! `collections.OrderedDict`, the `torch.*Storage` types); a checkpoint that
//! names anything else is refused in one line naming it. The result is every
//! tensor by its dotted path (`params_ema.conv_first.weight`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use tch::Tensor;

use crate::error::{CoreError, Result};

mod machine;
mod reader;

use machine::{Machine, TensorRef, Value, MAX_DEPTH};

fn bad(path: &Path, message: impl Into<String>) -> CoreError {
    CoreError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Every tensor's shape in the zip-format checkpoint at `path`, by dotted
/// path: the pickle alone is read, not the storages.
pub fn read_shapes(path: &Path) -> Result<BTreeMap<String, Vec<i64>>> {
    let (_, _, refs) = open_checkpoint(path)?;
    Ok(refs.into_iter().map(|(name, t)| (name, t.size)).collect())
}

/// The archive, the folder its entries are under, and the tensors its pickle describes.
type Opened = (
    zip::ZipArchive<std::fs::File>,
    String,
    Vec<(String, TensorRef)>,
);

/// Every tensor of a weights file by name: `.safetensors` (or GGUF), or a
/// zip-format PyTorch checkpoint (`.pth`, `.bin`: told apart by its first
/// bytes, not its name), whose nested dicts give dotted names.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    if !is_zip(path) {
        let file = crate::weights::MappedFile::open(path)?;
        let names: Vec<String> = file
            .tensors()?
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        return names
            .into_iter()
            .map(|name| Ok((name.clone(), file.read(&name)?)))
            .collect();
    }
    read_checkpoint(path)
}

/// The names and shapes of [`read_state_dict`]'s tensors, reading no data.
pub fn read_state_shapes(path: &Path) -> Result<BTreeMap<String, Vec<i64>>> {
    match is_zip(path) {
        true => read_shapes(path),
        false => crate::weights::MappedFile::open(path)?.shapes(),
    }
}

/// Whether `path` starts as a zip archive does (PyTorch's checkpoints).
pub fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
    read.is_ok() && magic == *b"PK\x03\x04"
}

/// Every tensor of the zip-format checkpoint at `path`, by dotted path.
pub fn read_checkpoint(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let (mut archive, prefix, refs) = open_checkpoint(path)?;
    let mut storages: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, t) in refs {
        if !storages.contains_key(&t.storage) {
            let bytes = read_entry(&mut archive, &format!("{prefix}data/{}", t.storage), path)?;
            storages.insert(t.storage.clone(), bytes);
        }
        let tensor =
            build(&storages[&t.storage], &t).map_err(|m| bad(path, format!("'{name}': {m}")))?;
        out.insert(name, tensor);
    }
    Ok(out)
}

fn open_checkpoint(path: &Path) -> Result<Opened> {
    let file = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| {
        bad(
            path,
            format!("not a PyTorch zip checkpoint ({e}); legacy (pre-1.6) checkpoints are not read: re-save it with torch.save or as .safetensors"),
        )
    })?;
    let pickle_name = (archive.file_names())
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| bad(path, "no data.pkl in the archive"))?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut order) = archive.by_name(&format!("{prefix}byteorder")) {
        let mut text = String::new();
        let _ = order.read_to_string(&mut text);
        if text.trim() != "little" {
            return Err(bad(
                path,
                format!(
                    "byte order '{}': only little-endian checkpoints are read",
                    text.trim()
                ),
            ));
        }
    }
    let program = read_entry(&mut archive, &pickle_name, path)?;
    let value = Machine::new(path).run(&program)?;
    let mut refs = Vec::new();
    flatten(String::new(), &value, 0, &mut refs);
    Ok((archive, prefix, refs))
}

fn read_entry<R: std::io::Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut entry = archive
        .by_name(name)
        .map_err(|e| bad(path, format!("entry '{name}': {e}")))?;
    // (the declared size is not trusted for the allocation)
    let mut bytes = Vec::with_capacity((entry.size() as usize).min(1 << 30));
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| bad(path, format!("entry '{name}': {e}")))?;
    Ok(bytes)
}

/// A tensor over `bytes` as `t` describes it, checked against the storage.
fn build(bytes: &[u8], t: &TensorRef) -> std::result::Result<Tensor, String> {
    let element = t.kind.elt_size_in_bytes() as i64;
    let count = bytes.len() as i64 / element;
    if t.size.len() != t.stride.len()
        || t.size.iter().chain(&t.stride).any(|&d| d < 0)
        || t.offset < 0
    {
        return Err(format!(
            "size {:?} and stride {:?} do not describe a tensor",
            t.size, t.stride
        ));
    }
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .map(|(&n, &s)| (n - 1).max(0) * s)
        .sum::<i64>();
    let empty = t.size.contains(&0);
    if !empty && t.offset + last >= count {
        return Err(format!("it reaches past its storage of {count} elements"));
    }
    let storage = Tensor::f_from_data_size(&bytes[..(count * element) as usize], &[count], t.kind)
        .map_err(|e| e.to_string())?;
    storage
        .f_as_strided(t.size.as_slice(), t.stride.as_slice(), Some(t.offset))
        .and_then(|v| v.f_contiguous())
        .map_err(|e| e.to_string())
}

/// Every tensor under `value`, named by the dotted path of dict keys to it.
fn flatten(prefix: String, value: &Value, depth: usize, out: &mut Vec<(String, TensorRef)>) {
    if depth > MAX_DEPTH {
        return;
    }
    let join = |key: &str| match prefix.is_empty() {
        true => key.to_string(),
        false => format!("{prefix}.{key}"),
    };
    match value {
        Value::Tensor(t) => out.push((prefix, t.clone())),
        Value::Dict(items) => {
            for (k, v) in items {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                flatten(join(&key), v, depth + 1, out);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(join(&i.to_string()), v, depth + 1, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(program: &[u8]) -> Result<Value> {
        Machine::new(Path::new("t.pth")).run(program)
    }

    /// A dict of two tensors over one storage, as torch.save writes it.
    #[test]
    fn a_state_dict_program_builds_its_tensor_views() {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'(', b'X'];
        let text = |p: &mut Vec<u8>, s: &str| {
            p.push(b'X');
            p.extend((s.len() as u32).to_le_bytes());
            p.extend(s.as_bytes());
        };
        p.pop();
        text(&mut p, "w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend(b"(");
        text(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        text(&mut p, "0");
        text(&mut p, "cpu");
        p.extend([
            b'K', 6, b't', b'Q', b'K', 2, b'K', 2, b'K', 2, 0x86, b'K', 2, b'K', 1, 0x86,
        ]);
        p.extend([0x89, b'N', b't', b'R', b'u', b'.']);
        let value = run(&p).unwrap();
        let mut refs = Vec::new();
        flatten(String::new(), &value, 0, &mut refs);
        let (name, t) = &refs[0];
        assert_eq!(
            (name.as_str(), t.offset, &t.size, &t.stride),
            ("w", 2, &vec![2, 2], &vec![2, 1])
        );
        let bytes: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let tensor = build(&bytes, t).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(tensor.flatten(0, -1)).unwrap(),
            [2.0, 3.0, 4.0, 5.0]
        );
        let past = TensorRef {
            offset: 3,
            ..t.clone()
        };
        assert!(build(&bytes, &past)
            .unwrap_err()
            .contains("past its storage"));
    }

    #[test]
    fn code_is_refused_by_name() {
        let error = run(b"\x80\x02cposix\nsystem\nq\x00.")
            .unwrap_err()
            .to_string();
        assert!(error.contains("'posix.system'"), "{error}");
        let error = run(b"\x80\x02cbuiltins\neval\n.").unwrap_err().to_string();
        assert!(error.contains("'builtins.eval'"), "{error}");
    }

    /// Damaged programs (every prefix, random byte changes, deep nesting,
    /// memo bombs) end in an error or a value, never a panic.
    #[test]
    fn damaged_programs_never_panic() {
        let program =
            b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02eX\x01\x00\x00\x00bq\x03)u.";
        assert!(run(program).is_ok());
        for end in 0..program.len() {
            let _ = run(&program[..end]);
        }
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut damaged = program.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() % damaged.len() as u64) as usize;
                damaged[at] = next() as u8;
            }
            let _ = run(&damaged);
        }
        let deep: Vec<u8> = [&[0x80, 2, b')'][..], &[0x85; 100_000], b"."].concat();
        assert!(run(&deep).unwrap_err().to_string().contains("deeper than"));
        // fetch and nest the same list again and again: exponential without the budget
        let mut bomb = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..64 {
            bomb.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        bomb.push(b'.');
        assert!(run(&bomb).is_err());
    }
}
