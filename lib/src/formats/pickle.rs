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
use std::rc::Rc;

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

/// Nested containers deeper than this are refused: a state dict is a few levels deep,
/// and a deeper structure is an attack on the stack (building, walking or dropping it).
const MAX_DEPTH: u32 = 64;
/// The most values the machine's stack may hold at once.
const MAX_STACK: usize = 1 << 20;
/// The most entries the state dict may be walked through (shared values count each
/// time they are reached): memo tricks make a small pickle describe a huge tree.
const MAX_ENTRIES: usize = 1 << 22;
/// The largest `data.pkl` read.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// A pickled value. Containers and strings are shared (`Rc`), so that the memo —
/// which Python uses to refer to one object several times — costs a pointer per
/// reference, not a copy; containers record their nesting depth so that no value
/// deeper than [`MAX_DEPTH`] is ever built.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Node>),
    List(Rc<Node>),
    Dict(Rc<Node>),
    Global(Global),
    Storage { kind: Kind, key: Rc<str> },
    Tensor(Rc<TensorRef>),
}

/// The items of a tuple or list, or a dict's keys and values interleaved.
#[derive(Debug, Clone, PartialEq)]
struct Node {
    depth: u32,
    items: Vec<Value>,
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(n) | Value::List(n) | Value::Dict(n) => n.depth,
            _ => 0,
        }
    }
}

impl Node {
    fn new(items: Vec<Value>) -> Step<Rc<Node>> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("refused: the pickle nests containers more than {MAX_DEPTH} deep, which no state dict does"));
        }
        Ok(Rc::new(Node { depth, items }))
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Items copied because a shared container was changed: bounded, see [`Machine::extend_top`].
    copied: usize,
}

