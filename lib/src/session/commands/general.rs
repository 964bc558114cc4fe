//! Help, environment and timing commands.

use std::time::Instant;

use schemars::JsonSchema;
use serde::Serialize;
use tch::Device;

use super::{flag, opt_pos, option, pairs, pos, rest, returns, Command, COMMANDS};
use crate::device::{device_name, parse_device};
use crate::session::format::format_seconds;
use crate::session::output::{Bundle, CellError, Table};
use crate::session::parse::{split_cell, Args, Cell, Invocation};
use crate::session::{Ctx, Session};

pub const HELP: Command = Command {
    name: "help",
    summary: "list the commands, or explain one",
    args: &[opt_pos("command", "a command's name").commands()],
    details: "`CMD?` shows the same help as `%help CMD`.",
    example: "%help train",
    returns: None,
    run: help,
};

fn help(_: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    if let Some(name) = args.get("command") {
        let name = name.trim_start_matches('%');
        let command = super::find(name)
            .ok_or_else(|| args.usage_error(format!("no command %{name}{}", crate::suggest::did_you_mean(name, COMMANDS.iter().map(|c| c.name)))))?;
        ctx.out(command.help());
        return Ok(());
    }
    let mut table = Table::new(["command", "what it does"]);
    for c in COMMANDS {
        table.row([format!("%{}", c.name), c.summary.to_string()]);
    }
    let more = "`%help CMD` or `CMD?` explains one. A cell that is not commands is Rust, where `live::weight(NAME)`, `live::set_weight`, `live::run(\"%eval\")` and the rest of `tchlab::live` reach this session.";
    ctx.display(Bundle::text(format!("{}\n\n{more}", table.to_text())).html(format!(
        "{}<p>{}</p>",
        table.to_html(),
        crate::session::output::escape_html(more)
    )));
    Ok(())
}

pub const ECHO: Command = Command {
    name: "echo",
    summary: "print text",
    args: &[flag("stderr", "print on stderr instead of stdout"), rest("text", "what to print")],
    details: "",
    example: "%echo hello, class",
    returns: None,
    run: echo,
};

fn echo(_: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let text = args.rest().join(" ");
    if args.flag("stderr") {
        ctx.note(text);
    } else {
        ctx.out(text);
    }
    Ok(())
}

pub const STATUS: Command = Command {
    name: "status",
    summary: "what is loaded: model, tokenizer, data, step, device, memory",
    args: &[flag("checksum", "also a hash of every weight's bytes (equal exactly when the weights are)")],
    details: "",
    example: "%status",
    returns: returns::<Status>(),
    run: status,
};

