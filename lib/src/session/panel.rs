//! Explorers: a picture (text or a figure) with controls that redraw it — `%explore
//! generate`, `%explore attention`, `%explore train`. The session describes a panel's
//! controls and their values ([`Panel`]); front ends draw them (Jupyter widgets in the
//! kernel, keys in the terminal) and send back [`PanelEvent`]s, which run like cells
//! ([`Session::panel_event`]): interruptible, contained, and changing nothing when they
//! fail. Front ends without controls show the picture.

use std::time::{Duration, Instant};

use crate::generate::{generate_streaming, GenerateOptions};
use crate::interrupt;
use crate::session::figures::{loss_figure, AttentionKind, AttentionMaps};
use crate::session::output::{escape_html, Bundle, CellError, Output};
use crate::session::{Ctx, Session};
use crate::train::{Halt, History, Stop, Trainer};

/// What a control is, and the values it takes.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlKind {
    /// A number in `min..=max`, moved by `step`.
    Float {
        /// The lowest value.
        min: f64,
        /// The highest value.
        max: f64,
        /// The step between values.
        step: f64,
    },
    /// A positive number in `min..=max` on a log scale (a learning rate).
    LogFloat {
        /// The lowest value.
        min: f64,
        /// The highest value.
        max: f64,
    },
    /// A whole number in `min..=max`, moved by `step` (any whole number in range is taken).
    Int {
        /// The lowest value.
        min: i64,
        /// The highest value.
        max: i64,
        /// The step between values a slider offers.
        step: i64,
    },
    /// One of these names.
    Choice(Vec<String>),
    /// On or off.
    Toggle,
    /// A button that runs something.
    Button,
}

/// A control's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// Sliders' values (whole numbers for `Int`).
    Number(f64),
    /// A `Choice`'s name.
    Choice(String),
    /// A `Toggle`'s state.
    Flag(bool),
    /// Buttons have none.
    Nothing,
}

/// One control of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    /// The name events use (`temperature`, `train`).
    pub name: &'static str,
    /// What the front end writes beside it.
    pub label: &'static str,
    /// Its kind and range.
    pub kind: ControlKind,
    /// Its value now.
    pub value: Setting,
}

/// Values within this fraction of a range's width count as inside it: front ends
/// compute slider values in floating point (a log slider's `10^x`).
const RANGE_SLACK: f64 = 1e-9;

impl Control {
    fn new(name: &'static str, label: &'static str, kind: ControlKind, value: Setting) -> Self {
        Control { name, label, kind, value }
    }

    /// `value` if this control takes it (clamped onto the range when it is within
    /// rounding of it), else an error that names the control and its range.
    pub fn accept(&self, value: &Setting) -> Result<Setting, CellError> {
        let refuse = |what: String| CellError { name: "UsageError".into(), message: format!("control `{}`: {what}", self.name) };
        let within = |x: f64, min: f64, max: f64| -> Result<f64, CellError> {
            let slack = (max - min).abs() * RANGE_SLACK;
            if !x.is_finite() || x < min - slack || x > max + slack {
                return Err(refuse(format!("{x} is outside {min}..{max}")));
            }
            Ok(x.clamp(min, max))
        };
        match (&self.kind, value) {
            (ControlKind::Float { min, max, .. } | ControlKind::LogFloat { min, max }, Setting::Number(x)) => Ok(Setting::Number(within(*x, *min, *max)?)),
            (ControlKind::Int { min, max, .. }, Setting::Number(x)) if x.fract() == 0.0 => Ok(Setting::Number(within(*x, *min as f64, *max as f64)?)),
            (ControlKind::Int { .. }, Setting::Number(x)) => Err(refuse(format!("takes whole numbers, not {x}"))),
            (ControlKind::Choice(options), Setting::Choice(c)) if options.contains(c) => Ok(value.clone()),
            (ControlKind::Choice(options), Setting::Choice(c)) => Err(refuse(format!("`{c}` is not one of {}", options.join(", ")))),
            (ControlKind::Toggle, Setting::Flag(_)) => Ok(value.clone()),
            (ControlKind::Button, _) => Err(refuse("is a button: press it".into())),
            (kind, value) => Err(refuse(format!("a {kind:?} control cannot take {value:?}"))),
        }
    }
}

