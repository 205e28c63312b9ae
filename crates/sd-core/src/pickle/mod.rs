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
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{CoreError, Result};

mod reader;

/// A pickled value, as far as this reader builds one. (Scalars are kept
/// only to sit on the stack where the program expects them.)
#[derive(Debug, Clone)]
#[allow(dead_code)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An accepted callable (`module.name`).
    Global(String),
    /// A storage: its dtype, its entry in the archive, its element count.
    Storage(Kind, String),
    /// A tensor view of a storage.
    Tensor(TensorRef),
    Mark,
}

#[derive(Debug, Clone)]
struct TensorRef {
    kind: Kind,
    storage: String,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// The callables a checkpoint may name.
const ALLOWED: [&str; 3] = [
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
];

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "torch.FloatStorage" => Kind::Float,
        "torch.HalfStorage" => Kind::Half,
        "torch.BFloat16Storage" => Kind::BFloat16,
        "torch.DoubleStorage" => Kind::Double,
        "torch.LongStorage" => Kind::Int64,
        "torch.IntStorage" => Kind::Int,
        "torch.ShortStorage" => Kind::Int16,
        "torch.CharStorage" => Kind::Int8,
        "torch.ByteStorage" => Kind::Uint8,
        "torch.BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

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

/// The pickle stack machine, restricted to building data.
struct Machine {
    path: PathBuf,
    stack: Vec<Value>,
    memo: BTreeMap<u32, Value>,
    /// Values copied out of the memo so far.
    copied: usize,
}

/// How many values memo fetches may copy in all.
const COPY_BUDGET: usize = 1_000_000;

/// Containers deeper than this are not searched for tensors.
const MAX_DEPTH: usize = 64;

/// How deeply `value` nests containers. Every container is checked when it
/// is made or grows (`Machine::nest`), so this recursion stays within
/// [`MAX_DEPTH`], as do the clones and drops of values.
fn depth(value: &Value) -> usize {
    match value {
        Value::Tuple(items) | Value::List(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Dict(items) => {
            1 + (items.iter())
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// The values in `value`, counting no further than `limit`.
fn nodes(value: &Value, limit: usize) -> usize {
    let mut n = 1;
    let children: Vec<&Value> = match value {
        Value::Tuple(items) | Value::List(items) => items.iter().collect(),
        Value::Dict(items) => items.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return 1,
    };
    for child in children {
        n += nodes(child, limit);
        if n > limit {
            break;
        }
    }
    n
}

impl Machine {
    fn new(path: &Path) -> Self {
        Machine {
            path: path.to_path_buf(),
            stack: Vec::new(),
            memo: BTreeMap::new(),
            copied: 0,
        }
    }

    fn fail(&self, message: impl Into<String>) -> CoreError {
        bad(&self.path, message)
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack
            .pop()
            .ok_or_else(|| self.fail("a pickle that pops an empty stack"))
    }

    /// `items` checked to go into a container: not nested too deeply.
    fn nest(&self, items: &[Value]) -> Result<()> {
        match items.iter().map(depth).max().unwrap_or(0) < MAX_DEPTH {
            true => Ok(()),
            false => Err(self.fail(format!(
                "a pickle nesting containers deeper than {MAX_DEPTH}"
            ))),
        }
    }

    /// Everything above the last mark, in order; the mark is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = (self.stack.iter())
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| self.fail("a pickle without its mark"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn run(mut self, program: &[u8]) -> Result<Value> {
        let mut r = reader::Reader::new(program);
        loop {
            let op = r
                .u8()
                .ok_or_else(|| self.fail("a pickle that ends before STOP"))?;
            if op == b'.' {
                return self.pop();
            }
            self.step(op, &mut r)?;
        }
    }

    fn step(&mut self, op: u8, r: &mut reader::Reader<'_>) -> Result<()> {
        let truncated = || bad(&self.path, "a truncated pickle");
        match op {
            0x80 => drop(r.u8().ok_or_else(truncated)?),    // PROTO
            0x95 => drop(r.take(8).ok_or_else(truncated)?), // FRAME
            b'}' => self.stack.push(Value::Dict(Vec::new())), // EMPTY_DICT
            b']' => self.stack.push(Value::List(Vec::new())), // EMPTY_LIST
            b')' => self.stack.push(Value::Tuple(Vec::new())), // EMPTY_TUPLE
            b'(' => self.stack.push(Value::Mark),           // MARK
            b'N' => self.stack.push(Value::None),
            0x88 => self.stack.push(Value::Bool(true)),
            0x89 => self.stack.push(Value::Bool(false)),
            b'J' => self
                .stack
                .push(Value::Int(r.i32().ok_or_else(truncated)? as i64)),
            b'K' => self
                .stack
                .push(Value::Int(r.u8().ok_or_else(truncated)? as i64)),
            b'M' => self
                .stack
                .push(Value::Int(r.u16().ok_or_else(truncated)? as i64)),
            0x8a => {
                let n = r.u8().ok_or_else(truncated)? as usize;
                let value = r
                    .long(n)
                    .ok_or_else(|| bad(&self.path, "a pickle integer out of range"))?;
                self.stack.push(Value::Int(value));
            }
            b'G' => self
                .stack
                .push(Value::Float(r.f64_be().ok_or_else(truncated)?)),
            b'X' | 0x8c | b'T' | b'U' | b'B' | b'C' => {
                let n = match op {
                    0x8c | b'U' | b'C' => r.u8().ok_or_else(truncated)? as usize,
                    _ => r.u32().ok_or_else(truncated)? as usize,
                };
                let bytes = r.take(n).ok_or_else(truncated)?;
                self.stack
                    .push(Value::Str(String::from_utf8_lossy(bytes).into_owned()));
            }
            b't' => {
                let items = self.pop_mark()?;
                self.nest(&items)?;
                self.stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err(self.fail("a pickle tuple longer than its stack"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.nest(&items)?;
                self.stack.push(Value::Tuple(items));
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => r.u8().ok_or_else(truncated)? as u32,
                    b'r' => r.u32().ok_or_else(truncated)?,
                    _ => self.memo.len() as u32,
                };
                let top = self.stack.last().cloned().ok_or_else(truncated)?;
                self.memo.insert(key, top);
            }
            b'h' | b'j' => {
                let key = match op {
                    b'h' => r.u8().ok_or_else(truncated)? as u32,
                    _ => r.u32().ok_or_else(truncated)?,
                };
                let value = self.memo.get(&key).cloned();
                let value =
                    value.ok_or_else(|| self.fail(format!("a pickle memo {key} never stored")))?;
                // (each fetch copies: a program that fetches and nests what it fetched
                // would double its size with every pair of instructions)
                self.copied += nodes(&value, COPY_BUDGET);
                if self.copied > COPY_BUDGET {
                    return Err(
                        self.fail("a pickle that copies more values than a checkpoint does")
                    );
                }
                self.stack.push(value);
            }
            b's' | b'u' => {
                let items = match op {
                    b's' => {
                        let value = self.pop()?;
                        let key = self.pop()?;
                        vec![key, value]
                    }
                    _ => self.pop_mark()?,
                };
                self.nest(&items)?;
                let Some(Value::Dict(dict)) = self.stack.last_mut() else {
                    return Err(self.fail("a pickle that sets items on what is not a dict"));
                };
                let mut items = items.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    dict.push((k, v));
                }
            }
            b'a' | b'e' => {
                let items = match op {
                    b'a' => vec![self.pop()?],
                    _ => self.pop_mark()?,
                };
                self.nest(&items)?;
                let Some(Value::List(list)) = self.stack.last_mut() else {
                    return Err(self.fail("a pickle that appends to what is not a list"));
                };
                list.extend(items);
            }
            b'c' => {
                let module = r.line().ok_or_else(truncated)?;
                let name = r.line().ok_or_else(truncated)?;
                let global = self.global(&module, &name)?;
                self.stack.push(global);
            }
            0x93 => {
                let (name, module) = (self.pop()?, self.pop()?);
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err(self.fail("a pickle global that is not named by strings"));
                };
                let global = self.global(&module, &name)?;
                self.stack.push(global);
            }
            b'Q' => {
                let id = self.pop()?;
                let storage = self.persistent(id)?;
                self.stack.push(storage);
            }
            b'R' | 0x81 => {
                let (args, callable) = (self.pop()?, self.pop()?);
                let value = self.call(callable, args)?;
                self.stack.push(value);
            }
            b'b' => {
                // BUILD: a tensor's or dict's state; nothing this reader keeps
                self.pop()?;
            }
            other => {
                return Err(self.fail(format!(
                    "pickle opcode 0x{other:02x} is not one a checkpoint of tensors uses; refused"
                )))
            }
        }
        Ok(())
    }

    /// A global the checkpoint names: accepted only if it rebuilds data.
    fn global(&self, module: &str, name: &str) -> Result<Value> {
        let full = format!("{module}.{name}");
        if ALLOWED.contains(&full.as_str()) || storage_kind(&full).is_some() {
            return Ok(Value::Global(full));
        }
        Err(self.fail(format!(
            "it would call '{full}', which is not a tensor or dict rebuild; refused (torch.load \
             would run it: use a .safetensors file)"
        )))
    }

    /// `('storage', <storage type>, key, location, numel)`.
    fn persistent(&self, id: Value) -> Result<Value> {
        if let Value::Tuple(parts) = &id {
            if let [Value::Str(tag), Value::Global(kind), Value::Str(key), ..] = parts.as_slice() {
                if let (true, Some(kind)) = (tag == "storage", storage_kind(kind)) {
                    let safe = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if safe {
                        return Ok(Value::Storage(kind, key.clone()));
                    }
                }
            }
        }
        Err(self.fail("a persistent id that is not a tensor storage"))
    }

    fn call(&self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(name) = callable else {
            return Err(self.fail("a pickle call of something that is not an accepted global"));
        };
        let Value::Tuple(args) = args else {
            return Err(self.fail(format!("'{name}' called without an argument tuple")));
        };
        let int = |v: &Value| match v {
            Value::Int(i) => Some(*i),
            _ => None,
        };
        let ints = |v: &Value| match v {
            Value::Tuple(items) => items.iter().map(int).collect::<Option<Vec<i64>>>(),
            _ => None,
        };
        match name.as_str() {
            "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
            "torch._utils._rebuild_parameter" => args
                .into_iter()
                .next()
                .ok_or_else(|| self.fail("_rebuild_parameter without data")),
            "torch._utils._rebuild_tensor_v2" => match args.as_slice() {
                [Value::Storage(kind, storage), offset, size, stride, ..] => {
                    let (Some(offset), Some(size), Some(stride)) =
                        (int(offset), ints(size), ints(stride))
                    else {
                        return Err(
                            self.fail("_rebuild_tensor_v2 with a malformed offset, size or stride")
                        );
                    };
                    Ok(Value::Tensor(TensorRef {
                        kind: *kind,
                        storage: storage.clone(),
                        offset,
                        size,
                        stride,
                    }))
                }
                _ => Err(self.fail("_rebuild_tensor_v2 without a storage")),
            },
            other => Err(self.fail(format!("'{other}' cannot be called here"))),
        }
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