type Step<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine { data, pos: 0, stack: vec![], marks: vec![], memo: HashMap::new(), copied: 0 }
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("the pickle ends in the middle of an instruction")?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Step<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Step<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Step<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn line(&mut self) -> Step<String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("unterminated GLOBAL name")?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
    fn utf8(&mut self, n: usize) -> Step<Value> {
        let bytes = self.take(n)?;
        Ok(Value::Str(std::str::from_utf8(bytes).map_err(|_| "a string is not valid UTF-8")?.into()))
    }
    fn push(&mut self, value: Value) -> Step<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("refused: the pickle keeps more than {MAX_STACK} values on its stack, which no state dict does"));
        }
        self.stack.push(value);
        Ok(())
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
    /// Appends to the list or dict on top of the stack. A container that is shared (the
    /// memo holds it too) is copied first, so values already referenced elsewhere never
    /// change and their recorded depths stay true; the copying is bounded by the pickle's
    /// size, so a pickle cannot make it quadratic.
    fn extend_top(&mut self, items: Vec<Value>, dict: bool) -> Step<()> {
        let budget = 16 * self.data.len() + (1 << 20);
        let mut copied = self.copied;
        let node = match (self.stack.last_mut(), dict) {
            (Some(Value::List(node)), false) | (Some(Value::Dict(node)), true) => node,
            (_, false) => return Err("the pickle appends to something that is not a list".into()),
            (_, true) => return Err("the pickle sets items on something that is not a dict".into()),
        };
        if Rc::strong_count(node) > 1 {
            copied += node.items.len();
        }
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        let node = Rc::make_mut(node);
        node.items.extend(items);
        node.depth = node.depth.max(depth);
        if node.depth > MAX_DEPTH {
            return Err(format!("refused: the pickle nests containers more than {MAX_DEPTH} deep, which no state dict does"));
        }
        self.copied = copied;
        if self.copied > budget {
            return Err("refused: the pickle re-copies shared containers far more than a state dict does".into());
        }
        Ok(())
    }
    fn global(&mut self, module: &str, name: &str) -> Step<()> {
        let global = Global::resolve(module, name).ok_or_else(|| {
            format!("refused: the pickle names the Python global `{module}.{name}`, which a state dict never needs (it could run code); save the weights with `torch.save(model.state_dict(), path)` or as safetensors")
        })?;
        self.push(Value::Global(global))
    }
    fn memoize(&mut self, key: u32) -> Step<()> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn run(mut self) -> Step<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => drop(self.u8()?),  // PROTO
                0x95 => drop(self.u64()?), // FRAME
                b'.' => return self.pop(), // STOP
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err("refused: the pickle opens too many MARKs".into());
                    }
                    self.marks.push(self.stack.len()) // MARK
                }
                b'0' => drop(self.pop()?),      // POP
                b'1' => drop(self.pop_mark()?), // POP_MARK
                b'2' => {
                    let top = self.top()?.clone(); // DUP
                    self.push(top)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?); // BININT
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.u8()?; // BININT1
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?); // BININT2
                    self.push(Value::Int(v.into()))?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize }; // LONG1, LONG4
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err("an integer in the pickle is larger than 64 bits".into());
                    }
                    let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?); // BINFLOAT
                    self.push(Value::Float(v))?;
                }
                0x8c => {
                    let n = self.u8()? as usize; // SHORT_BINUNICODE
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                b'X' => {
                    let n = self.u32()? as usize; // BINUNICODE
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "string too long")?; // BINUNICODE8
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                b'U' | b'C' | b'T' | b'B' => {
                    // SHORT_BINSTRING, SHORT_BINBYTES, BINSTRING, BINBYTES
                    let n = if matches!(op, b'U' | b'C') { self.u8()? as usize } else { self.u32()? as usize };
                    let v = self.take(n)?;
                    self.push(if matches!(op, b'U' | b'T') { Value::Str(String::from_utf8_lossy(v).into()) } else { Value::Bytes(v.into()) })?;
                }
                b')' => self.push(Value::Tuple(Node::new(vec![])?))?,
                b't' => {
                    let items = self.pop_mark()?; // TUPLE
                    self.push(Value::Tuple(Node::new(items)?))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize; // TUPLE1..TUPLE3
                    if self.stack.len() < n {
                        return Err("the pickle builds a tuple from an empty stack".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(Node::new(items)?))?;
                }
                b']' => self.push(Value::List(Node::new(vec![])?))?,
                b'l' => {
                    let items = self.pop_mark()?; // LIST
                    self.push(Value::List(Node::new(items)?))?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? }; // APPEND, APPENDS
                    self.extend_top(items, false)?;
                }
                b'}' => self.push(Value::Dict(Node::new(vec![])?))?,
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
                    if op == b'd' {
                        self.push(Value::Dict(Node::new(items)?))?;
                    } else {
                        self.extend_top(items, true)?;
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
                    self.push(value)?;
                }
                b'b' => drop(self.pop()?), // BUILD: a state dict's `_metadata`, which we do not need
                b'q' => {
                    let key = self.u8()? as u32; // BINPUT
                    self.memoize(key)?;
                }
                b'r' => {
                    let key = self.u32()?; // LONG_BINPUT
                    self.memoize(key)?;
                }
                0x94 => {
                    let key = self.memo.len() as u32; // MEMOIZE
                    self.memoize(key)?;
                }
                b'h' | b'j' => {
                    let key = if op == b'h' { self.u8()? as u32 } else { self.u32()? }; // BINGET, LONG_BINGET
                    let v = self.memo.get(&key).ok_or("the pickle reads a memo slot it never wrote")?.clone();
                    self.push(v)?;
                }
                b'Q' => {
                    let pid = self.pop()?; // BINPERSID: ('storage', StorageType, key, location, numel)
                    let storage = match &pid {
                        Value::Tuple(t) => match t.items.as_slice() {
                            [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), ..] if &**tag == "storage" => {
                                Value::Storage { kind: *kind, key: key.clone() }
                            }
                            _ => return Err("unsupported persistent id (expected a torch storage)".into()),
                        },
                        _ => return Err("unsupported persistent id (expected a torch storage)".into()),
                    };
                    self.push(storage)?;
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
            Value::Tuple(t) => {
                t.items.iter().map(|i| if let Value::Int(n) = i { Ok(*n) } else { Err("a tensor size is not an integer".to_string()) }).collect()
            }
            _ => Err("a tensor size is not a tuple".into()),
        }
    };
    match callable {
        Value::Global(Global::OrderedDict) => Ok(Value::Dict(Node::new(vec![])?)),
        Value::Global(Global::RebuildTensor) => match args.items.as_slice() {
            [Value::Storage { kind, key }, Value::Int(offset), size, stride, ..] => {
                Ok(Value::Tensor(Rc::new(TensorRef { storage: key.to_string(), kind: *kind, offset: *offset, size: ints(size)?, stride: ints(stride)? })))
            }
            _ => Err("_rebuild_tensor_v2 called with unexpected arguments".into()),
        },
        Value::Global(Global::RebuildParameter) => match args.items.first() {
            Some(tensor @ Value::Tensor(_)) => Ok(tensor.clone()),
            _ => Err("_rebuild_parameter called without a tensor".into()),
        },
        _ => Err("the pickle calls something that is not a callable a state dict uses".into()),
    }
}