/// A picture with the controls that redraw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Unique in the process; events name it.
    pub id: String,
    /// What it explores (`%explore attention "the cat sat"`).
    pub title: String,
    /// The controls, in the order they are shown.
    pub controls: Vec<Control>,
    /// What the controls draw: `text/plain` always, a figure's `image/png` and
    /// `image/svg+xml` when there is one.
    pub picture: Bundle,
    /// Set once the explorer is done (`keep`): front ends disable the controls.
    pub finished: bool,
}

/// What a front end sends back.
#[derive(Debug, Clone, PartialEq)]
pub enum PanelEvent {
    /// A control was moved.
    Set {
        /// The control's name.
        control: String,
        /// Its new value.
        value: Setting,
    },
    /// A button was pressed.
    Press {
        /// The button's name.
        control: String,
    },
}

/// Open explorers beyond this many close, the oldest first.
pub(crate) const MAX_PANELS: usize = 16;

/// How often a running `train` redraws its picture.
const REDRAW_EVERY: Duration = Duration::from_secs(1);

/// What an explorer explores.
#[derive(Clone)]
enum Subject {
    Generate {
        prompt: String,
    },
    Attention {
        text: String,
    },
    /// Tries fork from the snapshot `base`, taken on the branch `origin`.
    Train {
        base: String,
        origin: String,
        tries: Vec<String>,
    },
}

/// An open explorer: its panel and what it redraws.
#[derive(Clone)]
pub(crate) struct Explorer {
    panel: Panel,
    subject: Subject,
}

static PANEL_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn usage(message: impl Into<String>) -> CellError {
    CellError { name: "UsageError".into(), message: message.into() }
}

fn number(value: f64) -> Setting {
    Setting::Number(value)
}

