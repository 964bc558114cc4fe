//! Reads `torch.save(state_dict)` files (`pytorch_model.bin`, `.pt`) without
//! executing anything.
//!
//! Those files are zip archives holding a pickle (`data.pkl`) and one file per tensor
//! storage (`data/0`, `data/1`, ...). A pickle is a program for a stack machine whose
//! `GLOBAL` opcode imports any Python callable and `REDUCE` calls it, which is how a
//! crafted file runs `os.system`. This reader is a stack machine that knows only the
//! globals a state dict needs and refuses a file that names any other, naming it.
//! Mirrors candle's `candle-core/src/pickle.rs`; libtorch's own loader cannot read
//! these files (tch-rs #595).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// The callables a state dict's pickle may name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Kind),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        let storage = |kind| Some(Global::Storage(kind));
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", "FloatStorage") => storage(Kind::Float),
            ("torch", "DoubleStorage") => storage(Kind::Double),
            ("torch", "HalfStorage") => storage(Kind::Half),
            ("torch", "BFloat16Storage") => storage(Kind::BFloat16),
            ("torch", "LongStorage") => storage(Kind::Int64),
            ("torch", "IntStorage") => storage(Kind::Int),
            ("torch", "ShortStorage") => storage(Kind::Int16),
            ("torch", "CharStorage") => storage(Kind::Int8),
            ("torch", "ByteStorage") => storage(Kind::Uint8),
            ("torch", "BoolStorage") => storage(Kind::Bool),
            _ => None,
        }
    }
}

/// Where a tensor's elements are: a storage file and a strided view of it.
#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    storage: String,
    kind: Kind,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage { kind: Kind, key: String },
    Tensor(TensorRef),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

