//! Jupyter widgets for the session's explorer panels: each panel becomes ipywidgets 8's
//! models (widget protocol 2.1.0: `@jupyter-widgets/controls` 2.0.0, `base` 2.0.0,
//! `output` 1.0.0), opened as comms with target `jupyter.widget` and shown with one
//! `application/vnd.jupyter.widget-view+json` display, as ipykernel does it. Front ends'
//! `update`s are echoed (`echo_update`) and become the session's
//! [`PanelEvent`]s; buttons' `click`s too; `request_state` is answered with the whole
//! state. The session speaks only of controls and values; this module knows the wire.
//!
//! A panel is a `VBox`: its title, one widget per control (sliders, a dropdown, a
//! checkbox) with the buttons in an `HBox`, the picture (an `Image`, its PNG sent as a
//! binary buffer, or an `HTML` text), and an `Output` that holds what the last event
//! said (its error, for one). Every model comes with its `LayoutModel` and style model.

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tchlab::session::output::{escape_html, Bundle, CellError, Output, Stream};
use tchlab::session::panel::{Control, ControlKind, Panel, PanelEvent, Setting};

/// The comm target of widget models.
pub const TARGET: &str = "jupyter.widget";
/// The comm target a widget manager opens to ask for every model's state at once (on a
/// page reload, say).
const CONTROL_TARGET: &str = "jupyter.widget.control";
/// The widget protocol these messages follow.
const PROTOCOL_VERSION: &str = "2.1.0";
/// The MIME type of a widget's view in a display.
const VIEW_MIME: &str = "application/vnd.jupyter.widget-view+json";
/// Panels whose widgets stay open; beyond this the oldest panel's comms are closed.
const MAX_PANELS: usize = 64;
/// What a display of a panel says where its controls cannot be drawn.
const NO_CONTROLS: &str = "(the controls of %explore need a front end with Jupyter widgets: JupyterLab, Notebook 7 or VS Code)";

/// Each model's default state, as ipywidgets 8.1 gives it (`python/widget_defaults.py`).
static DEFAULTS: LazyLock<Map<String, Value>> =
    LazyLock::new(|| serde_json::from_str(include_str!("widget_defaults.json")).expect("widget_defaults.json is a JSON object"));

/// An IOPub message for the worker to send, in reply to the request it handles.
pub struct Outgoing {
    /// `comm_open`, `comm_msg`, `comm_close`, `display_data`, `update_display_data`.
    pub msg_type: &'static str,
    /// Its content.
    pub content: Value,
    /// Its metadata (the protocol version on comm messages).
    pub metadata: Value,
    /// Binary buffers (an image's bytes).
    pub buffers: Vec<Bytes>,
}

impl Outgoing {
    fn comm(msg_type: &'static str, content: Value, buffers: Vec<Bytes>) -> Self {
        Outgoing { msg_type, content, metadata: json!({ "version": PROTOCOL_VERSION }), buffers }
    }
}

/// What a control's widget is for.
#[derive(Clone)]
struct Bound {
    panel: String,
    control: Control,
}

/// One widget model behind a comm.
struct Model {
    state: Map<String, Value>,
    /// The `value` of an `Image`, sent as a buffer.
    image: Option<Bytes>,
    /// Set for the widgets of controls.
    bound: Option<Bound>,
}

