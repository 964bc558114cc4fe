//! Exploration: explorers with controls, sweeps, the learning-rate range test, and
//! comparing branches.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;

use super::{flag, opt_pos, option, pairs, pos, rest, returns, Command};
use crate::checkpoint::find::expand_home;
use crate::plot::{line_chart, parallel_coordinates, Axis, LineChart, ParallelCoordinates, Series};
use crate::session::format::pairs as pairs_text;
use crate::session::output::{Bundle, CellError, Table};
use crate::session::panel::{ControlKind, Explorer, Setting};
use crate::session::parse::Args;
use crate::session::{Ctx, Session};
use crate::sweep::study::{self, StudyWriter};
use crate::sweep::{lr_find, slurm, sweep, LrFind, Method, Param, Place, Plan, Progress, Schedule, Space, Trial};

pub const EXPLORE: Command = Command {
    name: "explore",
    summary: "controls that redraw a picture: sampling over a continuation, layer and head over attention, hyperparameters over training tries",
    args: &[
        pos("what", "generate | attention | train").choices(&["generate", "attention", "train"]),
        opt_pos("text", "generate: the prompt; attention: the text (quote it)"),
        option("from", "SNAPSHOT", "train: the snapshot every try starts from (default: one taken now)"),
    ],
    details: "In a notebook the controls are Jupyter widgets (JupyterLab, Notebook 7, VS Code): moving one redraws the picture; \
              without a widget manager the picture shows alone. In the terminal, arrows choose and change a control, Enter runs, Esc leaves. \
              `train`: each press of `train` forks a branch try-N from the snapshot with the controls' hyperparameters and trains it; \
              `rewind` goes back to the snapshot; `keep this branch` stays on the current try and closes the explorer. \
              Controls run like cells: an interrupt stops them, and a failure changes nothing and shows its error beside the controls.",
    example: "%explore attention \"the cat sat on the mat\"",
    returns: returns::<Explored>(),
    run: explore,
};

fn explore(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let text = args.get("text");
    let explorer = match (args.get("what").expect("required"), text) {
        ("generate", Some(prompt)) => Explorer::generate(prompt),
        ("attention", Some(text)) => Explorer::attention(s, text)?,
        ("train", None) => Explorer::train(s, args.get("from"))?,
        ("train", Some(_)) => return Err(args.usage_error("`%explore train` takes no text")),
        (what, None) => return Err(args.usage_error(format!("`%explore {what}` needs a text (quote it)"))),
        (other, _) => unreachable!("the parser admits only the choices, not {other}"),
    };
    if args.get("from").is_some() && args.get("what") != Some("train") {
        return Err(args.usage_error("--from is for `%explore train`"));
    }
    let panel = s.open_panel(explorer, ctx)?;
    let controls = panel
        .controls
        .iter()
        .map(|c| ExploreControl {
            name: c.name.to_string(),
            kind: match &c.kind {
                ControlKind::Float { .. } => "float",
                ControlKind::LogFloat { .. } => "log",
                ControlKind::Int { .. } => "int",
                ControlKind::Choice(_) => "choice",
                ControlKind::Toggle => "toggle",
                ControlKind::Button => "button",
            }
            .to_string(),
            value: match &c.value {
                Setting::Number(x) => serde_json::json!(x),
                Setting::Choice(name) => serde_json::json!(name),
                Setting::Flag(on) => serde_json::json!(on),
                Setting::Nothing => serde_json::Value::Null,
            },
        })
        .collect();
    let names: Vec<&str> = panel.controls.iter().map(|c| c.name).collect();
    ctx.returns(Bundle::text(format!("{}: {}", panel.id, names.join(", "))), &Explored { panel: panel.id.clone(), controls });
    Ok(())
}

/// What `%explore` returns.
#[derive(Serialize, JsonSchema)]
pub struct Explored {
    /// The explorer's id, which its controls' events name.
    pub panel: String,
    /// Its controls.
    pub controls: Vec<ExploreControl>,
}