type Step<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("the pickle ends in the middle of an instruction")?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
    fn u8(&mut self) -> Step<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Step<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Step<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Step<String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("unterminated GLOBAL name")?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
    fn utf8(&mut self, n: usize) -> Step<Value> {
        let bytes = self.take(n)?;
        Ok(Value::Str(std::str::from_utf8(bytes).map_err(|_| "a string is not valid UTF-8")?.to_string()))
    }
    fn pop(&mut self) -> Step<Value> {
        self.stack.pop().ok_or_else(|| "the pickle pops an empty stack".to_string())
    }
    fn pop_mark(&mut self) -> Step<Vec<Value>> {
        let mark = self.marks.pop().ok_or("the pickle closes a MARK it never opened")?;
        if mark > self.stack.len() {
            return Err("the pickle's MARK is above the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }
    fn top(&mut self) -> Step<&mut Value> {
        self.stack.last_mut().ok_or_else(|| "the pickle reads an empty stack".to_string())
    }
    fn global(&mut self, module: &str, name: &str) -> Step<()> {
        let global = Global::resolve(module, name).ok_or_else(|| {
            format!("refused: the pickle names the Python global `{module}.{name}`, which a state dict never needs (it could run code); save the weights with `torch.save(model.state_dict(), path)` or as safetensors")
        })?;
        self.stack.push(Value::Global(global));
        Ok(())
    }

    fn run(mut self) -> Step<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => drop(self.u8()?),                  // PROTO
                0x95 => drop(self.u64()?),                 // FRAME
                b'.' => return self.pop(),                 // STOP
                b'(' => self.marks.push(self.stack.len()), // MARK
                b'0' => drop(self.pop()?),                 // POP
                b'1' => drop(self.pop_mark()?),            // POP_MARK
                b'2' => {
                    let top = self.top()?.clone(); // DUP
                    self.stack.push(top);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap()); // BININT
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?; // BININT1
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().unwrap()); // BININT2
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize }; // LONG1, LONG4
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err("an integer in the pickle is larger than 64 bits".into());
                    }
                    let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                    buf[..n].copy_from_slice(bytes);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap()); // BINFLOAT
                    self.stack.push(Value::Float(v));
                }
                0x8c => {
                    let n = self.u8()? as usize; // SHORT_BINUNICODE
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = self.u32()? as usize; // BINUNICODE
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "string too long")?; // BINUNICODE8
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize; // SHORT_BINSTRING, SHORT_BINBYTES
                    let v = self.take(n)?.to_vec();
                    self.stack.push(if op == b'U' { Value::Str(String::from_utf8_lossy(&v).into_owned()) } else { Value::Bytes(v) });
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize; // BINSTRING, BINBYTES
                    let v = self.take(n)?.to_vec();
                    self.stack.push(if op == b'T' { Value::Str(String::from_utf8_lossy(&v).into_owned()) } else { Value::Bytes(v) });
                }
                b')' => self.stack.push(Value::Tuple(vec![])),
                b't' => {
                    let items = self.pop_mark()?; // TUPLE
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize; // TUPLE1..TUPLE3
                    if self.stack.len() < n {
                        return Err("the pickle builds a tuple from an empty stack".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b']' => self.stack.push(Value::List(vec![])),
                b'l' => {
                    let items = self.pop_mark()?; // LIST
                    self.stack.push(Value::List(items));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? }; // APPEND, APPENDS
                    match self.top()? {
                        Value::List(list) => list.extend(items),
                        _ => return Err("the pickle appends to something that is not a list".into()),
                    }
                }
                b'}' => self.stack.push(Value::Dict(vec![])),
                b'd' | b'u' | b's' => {
                    let items = if op == b's' {
                        let v = self.pop()?; // SETITEM
                        vec![self.pop()?, v]
                    } else {
                        self.pop_mark()? // DICT, SETITEMS
                    };
                    if items.len() % 2 != 0 {
                        return Err("the pickle sets a dict item without a value".into());
                    }
                    let mut pairs = items.into_iter();
                    let mut entries = vec![];
                    while let (Some(k), Some(v)) = (pairs.next(), pairs.next()) {
                        entries.push((k, v));
                    }
                    if op == b'd' {
                        self.stack.push(Value::Dict(entries));
                    } else {
                        match self.top()? {
                            Value::Dict(dict) => dict.extend(entries),
                            _ => return Err("the pickle sets items on something that is not a dict".into()),
                        }
                    }
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?); // GLOBAL
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let (name, module) = (self.pop()?, self.pop()?); // STACK_GLOBAL
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                        _ => return Err("STACK_GLOBAL without a module and a name".into()),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?; // REDUCE, NEWOBJ
                    let callable = self.pop()?;
                    let value = call(callable, args)?;
                    self.stack.push(value);
                }
                b'b' => drop(self.pop()?), // BUILD: a state dict's `_metadata`, which we do not need
                b'q' => {
                    let key = self.u8()? as u32; // BINPUT
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                b'r' => {
                    let key = self.u32()?; // LONG_BINPUT
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                0x94 => {
                    let key = self.memo.len() as u32; // MEMOIZE
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                b'h' | b'j' => {
                    let key = if op == b'h' { self.u8()? as u32 } else { self.u32()? }; // BINGET, LONG_BINGET
                    let v = self.memo.get(&key).ok_or("the pickle reads a memo slot it never wrote")?.clone();
                    self.stack.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?; // BINPERSID: ('storage', StorageType, key, location, numel)
                    let storage = match pid {
                        Value::Tuple(t) => match t.as_slice() {
                            [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), ..] if tag == "storage" => {
                                Value::Storage { kind: *kind, key: key.clone() }
                            }
                            _ => return Err(format!("unsupported persistent id {t:?}")),
                        },
                        other => return Err(format!("unsupported persistent id {other:?}")),
                    };
                    self.stack.push(storage);
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", self.pos - 1)),
            }
        }
    }
}

/// What REDUCE does with an allowed callable.
fn call(callable: Value, args: Value) -> Step<Value> {
    let Value::Tuple(args) = args else { return Err("REDUCE without an argument tuple".into()) };
    let ints = |v: &Value| -> Step<Vec<i64>> {
        match v {
            Value::Tuple(items) => {
                items.iter().map(|i| if let Value::Int(n) = i { Ok(*n) } else { Err("a tensor size is not an integer".to_string()) }).collect()
            }
            _ => Err("a tensor size is not a tuple".into()),
        }
    };
    match callable {
        Value::Global(Global::OrderedDict) => Ok(Value::Dict(vec![])),
        Value::Global(Global::RebuildTensor) => match args.as_slice() {
            [Value::Storage { kind, key }, Value::Int(offset), size, stride, ..] => {
                Ok(Value::Tensor(TensorRef { storage: key.clone(), kind: *kind, offset: *offset, size: ints(size)?, stride: ints(stride)? }))
            }
            _ => Err("_rebuild_tensor_v2 called with unexpected arguments".into()),
        },
        Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
            Some(tensor @ Value::Tensor(_)) => Ok(tensor),
            _ => Err("_rebuild_parameter called without a tensor".into()),
        },
        other => Err(format!("the pickle calls {other:?}, which a state dict never does")),
    }
}