/// The comms of one panel's widgets.
struct PanelWidgets {
    /// Every comm of the panel, in the order they were opened.
    comms: Vec<String>,
    root: String,
    controls: Vec<(String, &'static str)>,
    image: String,
    text: String,
    messages: String,
    display_id: String,
    picture: Bundle,
}

/// What a message from the front end asks.
#[derive(Default)]
pub struct Incoming {
    /// Messages to send at once (an `echo_update`, a state, a `comm_close`).
    pub replies: Vec<Outgoing>,
    /// An event for the session: the panel and what happened.
    pub event: Option<(String, PanelEvent)>,
    /// Why a value was refused before it reached the session, and the panel.
    pub refused: Option<(String, String)>,
}

/// Every open widget model, by comm id.
#[derive(Default)]
pub struct Widgets {
    models: HashMap<String, Model>,
    panels: HashMap<String, PanelWidgets>,
    /// Panel ids, oldest first.
    order: Vec<String>,
    /// Comms the front end opened with [`CONTROL_TARGET`].
    control_comms: std::collections::HashSet<String>,
}

fn comm_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn reference(id: &str) -> Value {
    Value::String(format!("IPY_MODEL_{id}"))
}

/// A PNG's width in pixels, from its header.
fn png_width(png: &[u8]) -> Option<u32> {
    let width = png.get(16..20)?;
    png.starts_with(b"\x89PNG").then(|| u32::from_be_bytes([width[0], width[1], width[2], width[3]]))
}

/// The state of a control's widget that follows its value.
fn control_state(control: &Control, finished: bool) -> Map<String, Value> {
    let mut state = Map::new();
    match (&control.kind, &control.value) {
        (ControlKind::Choice(options), Setting::Choice(name)) => {
            state.insert("index".into(), json!(options.iter().position(|o| o == name)));
        }
        (ControlKind::Int { .. }, Setting::Number(x)) => {
            state.insert("value".into(), json!(*x as i64));
        }
        (_, Setting::Number(x)) => {
            state.insert("value".into(), json!(x));
        }
        (_, Setting::Flag(on)) => {
            state.insert("value".into(), json!(on));
        }
        _ => {}
    }
    state.insert("disabled".into(), json!(finished));
    state
}

/// The model name, style model name and fixed state of a control's widget.
fn control_model(control: &Control) -> (&'static str, &'static str, Value) {
    match &control.kind {
        ControlKind::Float { min, max, step } => {
            ("FloatSliderModel", "SliderStyleModel", json!({ "min": min, "max": max, "step": step, "readout_format": ".3g", "continuous_update": false }))
        }
        ControlKind::LogFloat { min, max } => (
            "FloatLogSliderModel",
            "SliderStyleModel",
            json!({ "base": 10.0, "min": min.log10(), "max": max.log10(), "step": 0.1, "continuous_update": false }),
        ),
        ControlKind::Int { min, max, step } => {
            ("IntSliderModel", "SliderStyleModel", json!({ "min": min, "max": max, "step": step, "continuous_update": false }))
        }
        ControlKind::Choice(options) => ("DropdownModel", "DescriptionStyleModel", json!({ "_options_labels": options })),
        ControlKind::Toggle => ("CheckboxModel", "CheckboxStyleModel", json!({ "indent": false })),
        ControlKind::Button => ("ButtonModel", "ButtonStyleModel", json!({})),
    }
}

/// A panel's picture as the front end shows it where widgets are not drawn.
fn fallback(panel: &Panel, model_id: &str) -> Value {
    let mut data = Map::new();
    data.insert("text/plain".into(), json!(format!("{}\n{}\n{NO_CONTROLS}", panel.title, panel.picture.plain())));
    if let Some(png) = panel.picture.0.get("image/png") {
        data.insert("image/png".into(), png.clone());
    } else {
        let html = panel
            .picture
            .0
            .get("text/html")
            .and_then(Value::as_str)
            .map_or_else(|| format!("<pre>{}</pre>", escape_html(panel.picture.plain())), str::to_string);
        data.insert("text/html".into(), json!(format!("{html}<p><i>{}</i></p>", escape_html(NO_CONTROLS))));
    }
    data.insert(VIEW_MIME.into(), json!({ "version_major": 2, "version_minor": 0, "model_id": model_id }));
    Value::Object(data)
}

/// The text under a figure, or the text itself, as HTML.
fn text_html(picture: &Bundle) -> String {
    match picture.0.get("text/html").and_then(Value::as_str) {
        Some(html) if !picture.0.contains_key("image/png") => html.to_string(),
        _ => format!("<pre style='white-space:pre-wrap;margin:0'>{}</pre>", escape_html(picture.plain())),
    }
}

/// A session output as an entry of an `Output` widget's `outputs` (nbformat's form).
pub fn nbformat_output(output: &Output) -> Option<Value> {
    match output {
        Output::Stream { stream, text } => {
            Some(json!({ "output_type": "stream", "name": if *stream == Stream::Stderr { "stderr" } else { "stdout" }, "text": text }))
        }
        Output::Display { bundle, .. } | Output::Update { bundle, .. } | Output::Result(bundle) => {
            Some(json!({ "output_type": "display_data", "data": crate::worker::data(bundle), "metadata": {} }))
        }
        Output::Page(text) => Some(json!({ "output_type": "stream", "name": "stdout", "text": text })),
        Output::Panel(_) | Output::Clear { .. } => None,
    }
}

/// An error as an `Output` widget shows it.
pub fn nbformat_error(error: &CellError) -> Value {
    json!({ "output_type": "error", "ename": error.name, "evalue": error.message, "traceback": [format!("\x1b[0;31m{}\x1b[0m: {}", error.name, error.message)] })
}

impl Widgets {
    /// Opens a model: its layout, its style (if any), then itself.
    fn open(&mut self, name: &str, style: Option<&str>, fields: Value, out: &mut Vec<Outgoing>, comms: &mut Vec<String>) -> String {
        let mut state = DEFAULTS[name].as_object().expect("a model's defaults").clone();
        if state.contains_key("layout") {
            let layout = self.open("LayoutModel", None, json!({}), out, comms);
            state.insert("layout".into(), reference(&layout));
        }
        if let Some(style) = style {
            let style = self.open(style, None, json!({ "description_width": "initial" }), out, comms);
            state.insert("style".into(), reference(&style));
        }
        state.extend(fields.as_object().cloned().unwrap_or_default());
        if name.ends_with("StyleModel") {
            state.retain(|k, _| DEFAULTS[name].get(k).is_some());
        }
        let id = comm_id();
        out.push(Outgoing::comm(
            "comm_open",
            json!({ "comm_id": id, "target_name": TARGET, "target_module": null, "data": { "state": state, "buffer_paths": [] } }),
            vec![],
        ));
        comms.push(id.clone());
        self.models.insert(id.clone(), Model { state, image: None, bound: None });
        id
    }

