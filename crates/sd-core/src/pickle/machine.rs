//! The pickle stack machine, restricted to the instructions that build data
//! and to the callables that rebuild tensors and ordered dicts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::Kind;

use super::{bad, reader};
use crate::error::{CoreError, Result};

/// A pickled value, as far as this reader builds one. (Scalars are kept
/// only to sit on the stack where the program expects them.)
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub(super) enum Value {
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
pub(super) struct TensorRef {
    pub(super) kind: Kind,
    pub(super) storage: String,
    pub(super) offset: i64,
    pub(super) size: Vec<i64>,
    pub(super) stride: Vec<i64>,
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

/// The pickle stack machine, restricted to building data.
pub(super) struct Machine {
    path: PathBuf,
    stack: Vec<Value>,
    memo: BTreeMap<u32, Value>,
    /// Values copied out of the memo so far.
    copied: usize,
}

/// How many values memo fetches may copy in all.
const COPY_BUDGET: usize = 1_000_000;

/// Containers deeper than this are not searched for tensors.
pub(super) const MAX_DEPTH: usize = 64;

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
    pub(super) fn new(path: &Path) -> Self {
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

    pub(super) fn run(mut self, program: &[u8]) -> Result<Value> {
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