/// One control of an explorer.
#[derive(Serialize, JsonSchema)]
pub struct ExploreControl {
    /// Its name.
    pub name: String,
    /// float, log, int, choice, toggle or button.
    pub kind: String,
    /// Its value (null for buttons).
    pub value: serde_json::Value,
}

pub const SWEEP: Command = Command {
    name: "sweep",
    summary: "search hyperparameters from the current state: grid, random or TPE; halving, ASHA or PBT; here, in worker processes or on Slurm",
    args: &[
        pairs("values: key=[a,b] (listed), key=log(lo,hi), key=uniform(lo,hi), key=int(lo,hi) (ranges)").hparams(),
        option("steps", "N", "steps per trial (halving, ASHA: in the first rung; PBT: per round) (default 50)"),
        option("trials", "N", "random and tpe: how many trials; PBT: the population (default 8)"),
        option("method", "M", "grid (default for lists) | random (default for ranges) | tpe"),
        option("schedule", "S", "none (default) | halving | asha | pbt"),
        option("rounds", "N", "pbt: rounds of --steps steps (default 4)"),
        flag("adopt", "continue from the best trial's state (its weights, optimiser and hyperparameters) afterwards"),
        option("jobs", "N", "train N trials at once, each in a worker process resuming from a saved checkpoint (the same losses, bit for bit); with --on slurm, at most N jobs at once"),
        option("on", "slurm", "run the trials as Slurm job arrays (needs --study DIR on a filesystem the nodes see)").suggest(&["slurm"]),
        option("partition", "P", "--on slurm: the partition"),
        option("time", "T", "--on slurm: each job's time limit (minutes, or D-HH:MM:SS)"),
        option("gpus", "G", "--on slurm: GPUs per job"),
        option("cpus", "C", "--on slurm: CPUs per job"),
        option("study", "DIR", "write each trial to DIR/study.jsonl as it finishes (a new study: DIR must not hold one)").path(),
        option("attach", "DIR", "follow a Slurm sweep again (after a kernel restart) to its end").path(),
        option("show", "DIR", "draw a study again: its table, curves, optimisation history, parallel coordinates, PBT lineage").path(),
    ],
    details: "Every trial starts from the current state and the state is put back afterwards (with --adopt, the best trial's state is kept). \
              Trials are ranked by validation loss (or, without validation data, their last training losses). \
              `tpe` is the tree-structured Parzen estimator as Optuna's TPESampler runs it: ten random trials, then each trial where \
              the best tenth of those before it are dense and the rest sparse. `halving` trains every trial --steps, then the better half twice as long, \
              until one is left; `asha` promotes a trial as soon as it is in the top half of its rung so far, so parallel jobs never wait for a rung to fill; \
              `pbt` trains a population for --rounds rounds, and after each the worst quarter takes over a copy of the best quarter's state, \
              with its values perturbed (×0.8 or ×1.2, a neighbour in a list, or a fresh draw one time in four). \
              `--method halving` is `--method random --schedule halving`. \
              With --study, every trial is on disk as it finishes (an interrupted or lost kernel keeps them); `--show DIR` draws them again. \
              `--on slurm` submits each batch of trials as a job array (sbatch) running this program, follows it (squeue, scontrol), \
              and cancels it (scancel) on an interrupt; after a kernel restart, `--attach DIR` follows the jobs again.",
    example: "%sweep lr=log(1e-4,1e-2) warmup=int(0,20) --method tpe --schedule asha --trials 16 --jobs 4",
    returns: returns::<Swept>(),
    run: sweep_command,
};