    /// The messages that show `panel`: every model and the display the first time,
    /// state updates (and the display's fallback) after that.
    pub fn show(&mut self, panel: &Panel) -> Vec<Outgoing> {
        if self.panels.contains_key(&panel.id) {
            return self.redraw(panel);
        }
        let mut out = vec![];
        if self.order.len() >= MAX_PANELS {
            let oldest = self.order.remove(0);
            out.extend(self.close_panel(&oldest));
        }
        let mut comms = vec![];
        let title = self.open("HTMLModel", Some("HTMLStyleModel"), json!({ "value": format!("<b>{}</b>", escape_html(&panel.title)) }), &mut out, &mut comms);
        let mut sliders = vec![title];
        let mut buttons = vec![];
        let mut controls = vec![];
        for control in &panel.controls {
            let (name, style, mut fields) = control_model(control);
            fields.as_object_mut().expect("object").extend(control_state(control, panel.finished));
            fields["description"] = json!(control.label);
            let id = self.open(name, Some(style), fields, &mut out, &mut comms);
            self.models.get_mut(&id).expect("just opened").bound = Some(Bound { panel: panel.id.clone(), control: control.clone() });
            controls.push((id.clone(), control.name));
            if control.kind == ControlKind::Button {
                buttons.push(id)
            } else {
                sliders.push(id)
            }
        }
        if !buttons.is_empty() {
            let row = self.open("HBoxModel", None, json!({ "children": buttons.iter().map(|b| reference(b)).collect::<Vec<_>>() }), &mut out, &mut comms);
            sliders.push(row);
        }
        let image = self.open("ImageModel", None, json!({ "format": "png" }), &mut out, &mut comms);
        let text = self.open("HTMLModel", Some("HTMLStyleModel"), json!({}), &mut out, &mut comms);
        let messages = self.open("OutputModel", None, json!({}), &mut out, &mut comms);
        sliders.extend([image.clone(), text.clone(), messages.clone()]);
        let root = self.open("VBoxModel", None, json!({ "children": sliders.iter().map(|c| reference(c)).collect::<Vec<_>>() }), &mut out, &mut comms);
        let display_id = format!("{}-{}", panel.id, comm_id());
        self.panels.insert(
            panel.id.clone(),
            PanelWidgets { comms, root: root.clone(), controls, image, text, messages, display_id: display_id.clone(), picture: Bundle::default() },
        );
        self.order.push(panel.id.clone());
        // The picture goes in as an update, as every later one does.
        out.extend(self.redraw(panel).into_iter().filter(|m| m.msg_type == "comm_msg"));
        out.push(Outgoing {
            msg_type: "display_data",
            content: json!({ "data": fallback(panel, &root), "metadata": {}, "transient": { "display_id": display_id } }),
            metadata: json!({}),
            buffers: vec![],
        });
        out
    }