/// The elements a strided view reads, after checking that it stays inside a storage of
/// `storage_len` elements and materialises no more elements than the storage holds.
fn check_view(r: &TensorRef, storage_len: i64) -> std::result::Result<(), String> {
    if r.size.len() != r.stride.len() || r.size.len() > 64 {
        return Err(format!("has {} sizes and {} strides", r.size.len(), r.stride.len()));
    }
    if r.offset < 0 || r.size.iter().chain(&r.stride).any(|&v| v < 0) {
        return Err(format!("has a negative offset, size or stride (offset {}, size {:?}, stride {:?})", r.offset, r.size, r.stride));
    }
    let numel = r.size.iter().try_fold(1i64, |n, &d| n.checked_mul(d)).ok_or("has a size whose product overflows")?;
    if numel == 0 {
        return Ok(());
    }
    let extent = r
        .size
        .iter()
        .zip(&r.stride)
        .try_fold(r.offset, |e, (&n, &s)| (n - 1).checked_mul(s).and_then(|span| e.checked_add(span)))
        .and_then(|e| e.checked_add(1))
        .ok_or("has strides whose extent overflows")?;
    if extent > storage_len {
        return Err(format!("reaches element {extent} of a storage of {storage_len} (size {:?}, stride {:?}, offset {})", r.size, r.stride, r.offset));
    }
    if numel > storage_len {
        return Err(format!("has {numel} elements but its storage only {storage_len}: repeated strides would materialise more than the file holds"));
    }
    Ok(())
}

/// Every tensor of a `torch.save` zip archive, by its state-dict key, on the CPU.
pub fn read_torch_zip(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = crate::limits::open_regular(path, u64::MAX)?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        Error::format(path, format!("not a PyTorch zip archive ({e}); files from PyTorch before 1.6 must be re-saved with a recent PyTorch or as safetensors"))
    })?;
    let pickle_name = zip.file_names().find(|n| n.ends_with("data.pkl")).map(str::to_string);
    let Some(pickle_name) = pickle_name else { return Err(Error::format(path, "no data.pkl inside: not a file written by torch.save")) };
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    // What may be decompressed in all: the memory there is, and no entry may claim more.
    let mut budget = crate::limits::available_bytes(tch::Device::Cpu).unwrap_or(u64::MAX).max(file_len);
    let mut read_entry = |name: &str, limit: u64| -> Result<Vec<u8>> {
        let entry = zip.by_name(name).map_err(|e| Error::format(path, format!("{name}: {e}")))?;
        let claimed = entry.size();
        if claimed > limit.min(budget) {
            return Err(Error::TooLarge(format!(
                "{}: entry {name} claims {} uncompressed, more than tchlab will read ({} available)",
                path.display(),
                crate::limits::format_bytes(claimed as f64),
                crate::limits::format_bytes(limit.min(budget) as f64)
            )));
        }
        let mut bytes = Vec::with_capacity(claimed as usize);
        entry.take(claimed + 1).read_to_end(&mut bytes).map_err(|e| Error::format(path, format!("{name}: {e}")))?;
        if bytes.len() as u64 != claimed {
            return Err(Error::format(path, format!("{name}: the entry holds {} bytes but its header says {claimed}", bytes.len())));
        }
        budget -= claimed;
        Ok(bytes)
    };
    let big_endian = match read_entry(&format!("{prefix}byteorder"), 16) {
        Ok(order) if order == b"big" => true,
        Ok(order) if order == b"little" => false,
        Ok(order) => return Err(Error::format(path, format!("byteorder is {:?}; expected \"little\" or \"big\"", String::from_utf8_lossy(&order)))),
        Err(_) => false, // files before PyTorch 2.1 have no byteorder entry: little-endian
    };
    let pickle = read_entry(&pickle_name, MAX_PICKLE_BYTES)?;
    let root = Machine::new(&pickle).run().map_err(|m| Error::format(path, m))?;
    let mut refs = vec![];
    flatten(String::new(), &root, &mut refs).map_err(|m| Error::format(path, m))?;
    if refs.is_empty() {
        return Err(Error::format(path, "holds no tensors: expected a state dict (torch.save(model.state_dict(), path))"));
    }
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut tensors = vec![];
    for (name, r) in refs {
        crate::interrupt::check(&format!("loading {}", path.display()))?;
        if !storages.contains_key(&r.storage) {
            let mut bytes = read_entry(&format!("{prefix}data/{}", r.storage), u64::MAX)?;
            let elem = r.kind.elt_size_in_bytes();
            if big_endian && elem > 1 {
                bytes.chunks_exact_mut(elem).for_each(<[u8]>::reverse);
            }
            let flat = Tensor::f_from_data_size(&bytes[..bytes.len() / elem * elem], &[(bytes.len() / elem) as i64], r.kind)?;
            storages.insert(r.storage.clone(), flat);
        }
        let flat = &storages[&r.storage];
        check_view(&r, flat.numel() as i64).map_err(|why| Error::format(path, format!("tensor `{name}` {why}")))?;
        tensors.push((name, flat.f_as_strided(&r.size, &r.stride, r.offset)?.f_contiguous()?));
    }
    Ok(tensors)
}