fn trials_table(trials: &[Trial]) -> Table {
    let keys: Vec<String> = trials.first().map(|t| t.values.iter().map(|(k, _)| k.clone()).collect()).unwrap_or_default();
    let mut table =
        Table::new(["trial".to_string()].into_iter().chain(keys.iter().cloned()).chain(["steps".into(), "loss".into(), "score".into(), "status".into()]));
    for t in trials {
        let loss = t.losses.last().map_or(String::new(), |(_, l)| format!("{l:.4}"));
        let score = if t.score.is_finite() { format!("{:.4}", t.score) } else { String::new() };
        table.row([t.id.to_string()].into_iter().chain(t.values.iter().map(|(_, v)| v.clone())).chain([
            t.losses.len().to_string(),
            loss,
            score,
            t.status.clone(),
        ]));
    }
    table
}

/// The sweep's live table, and its study file when it has one.
struct SweepProgress<'c, 'o> {
    ctx: &'c mut Ctx<'o>,
    display: String,
    last_update: Instant,
    study: Option<StudyWriter>,
}

impl Progress for SweepProgress<'_, '_> {
    fn step(&mut self, trials: &[Trial]) {
        if self.last_update.elapsed() >= Duration::from_millis(250) {
            self.ctx.update(&self.display, trials_table(trials).bundle());
            self.last_update = Instant::now();
        }
    }

    fn finished(&mut self, trial: &Trial) -> crate::Result<()> {
        self.study.as_mut().map_or(Ok(()), |study| study.record(trial))
    }

    fn note(&mut self, text: &str) {
        self.ctx.note(text);
    }
}

/// The pictures of a sweep: each trial's loss, the best score so far against the
/// trial, hyperparameters against score in parallel coordinates, and the score against
/// each hyperparameter.
fn show_sweep(trials: &[Trial], params: &[Param], ctx: &mut Ctx) -> Result<(), CellError> {
    let curves: Vec<Series> = trials
        .iter()
        .map(|t| Series {
            name: format!("#{} {}", t.id, pairs_text(&t.values)),
            points: t.losses.iter().map(|&(x, y)| (x as f64, y)).collect(),
            markers: false,
            faint: false,
        })
        .collect();
    if curves.iter().any(|c| !c.points.is_empty()) {
        let chart = LineChart {
            title: "sweep: training loss per trial".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            log_x: false,
            log_y: true,
            series: curves,
        };
        ctx.display(Bundle::text(format!("<figure: sweep, {} trials>", trials.len())).figure(&line_chart(&chart)?));
    }
    let scored: Vec<&Trial> = trials.iter().filter(|t| t.score.is_finite()).collect();
    if scored.len() >= 2 {
        let mut best = f64::INFINITY;
        let so_far: Vec<(f64, f64)> = scored
            .iter()
            .map(|t| {
                best = best.min(t.score);
                (t.id as f64, best)
            })
            .collect();
        let chart = LineChart {
            title: "optimisation history".into(),
            x_label: "trial".into(),
            y_label: "score".into(),
            log_x: false,
            log_y: false,
            series: vec![
                Series { name: "score".into(), points: scored.iter().map(|t| (t.id as f64, t.score)).collect(), markers: true, faint: false },
                Series { name: "best so far".into(), points: so_far, markers: false, faint: false },
            ],
        };
        ctx.display(Bundle::text("<figure: optimisation history>").figure(&line_chart(&chart)?));
        let axes: Vec<Axis> = params
            .iter()
            .map(|p| Axis { name: p.key.clone(), log: matches!(p.space, Space::LogUniform(..)) })
            .chain([Axis { name: "score".into(), log: false }])
            .collect();
        let rows: Vec<Vec<String>> = scored.iter().map(|t| t.values.iter().map(|(_, v)| v.clone()).chain([format!("{}", t.score)]).collect()).collect();
        let figure = parallel_coordinates(&ParallelCoordinates { title: "hyperparameters and score".into(), axes, rows })?;
        ctx.display(Bundle::text("<figure: parallel coordinates>").figure(&figure));
    }
    if trials.iter().any(|t| !t.lineage.is_empty()) {
        show_lineage(trials, params, ctx)?;
    }
    for p in params {
        let points: Vec<(f64, f64)> =
            scored.iter().filter_map(|t| Some((t.values.iter().find(|(k, _)| *k == p.key)?.1.parse::<f64>().ok()?, t.score))).collect();
        if points.len() >= 2 {
            let log_x = matches!(p.space, Space::LogUniform(..))
                || points.iter().all(|(x, _)| *x > 0.0)
                    && points.iter().map(|(x, _)| *x).fold(0.0, f64::max) / points.iter().map(|(x, _)| *x).fold(f64::MAX, f64::min) >= 10.0;
            let chart = LineChart {
                title: format!("score against {}", p.key),
                x_label: p.key.clone(),
                y_label: "score".into(),
                log_x,
                log_y: false,
                series: vec![Series { name: p.key.clone(), points, markers: true, faint: false }],
            };
            ctx.display(Bundle::text(format!("<figure: score against {}>", p.key)).figure(&line_chart(&chart)?));
        }
    }
    Ok(())
}