    /// Sends the state that changed: controls' values, the picture, the display's fallback.
    fn redraw(&mut self, panel: &Panel) -> Vec<Outgoing> {
        let mut out = vec![];
        let Some(widgets) = self.panels.get(&panel.id) else { return out };
        let (root, image, text, display_id) = (widgets.root.clone(), widgets.image.clone(), widgets.text.clone(), widgets.display_id.clone());
        let controls = widgets.controls.clone();
        let picture_changed = widgets.picture != panel.picture;
        for (id, name) in controls {
            let Some(control) = panel.controls.iter().find(|c| c.name == name) else { continue };
            out.extend(self.update(&id, control_state(control, panel.finished), None));
            if let Some(bound) = self.models.get_mut(&id).and_then(|m| m.bound.as_mut()) {
                bound.control = control.clone();
            }
        }
        if picture_changed {
            let png = panel.picture.png();
            let width = png.as_deref().and_then(png_width).map_or(String::new(), |w| format!("{}px", w / 2));
            let display = if png.is_some() { Value::Null } else { json!("none") };
            if let Some(layout) =
                self.models.get(&image).and_then(|m| m.state["layout"].as_str()).and_then(|r| r.strip_prefix("IPY_MODEL_")).map(str::to_string)
            {
                out.extend(self.update(&layout, Map::from_iter([("display".to_string(), display)]), None));
            }
            out.extend(self.update(&image, Map::from_iter([("width".to_string(), json!(width))]), Some(Bytes::from(png.unwrap_or_default()))));
            out.extend(self.update(&text, Map::from_iter([("value".to_string(), json!(text_html(&panel.picture)))]), None));
            out.push(Outgoing {
                msg_type: "update_display_data",
                content: json!({ "data": fallback(panel, &root), "metadata": {}, "transient": { "display_id": display_id } }),
                metadata: json!({}),
                buffers: vec![],
            });
            self.panels.get_mut(&panel.id).expect("checked").picture = panel.picture.clone();
        }
        out
    }

    /// An `update` of the keys of `changes` that differ from the model's state (and
    /// of its image), or nothing.
    fn update(&mut self, id: &str, changes: Map<String, Value>, image: Option<Bytes>) -> Option<Outgoing> {
        let model = self.models.get_mut(id)?;
        let state: Map<String, Value> = changes.into_iter().filter(|(k, v)| model.state.get(k) != Some(v)).collect();
        model.state.extend(state.clone());
        let mut buffers = vec![];
        let mut paths: Vec<Value> = vec![];
        if let Some(bytes) = image.filter(|b| model.image.as_ref() != Some(b)) {
            model.image = Some(bytes.clone());
            buffers.push(bytes);
            paths.push(json!(["value"]));
        }
        if state.is_empty() && buffers.is_empty() {
            return None;
        }
        Some(Outgoing::comm("comm_msg", json!({ "comm_id": id, "data": { "method": "update", "state": state, "buffer_paths": paths } }), buffers))
    }

    /// What the last event of `panel` said, in its `Output` widget (replacing the last).
    pub fn messages(&mut self, panel: &str, outputs: Vec<Value>) -> Vec<Outgoing> {
        let Some(id) = self.panels.get(panel).map(|p| p.messages.clone()) else { return vec![] };
        self.update(&id, Map::from_iter([("outputs".to_string(), Value::Array(outputs))]), None).into_iter().collect()
    }

    fn close_panel(&mut self, panel: &str) -> Vec<Outgoing> {
        let Some(widgets) = self.panels.remove(panel) else { return vec![] };
        self.order.retain(|p| p != panel);
        widgets
            .comms
            .iter()
            .filter(|id| self.models.remove(*id).is_some())
            .map(|id| Outgoing::comm("comm_close", json!({ "comm_id": id, "data": {} }), vec![]))
            .collect()
    }

    /// `update_states` on a control comm: every model's state, as ipywidgets sends it,
    /// images as buffers at `[model id, "state", "value"]`.
    fn all_states(&self, control: &str) -> Outgoing {
        let mut states = Map::new();
        let (mut paths, mut buffers) = (vec![], vec![]);
        for (id, model) in &self.models {
            let field = |k: &str| model.state.get(k).cloned().unwrap_or(Value::Null);
            states.insert(
                id.clone(),
                json!({ "model_name": field("_model_name"), "model_module": field("_model_module"), "model_module_version": field("_model_module_version"), "state": model.state }),
            );
            if let Some(image) = &model.image {
                paths.push(json!([id, "state", "value"]));
                buffers.push(image.clone());
            }
        }
        Outgoing::comm("comm_msg", json!({ "comm_id": control, "data": { "method": "update_states", "states": states, "buffer_paths": paths } }), buffers)
    }

    /// `comm_info_reply`'s comms: every open model, or those of `target`.
    pub fn comm_info(&self, target: Option<&str>) -> Value {
        let comms: Map<String, Value> =
            if target.is_none_or(|t| t == TARGET) { self.models.keys().map(|id| (id.clone(), json!({ "target_name": TARGET }))).collect() } else { Map::new() };
        json!({ "status": "ok", "comms": comms })
    }