fn next_id() -> String {
    format!("explore-{}", PANEL_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

impl Explorer {
    fn new(id: String, title: String, controls: Vec<Control>, subject: Subject) -> Self {
        Explorer { panel: Panel { id, title, controls, picture: Bundle::default(), finished: false }, subject }
    }

    /// `%explore generate PROMPT`: sampling controls over a continuation.
    pub fn generate(prompt: &str) -> Self {
        let controls = vec![
            Control::new("temperature", "temperature", ControlKind::Float { min: 0.0, max: 2.0, step: 0.05 }, number(0.8)),
            Control::new("top_k", "top-k (0: all)", ControlKind::Int { min: 0, max: 200, step: 1 }, number(0.0)),
            Control::new("top_p", "top-p", ControlKind::Float { min: 0.05, max: 1.0, step: 0.05 }, number(1.0)),
            Control::new("max_tokens", "max tokens", ControlKind::Int { min: 1, max: 256, step: 1 }, number(32.0)),
            Control::new("seed", "seed", ControlKind::Int { min: 0, max: 9999, step: 1 }, number(0.0)),
        ];
        Explorer::new(next_id(), format!("%explore generate {prompt:?}"), controls, Subject::Generate { prompt: prompt.to_string() })
    }

    /// `%explore attention TEXT`: layer and head sliders over an attention map, and on an
    /// encoder–decoder a choice of which attention (cross, encoder, decoder).
    pub fn attention(s: &Session, text: &str) -> Result<Self, CellError> {
        let (model, tokenizer) = (s.model_or_err()?, s.tokenizer_or_err()?);
        let maps = AttentionMaps::of(model, tokenizer, text, None)?;
        let mut layers = maps.layers();
        let mut controls = vec![];
        if maps.kind.is_some() {
            layers = layers.max(AttentionMaps::of(model, tokenizer, text, Some(AttentionKind::Encoder))?.layers());
            let kinds = [AttentionKind::Cross, AttentionKind::Encoder, AttentionKind::Decoder].map(|k| k.name().to_string()).to_vec();
            controls.push(Control::new("kind", "attention", ControlKind::Choice(kinds), Setting::Choice("cross".into())));
        }
        controls.extend([
            Control::new("layer", "layer", ControlKind::Int { min: 0, max: layers - 1, step: 1 }, number(0.0)),
            Control::new("head", "head", ControlKind::Int { min: 0, max: maps.heads() - 1, step: 1 }, number(0.0)),
            Control::new("grid", "all heads", ControlKind::Toggle, Setting::Flag(false)),
        ]);
        Ok(Explorer::new(next_id(), format!("%explore attention {text:?}"), controls, Subject::Attention { text: text.to_string() }))
    }

    /// `%explore train`: hyperparameters for tries that fork from the snapshot `base`
    /// (taken now when it is `None`).
    pub fn train(s: &mut Session, base: Option<&str>) -> Result<Self, CellError> {
        let trainer = s.trainer_or_err()?;
        let id = next_id();
        let base = match base {
            Some(name) => {
                trainer.timeline().find(name, trainer.branch())?;
                name.to_string()
            }
            None => {
                let name = format!("{id}-start");
                trainer.snapshot(&name)?;
                name
            }
        };
        let origin = trainer.timeline().find(&base, trainer.branch())?.branch.clone();
        let hp = trainer.hparams();
        let schedules = ["constant", "linear", "cosine", "onecycle"].map(String::from).to_vec();
        let controls = vec![
            Control::new("lr", "learning rate", ControlKind::LogFloat { min: 1e-5, max: 1e-1 }, number(hp.lr.clamp(1e-5, 1e-1))),
            Control::new("warmup", "warm-up steps", ControlKind::Int { min: 0, max: 1000, step: 10 }, number(hp.warmup.clamp(0, 1000) as f64)),
            Control::new("batch", "batch", ControlKind::Int { min: 1, max: 512, step: 1 }, number(hp.batch.clamp(1, 512) as f64)),
            Control::new("weight_decay", "weight decay", ControlKind::Float { min: 0.0, max: 0.5, step: 0.01 }, number(hp.weight_decay.clamp(0.0, 0.5))),
            Control::new("schedule", "schedule", ControlKind::Choice(schedules), Setting::Choice(hp.get("schedule").unwrap_or_default())),
            Control::new("steps", "steps per try", ControlKind::Int { min: 10, max: 2000, step: 10 }, number(50.0)),
            Control::new("train", "train", ControlKind::Button, Setting::Nothing),
            Control::new("rewind", "rewind", ControlKind::Button, Setting::Nothing),
            Control::new("keep", "keep this branch", ControlKind::Button, Setting::Nothing),
        ];
        Ok(Explorer::new(id, format!("%explore train (from snapshot {base})"), controls, Subject::Train { base, origin, tries: vec![] }))
    }

    fn value(&self, name: &str) -> &Setting {
        &self.panel.controls.iter().find(|c| c.name == name).expect("a control the explorer made").value
    }

    fn number(&self, name: &str) -> f64 {
        match self.value(name) {
            Setting::Number(x) => *x,
            other => unreachable!("control {name} holds {other:?}"),
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.value(name) == &Setting::Flag(true)
    }

    /// Draws the picture for the controls' values.
    pub fn draw(&mut self, s: &Session) -> Result<(), CellError> {
        self.panel.picture = match &self.subject {
            Subject::Generate { prompt } => {
                let (model, tokenizer) = (s.model_or_err()?, s.tokenizer_or_err()?);
                let stop_ids = crate::session::generation::text_stop_ids(model, tokenizer);
                let top_k = self.number("top_k") as i64;
                let top_p = self.number("top_p");
                let opts = GenerateOptions {
                    max_new_tokens: self.number("max_tokens") as usize,
                    temperature: self.number("temperature"),
                    top_k: (top_k > 0).then_some(top_k),
                    top_p: (top_p < 1.0).then_some(top_p),
                    seed: Some(self.number("seed") as u64),
                    stop_ids: stop_ids.clone(),
                    constraints: model.generation.constraints(&stop_ids, model.config().vocab_size())?,
                };
                let prompt_ids = tokenizer.encode(prompt)?;
                let ids = generate_streaming(model, &prompt_ids, &opts, &mut |_| Ok(()))?;
                let visible: Vec<i64> = ids.into_iter().filter(|id| !stop_ids.contains(id)).collect();
                let continuation = tokenizer.decode(&visible)?;
                Bundle::text(format!("{prompt}{continuation}")).html(format!(
                    "<pre style='white-space:pre-wrap'><b>{}</b>{}</pre>",
                    escape_html(prompt),
                    escape_html(&continuation)
                ))
            }
            Subject::Attention { text } => {
                let kind = match self.panel.controls.iter().find(|c| c.name == "kind").map(|c| &c.value) {
                    Some(Setting::Choice(kind)) => Some(AttentionKind::parse(kind)?),
                    _ => None,
                };
                let maps = AttentionMaps::of(s.model_or_err()?, s.tokenizer_or_err()?, text, kind)?;
                let layer = (self.number("layer") as i64).min(maps.layers() - 1);
                let head = (self.number("head") as i64).min(maps.heads() - 1);
                let which = maps.kind.map_or(String::new(), |k| format!("{} ", k.name()));
                if self.flag("grid") {
                    let figure = maps.grid_figure(&[layer], &(0..maps.heads()).collect::<Vec<_>>())?;
                    Bundle::text(format!("{which}attention of layer {layer}, all {} heads, over {:?}", maps.heads(), maps.tokens)).figure(&figure)
                } else {
                    Bundle::text(format!("{which}attention of layer {layer}, head {head}, over {:?}", maps.tokens)).figure(&maps.head_figure(layer, head)?)
                }
            }
            Subject::Train { origin, tries, .. } => {
                let trainer =
                    s.trainer.as_ref().ok_or_else(|| usage("the training this explorer started from is gone (a new model or data set replaced it)"))?;
                let runs = explorer_runs(trainer, origin, tries);
                let lines: Vec<String> = runs
                    .iter()
                    .map(|(n, h)| format!("{n}: {} steps, last loss {}", h.steps.len(), h.steps.last().map_or("—".into(), |r| format!("{:.4}", r.loss))))
                    .collect();
                training_picture(&runs, &if lines.is_empty() { "no steps yet: press train".to_string() } else { lines.join("\n") })
            }
        };
        Ok(())
    }

    /// Applies an event: a new value redraws (generate, attention) or waits for a button
    /// (train); buttons run. Returns whether the session changed even though the event
    /// failed (a try interrupted after some steps keeps them, as `%train` does).
    fn apply(&mut self, s: &mut Session, event: PanelEvent, ctx: &mut Ctx) -> (Result<(), CellError>, bool) {
        if self.panel.finished {
            return (Err(usage(format!("{} is finished; run %explore again to explore more", self.panel.title))), false);
        }
        let name = match &event {
            PanelEvent::Set { control, .. } | PanelEvent::Press { control } => control.clone(),
        };
        let Some(index) = self.panel.controls.iter().position(|c| c.name == name) else {
            let known: Vec<&str> = self.panel.controls.iter().map(|c| c.name).collect();
            return (Err(usage(format!("{} has no control `{name}`; it has {}", self.panel.title, known.join(", ")))), false);
        };
        match event {
            PanelEvent::Set { value, .. } => {
                let accepted = match self.panel.controls[index].accept(&value) {
                    Ok(v) => v,
                    Err(e) => return (Err(e), false),
                };
                self.panel.controls[index].value = accepted;
                if matches!(self.subject, Subject::Train { .. }) {
                    return (Ok(()), false);
                }
                (self.draw(s), false)
            }
            PanelEvent::Press { .. } if self.panel.controls[index].kind != ControlKind::Button => {
                (Err(usage(format!("control `{name}` is not a button; set its value instead"))), false)
            }
            PanelEvent::Press { .. } => self.press(&name, s, ctx),
        }
    }

    fn press(&mut self, button: &str, s: &mut Session, ctx: &mut Ctx) -> (Result<(), CellError>, bool) {
        let Subject::Train { base, origin, tries } = self.subject.clone() else { unreachable!("only train explorers have buttons") };
        match button {
            "train" => self.train_try(s, &base, &origin, tries, ctx),
            "rewind" => {
                let result = s.trainer_or_err().and_then(|t| t.return_to(&base).map_err(CellError::from));
                if result.is_ok() {
                    s.hp = s.hparams().clone();
                }
                let drawn = result.and_then(|()| self.draw(s));
                let step = s.glance().step;
                (drawn.map(|()| ctx.out(format!("back at snapshot {base}: step {step} on {origin}"))), false)
            }
            "keep" => {
                let (branch, step) = match s.trainer_or_err() {
                    Ok(t) => (t.branch().to_string(), t.step_count()),
                    Err(e) => return (Err(e), false),
                };
                self.panel.finished = true;
                ctx.out(format!("kept branch {branch} at step {step}; `%runs` lists every try"));
                (Ok(()), false)
            }
            other => unreachable!("no button {other}"),
        }
    }

    /// Forks a new try from `base` with the controls' hyperparameters and trains it,
    /// redrawing the loss plot as it goes.
    fn train_try(&mut self, s: &mut Session, base: &str, origin: &str, mut tries: Vec<String>, ctx: &mut Ctx) -> (Result<(), CellError>, bool) {
        let changes: Vec<(String, String)> = vec![
            ("lr".into(), format!("{:e}", self.number("lr"))),
            ("warmup".into(), (self.number("warmup") as i64).to_string()),
            ("batch".into(), (self.number("batch") as i64).to_string()),
            ("weight_decay".into(), self.number("weight_decay").to_string()),
            (
                "schedule".into(),
                match self.value("schedule") {
                    Setting::Choice(c) => c.clone(),
                    other => unreachable!("schedule holds {other:?}"),
                },
            ),
        ];
        let steps = self.number("steps") as u64;
        let trainer = match s.trainer_or_err() {
            Ok(t) => t,
            Err(e) => return (Err(e), false),
        };
        let taken: Vec<String> = trainer.runs().iter().map(|(n, _)| n.to_string()).collect();
        let name = (1..).map(|i| format!("try-{i}")).find(|n| !taken.contains(n)).expect("an unused name");
        if let Err(e) = trainer.fork(&name, Some(base), &changes) {
            return (Err(e.into()), false);
        }
        tries.push(name.clone());
        self.subject = Subject::Train { base: base.to_string(), origin: origin.to_string(), tries: tries.clone() };
        // The plot is redrawn as the try trains, over copies of the other runs' curves:
        // the trainer is busy training the current one.
        let others: Vec<(String, History)> =
            explorer_runs(trainer, origin, &tries).into_iter().filter(|(n, _)| *n != name).map(|(n, h)| (n.to_string(), h.clone())).collect();
        let mut progress = self.panel.clone();
        let mut last_drawn = Instant::now();
        let report = trainer.train(Stop::Steps(steps), &mut |record, history| {
            if last_drawn.elapsed() >= REDRAW_EVERY {
                let mut runs: Vec<(&str, &History)> = others.iter().map(|(n, h)| (n.as_str(), h)).collect();
                runs.push((&name, history));
                progress.picture = training_picture(&runs, &format!("{name}: step {} of this try, loss {:.4}", history.steps.len(), record.loss));
                (ctx.sink)(Output::Panel(progress.clone()));
                last_drawn = Instant::now();
            }
        });
        s.hp = s.hparams().clone();
        let drawn = self.draw(s);
        let step = s.glance().step;
        let result = match report {
            Err(e) => Err(e.into()),
            Ok(r) => match r.halted {
                Some(Halt::Interrupted) => Err(CellError {
                    name: "KeyboardInterrupt".into(),
                    message: format!("{name} was interrupted after {} of its {steps} steps and keeps them; `rewind` goes back to {base}", r.steps),
                }),
                Some(Halt::NonFinite(message)) => Err(CellError { name: "NonFiniteError".into(), message }),
                None => {
                    ctx.out(format!("{name}: {steps} steps from snapshot {base}, now at step {step} ({})", crate::session::format::pairs(&changes)));
                    drawn
                }
            },
        };
        (result, true)
    }
}

/// The branch a train explorer started from (when it has steps) and its tries.
fn explorer_runs<'t>(trainer: &'t Trainer, origin: &str, tries: &[String]) -> Vec<(&'t str, &'t History)> {
    trainer.runs().into_iter().filter(|(n, h)| (*n == origin && !h.steps.is_empty()) || tries.iter().any(|t| t == n)).collect()
}

/// The loss plot of `runs` under a line of text.
fn training_picture(runs: &[(&str, &History)], text: &str) -> Bundle {
    let bundle = Bundle::text(text);
    match loss_figure(runs, 0.6, false) {
        Ok(figure) if !runs.is_empty() => bundle.figure(&figure),
        _ => bundle,
    }
}

impl Session {
    /// Opens an explorer: draws its picture, shows the panel, keeps it for events.
    pub(crate) fn open_panel(&mut self, mut explorer: Explorer, ctx: &mut Ctx) -> Result<Panel, CellError> {
        explorer.draw(self)?;
        let panel = explorer.panel.clone();
        if self.panels.len() >= MAX_PANELS {
            self.panels.remove(0);
        }
        self.panels.push(explorer);
        (ctx.sink)(Output::Panel(panel.clone()));
        Ok(panel)
    }

    /// Runs what a front end's control asks of panel `panel`, like a cell: under the
    /// interrupt flag and [`interrupt::contain`]. The panel is shown again afterwards,
    /// its new state on success and its old one (the values it had) on failure.
    pub fn panel_event(&mut self, panel: &str, event: PanelEvent, sink: &mut dyn FnMut(Output)) -> Result<(), CellError> {
        let _scope = interrupt::Scope::enter(&self.cancel);
        let mut ctx = Ctx { sink, declared: None };
        let result = interrupt::contain("a control of %explore", || {
            let Some(index) = self.panels.iter().position(|e| e.panel.id == panel) else {
                return Err(usage(format!(
                    "no open explorer `{panel}`: it was closed (only the latest {MAX_PANELS} stay open) or never opened; run %explore again"
                )));
            };
            let mut changed = self.panels[index].clone();
            let (result, kept_anyway) = changed.apply(self, event, &mut ctx);
            let shown = if result.is_ok() || kept_anyway { changed } else { self.panels[index].clone() };
            (ctx.sink)(Output::Panel(shown.panel.clone()));
            if let Some(slot) = self.panels.iter_mut().find(|e| e.panel.id == panel) {
                *slot = shown;
            }
            result
        });
        self.cancel.store(false, std::sync::atomic::Ordering::SeqCst);
        result
    }

    /// The open explorers' panels, oldest first.
    pub fn panels(&self) -> Vec<&Panel> {
        self.panels.iter().map(|e| &e.panel).collect()
    }
}