fn status(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let model = s.model();
    let trainer = s.trainer.as_ref();
    let checksum = match model.filter(|_| args.flag("checksum")) {
        Some(m) => Some(format!("{:016x}", m.checksum()?)),
        None => None,
    };
    let status = Status {
        step: trainer.map_or(0, |t| t.step_count()),
        optimizer_steps: trainer.map_or(0, |t| t.optimizer_steps()),
        device: device_name(s.device),
        model: model.map(|m| m.config().model_type().to_string()),
        parameters: model.map(|m| m.num_parameters()),
        precision: s.hparams().precision,
        tokenizer_vocab: s.tokenizer().map(|t| t.vocab_size()),
        data: s.data.clone(),
        branch: trainer.map(|t| t.branch().to_string()),
        snapshots: trainer.map_or(0, |t| t.timeline().snapshots().len()),
        snapshot_memory_mb: trainer.map_or(0.0, |t| t.timeline().bytes() as f64 / (1 << 20) as f64),
        threads: tch::get_num_threads(),
        source: s.model_source.clone(),
        weights_checksum: checksum,
    };
    let value = serde_json::to_value(&status).expect("serializes");
    let mut table = Table::new(["", ""]);
    for (k, v) in value.as_object().expect("object") {
        let text = match v {
            serde_json::Value::Null => "—".to_string(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        table.row([k.clone(), text]);
    }
    ctx.returns(table.bundle(), &status);
    Ok(())
}

/// What `%status` returns.
#[derive(Serialize, JsonSchema)]
pub struct Status {
    /// Steps taken on the current branch.
    pub step: i64,
    /// Optimiser updates (fewer than steps under gradient accumulation).
    pub optimizer_steps: i64,
    /// `cpu`, `cuda:0`.
    pub device: String,
    /// The model's family (`model_type`), when there is a model.
    pub model: Option<String>,
    /// Its parameter count.
    pub parameters: Option<i64>,
    /// f32, bf16 or f16.
    pub precision: crate::train::Precision,
    /// The tokenizer's vocabulary size.
    pub tokenizer_vocab: Option<usize>,
    /// The data set, as `%data` described it.
    pub data: Option<crate::data::DataSpec>,
    /// The current branch of the timeline.
    pub branch: Option<String>,
    /// Snapshots kept in memory.
    pub snapshots: usize,
    /// The memory they take, MiB.
    pub snapshot_memory_mb: f64,
    /// CPU threads libtorch uses.
    pub threads: i32,
    /// Where the model came from (`%load`'s path or name).
    pub source: Option<String>,
    /// With `--checksum`: a hash of every weight's bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights_checksum: Option<String>,
}

pub const PARAMS: Command = Command {
    name: "params",
    summary: "notebook parameters: `$name` in later commands stands for the value",
    args: &[pairs("name=value (hyperparameters among them are also set, as %set sets them)").hparams()],
    details: "As IPython expands `$name` in magics: `%train $steps`, `--save runs/$name.png`; `${name}` where letters follow, \
              `$$` for a `$`; a `$` that names no parameter stays as it is. Hyperparameter names (lr, batch, ...) are set as well, \
              all checked before any is kept. papermill writes its injected cell with this command \
              (`papermill nb.ipynb out.ipynb -p steps 200`, through the `tchlab-papermill` translator). Without pairs, lists them.",
    example: "%params steps=200 prompt=\"the cat\" lr=3e-3",
    returns: returns::<Params>(),
    run: params,
};

/// The most parameters a session keeps, and the longest value.
const MAX_PARAMS: usize = 1024;
const MAX_PARAM_VALUE: usize = 64 << 10;

fn params(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    // Names are identifiers already: the argument parser takes no other word as a pair.
    for (name, value) in &args.pairs {
        if value.len() > MAX_PARAM_VALUE {
            return Err(args.usage_error(format!("the value of `{name}` is {} KiB; parameters hold at most {} KiB", value.len() >> 10, MAX_PARAM_VALUE >> 10)));
        }
    }
    let new_names = args.pairs.iter().filter(|(name, _)| !s.params.contains_key(name)).map(|(name, _)| name).collect::<std::collections::BTreeSet<_>>();
    if s.params.len() + new_names.len() > MAX_PARAMS {
        return Err(args.usage_error(format!("a session keeps at most {MAX_PARAMS} parameters ({} now, {} new)", s.params.len(), new_names.len())));
    }
    let hparams: Vec<(String, String)> = args.pairs.iter().filter(|(name, _)| s.hparams().get(name).is_some()).cloned().collect();
    s.set_hparams(&hparams)?;
    s.params.extend(args.pairs.iter().cloned());
    let mut table = Table::new(["parameter", "value", ""]);
    for (name, value) in &s.params {
        let note = if s.hparams().get(name).is_some() { "hyperparameter" } else { "" };
        table.row([format!("${name}"), value.clone(), note.to_string()]);
    }
    let result = Params { params: s.params.clone(), hparams: hparams.into_iter().map(|(name, _)| name).collect() };
    ctx.returns(table.bundle(), &result);
    Ok(())
}

/// What `%params` returns.
#[derive(Serialize, JsonSchema)]
pub struct Params {
    /// Every parameter the session holds, by name.
    pub params: std::collections::BTreeMap<String, String>,
    /// The names this command also set as hyperparameters.
    pub hparams: Vec<String>,
}

pub const DEVICE: Command = Command {
    name: "device",
    summary: "show or choose the device: auto, cpu, cuda, cuda:N",
    args: &[opt_pos("device", "auto | cpu | cuda | cuda:N")],
    details: "The model, optimiser state and later work move to the device. `auto` picks CUDA when available.",
    example: "%device cpu",
    returns: returns::<DeviceInfo>(),
    run: device,
};

fn device(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    if let Some(name) = args.get("device") {
        let device = match name {
            "auto" => crate::cuda::best_device(),
            other => parse_device(other).ok_or_else(|| args.usage_error(format!("unknown device `{other}`")))?,
        };
        if let Device::Cuda(i) = device {
            crate::cuda::prepare(device);
            if !crate::cuda::is_available() || i as i64 >= crate::cuda::device_count() {
                return Err(args.usage_error(format!(
                    "{} is not available: this machine has {} CUDA devices",
                    device_name(device),
                    crate::cuda::device_count()
                )));
            }
        }
        if let Some(t) = s.trainer.as_mut() {
            t.to_device(device)?;
        }
        if let Some(m) = s.model.as_mut() {
            m.vars.set_device(device);
        }
        s.device = device;
    }
    let info = DeviceInfo { device: device_name(s.device), cuda_available: crate::cuda::is_available(), cuda_devices: crate::cuda::device_count() };
    ctx.returns(Bundle::text(format!("device: {}", info.device)), &info);
    Ok(())
}

/// What `%device` returns.
#[derive(Serialize, JsonSchema)]
pub struct DeviceInfo {
    /// The session's device: `cpu`, `cuda:0`.
    pub device: String,
    /// Whether CUDA can be used here.
    pub cuda_available: bool,
    /// How many CUDA devices there are.
    pub cuda_devices: i64,
}

pub const PRECISION: Command = Command {
    name: "precision",
    summary: "weights' precision: f32, bf16 (CPU and CUDA) or f16 (CUDA, loss scaling)",
    args: &[pos("precision", "f32 | bf16 | f16").choices(&["f32", "bf16", "f16"])],
    details: "The same as `%set precision=...`; low precision keeps float32 master weights in the optimiser.",
    example: "%precision bf16",
    returns: returns::<PrecisionSet>(),
    run: precision,
};

fn precision(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let value = args.get("precision").expect("required");
    s.set_hparams(&[("precision".to_string(), value.to_string())])?;
    ctx.returns(Bundle::text(format!("precision: {value}")), &PrecisionSet { precision: value.to_string() });
    Ok(())
}

/// What `%precision` returns.
#[derive(Serialize, JsonSchema)]
pub struct PrecisionSet {
    /// f32, bf16 or f16.
    pub precision: String,
}

pub const SEED: Command = Command {
    name: "seed",
    summary: "seed the random generators for new models and trainers",
    args: &[pos("n", "a whole number")],
    details: "Runs with the same seed, data and commands give the same numbers.",
    example: "%seed 42",
    returns: None,
    run: seed,
};

fn seed(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let n: u64 = args.parse_as("n")?.expect("required");
    s.seed = n;
    tch::manual_seed(n as i64);
    ctx.out(format!("seed: {n}"));
    Ok(())
}

pub const THREADS: Command = Command {
    name: "threads",
    summary: "show or set the number of CPU threads libtorch uses",
    args: &[opt_pos("n", "threads")],
    details: "",
    example: "%threads 2",
    returns: returns::<Threads>(),
    run: threads,
};

fn threads(_: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    if let Some(n) = args.parse_as::<i32>("n")? {
        let most = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32 * 4;
        if !(1..=most).contains(&n) {
            return Err(args.usage_error(format!("threads must be between 1 and {most} (four per core of this machine), got {n}")));
        }
        tch::set_num_threads(n);
    }
    let n = tch::get_num_threads();
    ctx.returns(Bundle::text(format!("threads: {n}")), &Threads { threads: n });
    Ok(())
}

/// What `%threads` returns.
#[derive(Serialize, JsonSchema)]
pub struct Threads {
    /// CPU threads libtorch uses.
    pub threads: i32,
}

pub const TIME: Command = Command {
    name: "time",
    summary: "run a command once and show how long it took (CUDA-synchronised)",
    args: &[rest("command", "the command line to time").commands().optional()],
    details: "As a cell command, `%%time` times the whole cell body.",
    example: "%time %step 10",
    returns: None,
    run: time,
};

/// Runs the command line in `words` (or the cell `body`) and returns its seconds.
fn run_timed(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<f64, CellError> {
    let invocations = match (&args.body, args.rest()) {
        (Some(body), _) => match split_cell(body)? {
            Cell::Commands(list) => list,
            Cell::Rust(_) => return Err(args.usage_error("only commands can be timed for now")),
        },
        (None, []) => return Err(args.usage_error("what should be timed? give a command")),
        (None, words) => {
            // Quoted again, so `%time %generate "the cat"` times the prompt "the cat".
            let line = words.iter().map(|w| quote_word(w)).collect::<Vec<_>>().join(" ");
            match split_cell(&line)? {
                Cell::Commands(list) => list,
                Cell::Rust(_) => return Err(args.usage_error(format!("`{line}` is not a command"))),
            }
        }
    };
    if invocations.iter().any(|i: &Invocation| i.name == "time" || i.name == "timeit") {
        return Err(args.usage_error("timing a timing command is not supported"));
    }
    let started = Instant::now();
    for inv in &invocations {
        s.run_invocation(inv, ctx)?;
    }
    if let Device::Cuda(i) = s.device {
        // Kernels run asynchronously: wait for them, or the time is only the launch.
        crate::cuda::synchronize(i);
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A word as the command language reads it back: quoted when it holds spaces, quotes
/// or backslashes, or is empty.
fn quote_word(word: &str) -> String {
    if !word.is_empty() && !word.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '\\') {
        return word.to_string();
    }
    format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
}

fn time(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let seconds = run_timed(s, args, ctx)?;
    ctx.out(format!("time: {}", format_seconds(seconds)));
    Ok(())
}

pub const TIMEIT: Command = Command {
    name: "timeit",
    summary: "time a command over many runs: mean and spread per run",
    args: &[
        option("runs", "N", "how many timed runs (default 5)"),
        flag("quiet", "hide the command's own output"),
        rest("command", "the command line to time").commands().optional(),
    ],
    details: "The first run is a warm-up and is not counted.",
    example: "%timeit --runs 10 %generate \"12\" --max-tokens 8",
    returns: returns::<Timing>(),
    run: timeit,
};

/// The most runs `%timeit` takes.
const MAX_TIMED_RUNS: usize = 10_000;

fn timeit(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let runs: usize = args.parse_as("runs")?.unwrap_or(5);
    if !(1..=MAX_TIMED_RUNS).contains(&runs) {
        return Err(args.usage_error(format!("--runs must be between 1 and {MAX_TIMED_RUNS}, got {runs}")));
    }
    let timed_run = |s: &mut Session, ctx: &mut Ctx| {
        if args.flag("quiet") {
            let mut discard = |_: crate::session::output::Output| {};
            run_timed(s, args, &mut Ctx { sink: &mut discard, declared: None })
        } else {
            run_timed(s, args, ctx)
        }
    };
    timed_run(s, ctx)?; // warm-up
    let times = (0..runs)
        .map(|_| {
            crate::interrupt::check("timing")?;
            timed_run(s, ctx)
        })
        .collect::<Result<Vec<f64>, _>>()?;
    let mean = times.iter().sum::<f64>() / runs as f64;
    let std = (times.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / runs as f64).sqrt();
    let text = format!("{} ± {} per run (mean ± std. dev. of {runs} runs)", format_seconds(mean), format_seconds(std));
    ctx.returns(Bundle::text(text), &Timing { mean_s: mean, std_s: std, runs });
    Ok(())
}

/// What `%timeit` returns.
#[derive(Serialize, JsonSchema)]
pub struct Timing {
    /// Mean seconds per run.
    pub mean_s: f64,
    /// Their standard deviation.
    pub std_s: f64,
    /// Timed runs (the warm-up not counted).
    pub runs: usize,
}

pub const WRITEFILE: Command = Command {
    name: "writefile",
    summary: "write the rest of the cell to a file (as a cell command: %%writefile PATH)",
    args: &[pos("path", "the file to write").path()],
    details: "Handy for small data sets made in a notebook. Missing directories are made; the write is atomic.",
    example: "%%writefile reviews.csv",
    returns: None,
    run: writefile,
};

fn writefile(_: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let Some(body) = &args.body else { return Err(args.usage_error("%writefile takes the cell's body: start the cell with %%writefile PATH")) };
    let path = crate::checkpoint::find::expand_home(args.get("path").expect("required"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    }
    crate::atomic::write(&path, |w| std::io::Write::write_all(w, body.as_bytes()))?;
    ctx.out(format!("wrote {} bytes to {}", body.len(), path.display()));
    Ok(())
}

pub const CLEAR: Command = Command { name: "clear", summary: "clear the cell's output", args: &[], details: "", example: "%clear", returns: None, run: clear };

fn clear(_: &mut Session, _: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    ctx.clear(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_read_back_as_themselves() {
        for word in ["plain", "the cat", "say \"hi\"", "back\\slash", "", "it's"] {
            let line = format!("%echo {}", quote_word(word));
            assert_eq!(crate::session::parse::words(&line[1..]).unwrap(), vec!["echo".to_string(), word.to_string()], "{line}");
        }
    }
}