/// PBT's lineage: who took over whose state when, as a table, and each numeric
/// hyperparameter of every member over training, jumping where it exploited another.
fn show_lineage(trials: &[Trial], params: &[Param], ctx: &mut Ctx) -> Result<(), CellError> {
    let mut table = Table::new(["round", "step", "member", "took over from", "values before", "values after"]);
    let mut exploits: Vec<(&Trial, &crate::sweep::Exploit)> = trials.iter().flat_map(|t| t.lineage.iter().map(move |e| (t, e))).collect();
    exploits.sort_by_key(|(t, e)| (e.round, t.id));
    for (t, e) in &exploits {
        table.row([e.round.to_string(), e.step.to_string(), format!("#{}", t.id), format!("#{}", e.from), pairs_text(&e.replaced), pairs_text(&e.values)]);
    }
    ctx.display(table.bundle_under("PBT lineage: each exploit"));
    for (d, p) in params.iter().enumerate() {
        if matches!(p.space, Space::List(_)) {
            continue;
        }
        let value = |values: &crate::sweep::Values| values.get(d).and_then(|(_, v)| v.parse::<f64>().ok());
        let series: Vec<Series> = trials
            .iter()
            .filter_map(|t| {
                let start = t.losses.first()?.0 - 1;
                let mut points = vec![(start as f64, value(t.proposed())?)];
                for e in &t.lineage {
                    points.push((e.step as f64, value(&e.replaced)?));
                    points.push((e.step as f64, value(&e.values)?));
                }
                points.push((t.losses.last()?.0 as f64, value(&t.values)?));
                Some(Series { name: format!("#{}", t.id), points, markers: false, faint: false })
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let chart = LineChart {
            title: format!("PBT: {} of each member (a jump is an exploit)", p.key),
            x_label: "step".into(),
            y_label: p.key.clone(),
            log_x: false,
            log_y: matches!(p.space, Space::LogUniform(..)),
            series,
        };
        ctx.display(Bundle::text(format!("<figure: PBT lineage of {}>", p.key)).figure(&line_chart(&chart)?));
    }
    Ok(())
}

/// The result line and data of a sweep (run now, or read back from its study).
fn swept(trials: Vec<Trial>) -> (String, Swept) {
    let best = study::best(&trials);
    let best_values = best.and_then(|b| trials.iter().find(|t| t.id == b)).map(|t| t.values.clone());
    let text = match best.and_then(|b| trials.iter().find(|t| t.id == b)) {
        Some(t) => format!("best: trial {} ({}), score {:.4}", t.id, pairs_text(&t.values), t.score),
        None if trials.is_empty() => "no trial finished".into(),
        None => "every trial diverged".into(),
    };
    (text, Swept { trials, best, best_values: best_values.map(|v| v.into_iter().collect()) })
}

fn sweep_command(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    if let Some(dir) = args.get("show") {
        if !args.pairs.is_empty() || args.get("study").is_some() || args.get("attach").is_some() || args.flag("adopt") {
            return Err(args.usage_error("--show DIR draws a finished study again; it takes no values, --study, --attach or --adopt"));
        }
        let study = study::read(&expand_home(dir))?;
        ctx.display(trials_table(&study.trials).bundle_under(&format!(
            "{}: {} trials of {} ({} search, schedule {})",
            dir,
            study.trials.len(),
            pairs_text(&study.header.params),
            study.header.method,
            study.header.schedule
        )));
        show_sweep(&study.trials, &study.params, ctx)?;
        let (text, swept) = swept(study.trials);
        ctx.returns(Bundle::text(text), &swept);
        return Ok(());
    }
    if let Some(dir) = args.get("attach") {
        return attach(s, args, &expand_home(dir), ctx);
    }
    let (method, mut schedule) = match args.get("method") {
        Some("halving") => (Method::Random, Schedule::Halving),
        Some(m) => (Method::parse(m)?, Schedule::None),
        None if args.pairs.iter().any(|(_, v)| !v.trim().starts_with('[')) => (Method::Random, Schedule::None),
        None => (Method::Grid, Schedule::None),
    };
    if let Some(name) = args.get("schedule") {
        schedule = Schedule::parse(name)?;
    }
    let rounds: Option<usize> = args.parse_as("rounds")?;
    if rounds.is_some() && schedule != Schedule::Pbt {
        return Err(args.usage_error("--rounds is for --schedule pbt"));
    }
    let plan = Plan {
        params: args.pairs.clone(),
        method,
        schedule,
        steps: args.parse_as("steps")?.unwrap_or(50),
        trials: args.parse_as("trials")?.unwrap_or(8),
        rounds: rounds.unwrap_or(4),
        seed: s.trainer_or_err()?.seed(),
        adopt: args.flag("adopt"),
    };
    let params = plan.parse_params()?;
    let jobs: Option<usize> = args.parse_as("jobs")?;
    let slurm_options = ["partition", "time", "gpus", "cpus"];
    let place = match args.get("on") {
        None => {
            if let Some(name) = slurm_options.iter().find(|o| args.get(o).is_some()) {
                return Err(args.usage_error(format!("--{name} is for --on slurm")));
            }
            jobs.map_or(Place::InProcess, Place::Workers)
        }
        Some("slurm") => {
            let Some(dir) = args.get("study") else {
                return Err(args.usage_error("--on slurm needs --study DIR: the trials' files go there, on a filesystem the cluster's nodes see"));
            };
            let options = slurm::Options {
                partition: args.get("partition").map(String::from),
                time: args.get("time").map(String::from),
                gpus: args.parse_as("gpus")?,
                cpus: args.parse_as("cpus")?,
                jobs,
            };
            options.check()?;
            Place::Slurm(options, expand_home(dir))
        }
        Some(other) => return Err(args.usage_error(format!("--on {other}: the trials run here unless --on slurm"))),
    };
    let study = match args.get("study") {
        Some(dir) => Some(StudyWriter::new(&expand_home(dir), study::Header::of(&plan))?),
        None => None,
    };
    let trainer = s.trainer_or_err()?;
    let display = ctx.live(Bundle::text("sweep starting"));
    let mut progress = SweepProgress { ctx, display: display.clone(), last_update: Instant::now() - Duration::from_secs(1), study };
    let result = sweep(trainer, &plan, place, &mut progress).map_err(|e| interrupted(e, args.get("study").is_some()))?;
    finish_sweep(s, result, &params, display, None, ctx)
}

/// An interrupted sweep's error, saying what was kept — wherever in a trial the interrupt
/// landed (a step, or the data a trial prepares), the sweep puts the model back.
fn interrupted(e: crate::Error, studied: bool) -> CellError {
    match e {
        crate::Error::Interrupted { .. } | crate::Error::Cancelled(_) => {
            let kept = if studied { "; the trials that finished are in the study" } else { "" };
            CellError { name: "KeyboardInterrupt".into(), message: format!("the sweep was interrupted; the model is back where it started{kept}") }
        }
        e => e.into(),
    }
}

/// `%sweep --attach DIR`: a Slurm sweep followed again, after a restart, to its end.
fn attach(s: &mut Session, args: &Args, dir: &std::path::Path, ctx: &mut Ctx) -> Result<(), CellError> {
    if !args.pairs.is_empty() || ["study", "on", "jobs", "method", "schedule", "steps", "trials", "rounds"].iter().any(|o| args.get(o).is_some()) {
        return Err(args.usage_error("--attach DIR follows the sweep as it was started; it takes only --adopt"));
    }
    let attached = slurm::attach(dir)?;
    let params = attached.params.clone();
    let study = attached.study()?;
    let display = ctx.live(Bundle::text(format!("following the sweep in {}", dir.display())));
    let mut progress = SweepProgress { ctx, display: display.clone(), last_update: Instant::now() - Duration::from_secs(1), study: Some(study) };
    let (result, best_state) = attached.follow(args.flag("adopt"), &mut progress).map_err(|e| match e {
        crate::Error::Interrupted { .. } | crate::Error::Cancelled(_) => CellError {
            name: "KeyboardInterrupt".into(),
            message: "the sweep was interrupted and its jobs cancelled; the trials that finished are in the study".into(),
        },
        e => e.into(),
    })?;
    finish_sweep(s, result, &params, display, best_state.map(|t| (t, dir)), ctx)
}

/// Shows a sweep's results; adopts a state loaded from disk when there is one.
fn finish_sweep(
    s: &mut Session,
    result: crate::sweep::SweepResult,
    params: &[Param],
    display: String,
    loaded: Option<(crate::train::Trainer, &std::path::Path)>,
    ctx: &mut Ctx,
) -> Result<(), CellError> {
    ctx.update(&display, trials_table(&result.trials).bundle());
    show_sweep(&result.trials, params, ctx)?;
    let adopted = result.adopted;
    let (mut text, swept) = swept(result.trials);
    if let Some((state, dir)) = loaded {
        match s.trainer.as_mut() {
            Some(trainer) => trainer.adopt(&state)?,
            None => s.install_trainer(state, format!("the best trial of {}", dir.display())),
        }
    }
    if adopted {
        text.push_str(&format!("; adopted its state (step {})", s.trainer_or_err()?.step_count()));
    }
    ctx.returns(Bundle::text(text), &swept);
    Ok(())
}

/// What `%sweep` returns.
#[derive(Serialize, JsonSchema)]
pub struct Swept {
    /// Every trial, in the order they ran.
    pub trials: Vec<Trial>,
    /// The best trial's id (none when every trial diverged).
    pub best: Option<usize>,
    /// The best trial's hyperparameters.
    pub best_values: Option<BTreeMap<String, String>>,
}

pub const LR_FIND: Command = Command {
    name: "lr-find",
    summary: "the learning-rate range test: loss against a rising learning rate, with a suggestion",
    args: &[
        option("start", "LR", "first learning rate (default 1e-7)"),
        option("end", "LR", "last learning rate (default 1)"),
        option("steps", "N", "at most this many steps (default 100)"),
    ],
    details: "Trains from the current state with an exponentially rising learning rate until the loss blows up, then puts everything back. \
              The suggestion is fastai's valley: two thirds down the longest fall of the smoothed loss.",
    example: "%lr-find --steps 80",
    returns: returns::<LrFind>(),
    run: lr_find_command,
};

fn lr_find_command(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let start: f64 = args.parse_as("start")?.unwrap_or(1e-7);
    let end: f64 = args.parse_as("end")?.unwrap_or(1.0);
    let steps: u64 = args.parse_as("steps")?.unwrap_or(100);
    let found = lr_find(s.trainer_or_err()?, start, end, steps)?;
    let mut series =
        vec![Series { name: "loss".into(), points: found.lrs.iter().copied().zip(found.losses.iter().copied()).collect(), markers: false, faint: false }];
    if let Some(lr) = found.suggestion {
        let i = found.lrs.iter().position(|&x| x == lr).expect("the suggestion is one of the rates");
        series.push(Series { name: format!("suggestion {lr:.2e}"), points: vec![(lr, found.losses[i])], markers: true, faint: false });
    }
    let figure = line_chart(&LineChart {
        title: "learning-rate range test".into(),
        x_label: "learning rate".into(),
        y_label: "smoothed loss".into(),
        log_x: true,
        log_y: false,
        series,
    })?;
    ctx.display(Bundle::text(format!("<figure: learning-rate range test, {} steps>", found.lrs.len())).figure(&figure));
    let text = match found.suggestion {
        Some(lr) => format!("suggested learning rate: {lr:.2e} (`%set lr={lr:.2e}`)"),
        None => "no suggestion: the loss did not fall; try a wider range".into(),
    };
    ctx.returns(Bundle::text(text), &found);
    Ok(())
}

pub const COMPARE: Command = Command {
    name: "compare",
    summary: "overlay branches' loss curves and show the hyperparameters that differ",
    args: &[rest("runs", "two or more branch names (`%runs` lists them), or `all`")],
    details: "",
    example: "%compare main high-lr",
    returns: returns::<Compared>(),
    run: compare,
};

fn compare(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let trainer = s.trainer_or_err()?;
    let all = trainer.runs();
    let names: Vec<String> = if args.rest() == ["all"] { all.iter().map(|(n, _)| n.to_string()).collect() } else { args.rest().to_vec() };
    let runs = names
        .iter()
        .map(|name| {
            all.iter()
                .find(|(n, _)| n == name)
                .copied()
                .ok_or_else(|| args.usage_error(format!("no branch `{name}`; there are: {}", all.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if runs.len() < 2 {
        return Err(args.usage_error("name at least two branches to compare"));
    }
    let figure = crate::session::figures::loss_figure(&runs, 0.9, true)?;
    ctx.display(Bundle::text(format!("<figure: loss of {}>", names.join(", "))).figure(&figure));
    // Each branch's value of every key any branch changed: its last change, else the
    // value the first change of that key started from.
    let mut differences: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (_, h) in &runs {
        for c in &h.changes {
            differences.entry(c.key.clone()).or_default();
        }
    }
    for (key, values) in differences.iter_mut() {
        let base = runs.iter().flat_map(|(_, h)| &h.changes).find(|c| &c.key == key).map(|c| c.from.clone()).unwrap_or_default();
        for (name, h) in &runs {
            let value = h.changes.iter().rev().find(|c| &c.key == key).map_or(base.clone(), |c| c.to.clone());
            values.insert(name.to_string(), value);
        }
    }
    differences.retain(|_, v| v.values().collect::<std::collections::BTreeSet<_>>().len() > 1);
    let mut table = Table::new(["hyperparameter".to_string()].into_iter().chain(names.iter().cloned()));
    for (key, values) in &differences {
        table.row([key.clone()].into_iter().chain(names.iter().map(|n| values.get(n).cloned().unwrap_or_default())));
    }
    let mut summary = Table::new(["branch", "steps", "loss"]);
    for (name, h) in &runs {
        summary.row([name.to_string(), h.steps.len().to_string(), h.steps.last().map_or(String::new(), |r| format!("{:.4}", r.loss))]);
    }
    let text = if differences.is_empty() {
        format!("{}\n\nno hyperparameter differs", summary.to_text())
    } else {
        format!("{}\n\n{}", summary.to_text(), table.to_text())
    };
    let html = format!("{}{}", summary.to_html(), table.to_html());
    ctx.returns(Bundle::text(text).html(html), &Compared { runs: names, differences });
    Ok(())
}

/// What `%compare` returns.
#[derive(Serialize, JsonSchema)]
pub struct Compared {
    /// The branches compared.
    pub runs: Vec<String>,
    /// Each hyperparameter that differs: its value on each branch.
    pub differences: BTreeMap<String, BTreeMap<String, String>>,
}