/// Collects tensors from nested dicts, joining keys with dots; other values are ignored.
/// Depth is bounded when values are built; the number of entries visited is bounded here.
fn flatten(prefix: String, value: &Value, out: &mut Vec<(String, TensorRef)>) -> Step<()> {
    let mut visited = 0usize;
    flatten_into(prefix, value, out, &mut visited)
}

fn flatten_into(prefix: String, value: &Value, out: &mut Vec<(String, TensorRef)>, visited: &mut usize) -> Step<()> {
    *visited += 1;
    if *visited > MAX_ENTRIES {
        return Err(format!("refused: the state dict has more than {MAX_ENTRIES} entries once shared values are counted"));
    }
    match value {
        Value::Tensor(t) => out.push((prefix, (**t).clone())),
        Value::Dict(node) => {
            for pair in node.items.chunks_exact(2) {
                if let Value::Str(k) = &pair[0] {
                    let name = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
                    flatten_into(name, &pair[1], out, visited)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Step<Value> {
        Machine::new(bytes).run()
    }

    fn node(items: Vec<Value>) -> Rc<Node> {
        Node::new(items).unwrap()
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
        let expected = Value::Dict(node(vec![
            Value::Str("a".into()),
            Value::List(node(vec![Value::Int(1), Value::Int(-2), Value::Int(300000), Value::Int(1 << 40)])),
            Value::Str("b".into()),
            Value::Tuple(node(vec![Value::Bool(true), Value::None, Value::Float(1.5)])),
        ]));
        assert_eq!(value, expected);
    }

    #[test]
    fn truncated_pickle_is_an_error() {
        assert!(run(b"\x80\x02}q\x00(X\x01\x00").unwrap_err().contains("ends in the middle"));
    }

    #[test]
    fn deep_nesting_is_refused_before_it_reaches_the_stack() {
        // 200,000 nested lists: `]` then (`]` APPEND-into-previous)… written as MARKs and LIST.
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b'(', 200_000));
        deep.extend(std::iter::repeat_n(b'l', 200_000));
        deep.push(b'.');
        assert!(run(&deep).unwrap_err().contains("deep"));
        // The same through EMPTY_LIST and APPEND: each list appended into the one below.
        let mut appended = b"\x80\x02".to_vec();
        appended.extend(std::iter::repeat_n(b']', 200_000));
        appended.extend(std::iter::repeat_n(b'a', 199_999));
        appended.push(b'.');
        assert!(run(&appended).unwrap_err().contains("deep"));
    }

    #[test]
    fn memo_doubling_stays_small_and_its_walk_is_bounded() {
        // d0 = {"w": 0}; d(n+1) = {"a": dn, "b": dn}: 2^60 leaves from a few hundred bytes.
        let mut bytes = b"\x80\x02}(\x8c\x01wK\x00uq\x00".to_vec();
        for i in 0..60u8 {
            bytes.extend_from_slice(b"}(\x8c\x01ah");
            bytes.push(i);
            bytes.extend_from_slice(b"\x8c\x01bh");
            bytes.push(i);
            bytes.extend_from_slice(b"uq");
            bytes.push(i + 1);
        }
        bytes.push(b'.');
        let root = run(&bytes).expect("61 levels of shared dicts are small in memory");
        let err = flatten(String::new(), &root, &mut vec![]).unwrap_err();
        assert!(err.contains("entries"), "{err}");
    }

    #[test]
    fn views_outside_or_larger_than_their_storage_are_refused() {
        let view = |offset, size: Vec<i64>, stride: Vec<i64>| TensorRef { storage: "0".into(), kind: Kind::Float, offset, size, stride };
        assert!(check_view(&view(0, vec![2, 3], vec![3, 1]), 6).is_ok());
        assert!(check_view(&view(1, vec![2, 3], vec![3, 1]), 6).unwrap_err().contains("reaches"));
        assert!(check_view(&view(0, vec![1000000, 1000000], vec![0, 0]), 6).unwrap_err().contains("materialise"));
        assert!(check_view(&view(0, vec![i64::MAX, 3], vec![i64::MAX, 1]), 6).unwrap_err().contains("overflow"));
        assert!(check_view(&view(0, vec![2], vec![-1]), 6).unwrap_err().contains("negative"));
        assert!(check_view(&view(0, vec![2], vec![]), 6).is_err());
        assert!(check_view(&view(100, vec![0, 5], vec![5, 1]), 6).is_ok(), "an empty tensor reads nothing");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Opcodes the machine knows, with plausible arguments, so that random programs get
    /// past the first byte and exercise the stack, marks, memo and containers.
    fn instruction() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"(".to_vec()),
            Just(b"t".to_vec()),
            Just(b"l".to_vec()),
            Just(b"d".to_vec()),
            Just(b"]".to_vec()),
            Just(b"}".to_vec()),
            Just(b")".to_vec()),
            Just(b"a".to_vec()),
            Just(b"e".to_vec()),
            Just(b"s".to_vec()),
            Just(b"u".to_vec()),
            Just(b"0".to_vec()),
            Just(b"1".to_vec()),
            Just(b"2".to_vec()),
            Just(b"N".to_vec()),
            Just(b"R".to_vec()),
            Just(b"b".to_vec()),
            Just(b"Q".to_vec()),
            Just(b"\x93".to_vec()),
            Just(b"\x94".to_vec()),
            Just(b"\x85".to_vec()),
            Just(b"\x86".to_vec()),
            Just(b"ctorch._utils\n_rebuild_tensor_v2\n".to_vec()),
            Just(b"ctorch\nFloatStorage\n".to_vec()),
            Just(b"ccollections\nOrderedDict\n".to_vec()),
            any::<u8>().prop_map(|k| vec![b'K', k]),
            any::<u8>().prop_map(|k| vec![b'q', k]),
            any::<u8>().prop_map(|k| vec![b'h', k]),
            "[a-z.]{0,12}".prop_map(|s| {
                let mut v = vec![0x8c, s.len() as u8];
                v.extend(s.bytes());
                v
            }),
            any::<u32>().prop_map(|n| {
                let mut v = vec![b'X'];
                v.extend(n.to_le_bytes());
                v
            }),
            any::<u8>().prop_map(|op| vec![op]),
        ]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Machine::new(&bytes).run();
        }

        #[test]
        fn random_programs_never_panic_and_their_values_stay_shallow(program in proptest::collection::vec(instruction(), 0..400)) {
            let mut bytes = b"\x80\x02".to_vec();
            bytes.extend(program.concat());
            bytes.push(b'.');
            if let Ok(value) = Machine::new(&bytes).run() {
                prop_assert!(value.depth() <= MAX_DEPTH);
                let _ = flatten(String::new(), &value, &mut vec![]);
            }
        }
    }
}