/// Every tensor of a `torch.save` zip archive, by its state-dict key, on the CPU.
pub fn read_torch_zip(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        Error::format(path, format!("not a PyTorch zip archive ({e}); files from PyTorch before 1.6 must be re-saved with a recent PyTorch or as safetensors"))
    })?;
    let pickle_name = zip.file_names().find(|n| n.ends_with("data.pkl")).map(str::to_string);
    let Some(pickle_name) = pickle_name else { return Err(Error::format(path, "no data.pkl inside: not a file written by torch.save")) };
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let mut read_entry = |name: &str| -> Result<Vec<u8>> {
        let mut entry = zip.by_name(name).map_err(|e| Error::format(path, format!("{name}: {e}")))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| Error::format(path, format!("{name}: {e}")))?;
        Ok(bytes)
    };
    let pickle = read_entry(&pickle_name)?;
    let machine = Machine { data: &pickle, pos: 0, stack: vec![], marks: vec![], memo: HashMap::new() };
    let root = machine.run().map_err(|m| Error::format(path, m))?;
    let mut refs = vec![];
    flatten(String::new(), root, &mut refs);
    if refs.is_empty() {
        return Err(Error::format(path, "holds no tensors: expected a state dict (torch.save(model.state_dict(), path))"));
    }
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut tensors = vec![];
    for (name, r) in refs {
        if !storages.contains_key(&r.storage) {
            let bytes = read_entry(&format!("{prefix}data/{}", r.storage))?;
            let elem = r.kind.elt_size_in_bytes();
            let flat = Tensor::f_from_data_size(&bytes, &[(bytes.len() / elem) as i64], r.kind)?;
            storages.insert(r.storage.clone(), flat);
        }
        let flat = &storages[&r.storage];
        let extent: i64 = r.offset + r.size.iter().zip(&r.stride).map(|(n, s)| (n - 1).max(0) * s).sum::<i64>() + 1;
        if r.offset < 0 || r.size.len() != r.stride.len() || r.stride.iter().any(|&s| s < 0) || (r.size.iter().all(|&n| n > 0) && extent > flat.numel() as i64)
        {
            return Err(Error::format(path, format!("tensor `{name}` reaches past the end of its storage")));
        }
        tensors.push((name, flat.f_as_strided(&r.size, &r.stride, r.offset)?.f_contiguous()?));
    }
    Ok(tensors)
}

/// Collects tensors from nested dicts, joining keys with dots; other values are ignored.
fn flatten(prefix: String, value: Value, out: &mut Vec<(String, TensorRef)>) {
    match value {
        Value::Tensor(t) => out.push((prefix, t)),
        Value::Dict(entries) => {
            for (key, v) in entries {
                if let Value::Str(k) = key {
                    let name = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    flatten(name, v, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Step<Value> {
        Machine { data: bytes, pos: 0, stack: vec![], marks: vec![], memo: HashMap::new() }.run()
    }

    #[test]
    fn refuses_os_system_naming_it() {
        // pickle.dumps of an object whose __reduce__ returns (os.system, ("echo pwned",)), protocol 2.
        let bytes = b"\x80\x02cposix\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
        let err = run(bytes).unwrap_err();
        assert!(err.contains("`posix.system`"), "{err}");
    }

    #[test]
    fn reads_nested_containers_and_memo() {
        // pickle.dumps({"a": [1, -2, 300000, 2**40], "b": (True, None, 1.5)}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffJ\xe0\x93\x04\x00\x8a\x06\x00\x00\x00\x00\x00\x01eX\x01\x00\x00\x00bq\x03\x88NG?\xf8\x00\x00\x00\x00\x00\x00\x87q\x04u.";
        let value = run(bytes).unwrap();
        let expected = Value::Dict(vec![
            (Value::Str("a".into()), Value::List(vec![Value::Int(1), Value::Int(-2), Value::Int(300000), Value::Int(1 << 40)])),
            (Value::Str("b".into()), Value::Tuple(vec![Value::Bool(true), Value::None, Value::Float(1.5)])),
        ]);
        assert_eq!(value, expected);
    }

    #[test]
    fn truncated_pickle_is_an_error() {
        assert!(run(b"\x80\x02}q\x00(X\x01\x00").unwrap_err().contains("ends in the middle"));
    }
}