    /// Handles `comm_open`, `comm_msg` or `comm_close` from the front end.
    pub fn receive(&mut self, msg_type: &str, content: &Value) -> Incoming {
        let mut incoming = Incoming::default();
        let id = content["comm_id"].as_str().unwrap_or("").to_string();
        match msg_type {
            "comm_open" if content["target_name"] == CONTROL_TARGET && !id.is_empty() && self.control_comms.len() < MAX_PANELS => {
                self.control_comms.insert(id);
            }
            // The kernel opens every widget; another comm the front end opens has no
            // target here, and is closed as ipykernel closes it.
            "comm_open" => incoming.replies.push(Outgoing::comm("comm_close", json!({ "comm_id": id, "data": {} }), vec![])),
            "comm_msg" if self.control_comms.contains(&id) => {
                if content["data"]["method"] == "request_states" {
                    incoming.replies.push(self.all_states(&id));
                }
            }
            "comm_close" if self.control_comms.remove(&id) => {}
            "comm_close" => {
                // Closing a panel's root closes the rest of it; any other model goes alone.
                if let Some(panel) = self.panels.iter().find(|(_, w)| w.root == id).map(|(p, _)| p.clone()) {
                    incoming.replies.extend(self.close_panel(&panel).into_iter().filter(|m| m.content["comm_id"] != json!(id)));
                }
                self.models.remove(&id);
            }
            "comm_msg" => {
                let data = &content["data"];
                let Some(model) = self.models.get_mut(&id) else { return incoming };
                match data["method"].as_str() {
                    Some("update") => {
                        let Some(state) = data["state"].as_object() else { return incoming };
                        // As ipywidgets: keys the model does not have are ignored, the rest echoed.
                        let known: Map<String, Value> =
                            state.iter().filter(|(k, _)| model.state.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
                        if known.is_empty() {
                            return incoming;
                        }
                        incoming.replies.push(Outgoing::comm(
                            "comm_msg",
                            json!({ "comm_id": id, "data": { "method": "echo_update", "state": known, "buffer_paths": [] } }),
                            vec![],
                        ));
                        let Some(bound) = model.bound.clone() else {
                            model.state.extend(known);
                            return incoming;
                        };
                        let key = if matches!(bound.control.kind, ControlKind::Choice(_)) { "index" } else { "value" };
                        let value = known.get(key).cloned();
                        model.state.extend(known.into_iter().filter(|(k, _)| k != key));
                        if let Some(value) = value {
                            match setting(&bound.control, &value) {
                                Ok(setting) => {
                                    model.state.insert(key.into(), value);
                                    incoming.event = Some((bound.panel, PanelEvent::Set { control: bound.control.name.to_string(), value: setting }));
                                }
                                Err(why) => {
                                    // The front end shows the value it sent until told otherwise.
                                    model.state.insert(key.into(), value);
                                    incoming.replies.extend(self.update(&id, control_state(&bound.control, false), None));
                                    incoming.refused = Some((bound.panel, why));
                                }
                            }
                        }
                    }
                    Some("request_state") => {
                        let state = model.state.clone();
                        let (paths, buffers) = match &model.image {
                            Some(bytes) => (json!([["value"]]), vec![bytes.clone()]),
                            None => (json!([]), vec![]),
                        };
                        incoming.replies.push(Outgoing::comm(
                            "comm_msg",
                            json!({ "comm_id": id, "data": { "method": "update", "state": state, "buffer_paths": paths } }),
                            buffers,
                        ));
                    }
                    Some("custom") if data["content"]["event"] == "click" => {
                        if let Some(bound) = model.bound.as_ref().filter(|b| b.control.kind == ControlKind::Button) {
                            incoming.event = Some((bound.panel.clone(), PanelEvent::Press { control: bound.control.name.to_string() }));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        incoming
    }
}

/// A widget's value as the setting of its control, or why it is not one.
fn setting(control: &Control, value: &Value) -> Result<Setting, String> {
    let refuse = || format!("control `{}` cannot take {value} from the front end", control.name);
    match &control.kind {
        ControlKind::Float { .. } | ControlKind::LogFloat { .. } | ControlKind::Int { .. } => value.as_f64().map(Setting::Number).ok_or_else(refuse),
        ControlKind::Toggle => value.as_bool().map(Setting::Flag).ok_or_else(refuse),
        ControlKind::Choice(options) => {
            value.as_u64().and_then(|i| options.get(usize::try_from(i).ok()?)).map(|o| Setting::Choice(o.clone())).ok_or_else(refuse)
        }
        ControlKind::Button => Err(refuse()),
    }
}
