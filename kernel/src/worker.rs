//! The worker thread: it owns the session, runs one job at a time, and sends what the
//! session emits to IOPub as Jupyter messages. Sockets live on the async side, so the
//! control channel and the heartbeat answer while a command runs.

use std::sync::mpsc::Receiver;

use serde_json::{json, Value};
use tchlab::session::output::{Bundle, Output, Stream, ANSI_MIME, HEATMAP_MIME};
use tchlab::session::Completeness;
use tchlab_cells::Lab;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::widgets::{nbformat_error, nbformat_output, Outgoing, Widgets};
use crate::wire::Message;

/// Sends widget messages to IOPub.
fn publish(iopub: &UnboundedSender<Message>, parent: &Value, session: &str, messages: Vec<Outgoing>) {
    for m in messages {
        let mut message = Message::new(m.msg_type, parent, m.content, session, topic(m.msg_type));
        message.metadata = m.metadata;
        message.buffers = m.buffers;
        let _ = iopub.send(message);
    }
}

/// Work for the session.
pub enum Job {
    /// Run a cell.
    Execute {
        /// The request's header (the parent of everything the cell emits).
        parent: Value,
        /// The cell.
        code: String,
        /// `silent`: no execute_input, no execution count, no results.
        silent: bool,
        /// Where the reply content goes.
        reply: oneshot::Sender<Value>,
    },
    /// A widget's message from the front end (`comm_open`, `comm_msg`, `comm_close`):
    /// what it changes runs like a cell.
    Comm {
        /// The message's header (the parent of what it causes).
        parent: Value,
        /// Its type.
        msg_type: String,
        /// Its content.
        content: Value,
        /// Sent when it has been handled.
        done: oneshot::Sender<()>,
    },
    /// Compute a `*_reply` content for a request that only reads the session.
    Query {
        /// The request's type.
        msg_type: String,
        /// Its content.
        content: Value,
        /// Where the reply content goes.
        reply: oneshot::Sender<Value>,
    },
}

/// Runs jobs until the channel closes.
pub fn run(mut lab: Lab, jobs: Receiver<Job>, iopub: UnboundedSender<Message>, kernel_session: String) {
    let mut execution_count: u64 = 0;
    let mut widgets = Widgets::default();
    for job in jobs {
        match job {
            Job::Execute { parent, code, silent, reply } => {
                if !silent {
                    execution_count += 1;
                    let _ = iopub.send(Message::new(
                        "execute_input",
                        &parent,
                        json!({ "code": code, "execution_count": execution_count }),
                        &kernel_session,
                        topic("execute_input"),
                    ));
                }
                let mut payload = vec![];
                let result = lab.run_cell(&code, &mut |output| {
                    if let Output::Panel(panel) = &output {
                        if !silent {
                            publish(&iopub, &parent, &kernel_session, widgets.show(panel));
                        }
                    } else if let Some((msg_type, content)) = to_iopub(output, execution_count, silent, &mut payload) {
                        let _ = iopub.send(Message::new(msg_type, &parent, content, &kernel_session, topic(msg_type)));
                    }
                });
                let content = match result {
                    Ok(()) => json!({ "status": "ok", "execution_count": execution_count, "user_expressions": {}, "payload": payload }),
                    Err(e) => {
                        let traceback: Vec<String> = std::iter::once(format!("\x1b[0;31m{}\x1b[0m: {}", e.name, e.message.lines().next().unwrap_or("")))
                            .chain(e.message.lines().skip(1).map(str::to_string))
                            .collect();
                        let error = json!({ "ename": e.name, "evalue": e.message, "traceback": traceback });
                        let _ = iopub.send(Message::new("error", &parent, error.clone(), &kernel_session, topic("error")));
                        let mut content = json!({ "status": "error", "execution_count": execution_count, "user_expressions": {}, "payload": payload });
                        content.as_object_mut().expect("object").extend(error.as_object().expect("object").clone());
                        content
                    }
                };
                let _ = reply.send(content);
            }
            Job::Comm { parent, msg_type, content, done } => {
                let incoming = widgets.receive(&msg_type, &content);
                publish(&iopub, &parent, &kernel_session, incoming.replies);
                if let Some((panel, why)) = incoming.refused {
                    let error = nbformat_error(&tchlab::session::output::CellError { name: "UsageError".into(), message: why });
                    publish(&iopub, &parent, &kernel_session, widgets.messages(&panel, vec![error]));
                }
                if let Some((panel, event)) = incoming.event {
                    let mut said = vec![];
                    let result = lab.panel_event(&panel, event, &mut |output| match &output {
                        Output::Panel(p) => publish(&iopub, &parent, &kernel_session, widgets.show(p)),
                        other => said.extend(nbformat_output(other)),
                    });
                    if let Err(e) = result {
                        said.push(nbformat_error(&e));
                    }
                    publish(&iopub, &parent, &kernel_session, widgets.messages(&panel, said));
                }
                let _ = done.send(());
            }
            Job::Query { msg_type, content, reply } if msg_type == "comm_info_request" => {
                let _ = reply.send(widgets.comm_info(content["target_name"].as_str()));
            }
            Job::Query { msg_type, content, reply } => {
                let _ = reply.send(query(&mut lab, &msg_type, &content));
            }
        }
    }
}

/// The IOPub topic for a message type.
fn topic(msg_type: &str) -> Vec<bytes::Bytes> {
    vec![bytes::Bytes::from(format!("kernel.tchlab.{msg_type}"))]
}

/// A bundle as a message's `data`: every MIME type but those for terminals (a heatmap's
/// cells, text in colour codes): a notebook has the picture and the HTML.
pub(crate) fn data(bundle: &Bundle) -> Value {
    Value::Object(bundle.0.iter().filter(|(mime, _)| *mime != HEATMAP_MIME && *mime != ANSI_MIME).map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// The IOPub message for a session output; pages go to the reply's payload instead.
fn to_iopub(output: Output, count: u64, silent: bool, payload: &mut Vec<Value>) -> Option<(&'static str, Value)> {
    if silent && !matches!(output, Output::Stream { .. }) {
        return None;
    }
    Some(match output {
        Output::Stream { stream, text } => ("stream", json!({ "name": if stream == Stream::Stderr { "stderr" } else { "stdout" }, "text": text })),
        Output::Display { id, bundle } => {
            let transient = id.map_or_else(|| json!({}), |id| json!({ "display_id": id }));
            ("display_data", json!({ "data": data(&bundle), "metadata": {}, "transient": transient }))
        }
        Output::Update { id, bundle } => ("update_display_data", json!({ "data": data(&bundle), "metadata": {}, "transient": { "display_id": id } })),
        Output::Result(bundle) => ("execute_result", json!({ "execution_count": count, "data": data(&bundle), "metadata": {} })),
        Output::Page(text) => {
            payload.push(json!({ "source": "page", "data": { "text/plain": text }, "start": 0 }));
            return None;
        }
        Output::Clear { wait } => ("clear_output", json!({ "wait": wait })),
        Output::Panel(_) => return None,
    })
}

/// Jupyter counts cursor positions in code points; the session in bytes.
fn byte_offset(code: &str, code_points: usize) -> usize {
    code.char_indices().nth(code_points).map_or(code.len(), |(i, _)| i)
}

fn code_points(code: &str, bytes: usize) -> usize {
    code[..bytes.min(code.len())].chars().count()
}

fn query(lab: &mut Lab, msg_type: &str, content: &Value) -> Value {
    let code = content["code"].as_str().unwrap_or("");
    let cursor = byte_offset(code, content["cursor_pos"].as_u64().map_or(code.chars().count(), |c| c as usize));
    match msg_type {
        "complete_request" => {
            let c = lab.complete(code, cursor);
            json!({ "status": "ok", "matches": c.matches, "cursor_start": code_points(code, c.start), "cursor_end": code_points(code, c.end), "metadata": {} })
        }
        "inspect_request" => match lab.inspect(code, cursor) {
            Some(help) => json!({ "status": "ok", "found": true, "data": { "text/plain": help }, "metadata": {} }),
            None => json!({ "status": "ok", "found": false, "data": {}, "metadata": {} }),
        },
        "is_complete_request" => match lab.is_complete(code) {
            Completeness::Complete => json!({ "status": "complete" }),
            Completeness::Incomplete => json!({ "status": "incomplete", "indent": "    " }),
            Completeness::Invalid => json!({ "status": "invalid" }),
        },
        "history_request" => json!({ "status": "ok", "history": history(lab.session().inputs(), content) }),
        _ => json!({ "status": "error", "ename": "UnknownRequest", "evalue": msg_type, "traceback": [] }),
    }
}

/// `[session, line, input]` entries for a history request: `tail`, `range` or `search`.
/// Fields are read leniently: jupyter_client's search requests omit `unique` and `n`.
fn history(inputs: &[String], content: &Value) -> Vec<Value> {
    let numbered: Vec<(usize, &String)> = inputs.iter().enumerate().map(|(i, s)| (i + 1, s)).collect();
    let n = content["n"].as_u64().map(|n| n as usize);
    let chosen: Vec<(usize, &String)> = match content["hist_access_type"].as_str().unwrap_or("tail") {
        "range" => {
            let start = content["start"].as_u64().unwrap_or(1) as usize;
            let stop = content["stop"].as_u64().map_or(usize::MAX, |s| s as usize);
            numbered.into_iter().filter(|(i, _)| *i >= start && *i < stop).collect()
        }
        "search" => {
            let pattern = content["pattern"].as_str().unwrap_or("*");
            let mut found: Vec<(usize, &String)> = numbered.into_iter().filter(|(_, s)| glob(pattern, s)).collect();
            if content["unique"].as_bool().unwrap_or(false) {
                let mut seen = std::collections::HashSet::new();
                found.reverse();
                found.retain(|(_, s)| seen.insert(s.as_str()));
                found.reverse();
            }
            let keep = n.unwrap_or(found.len());
            found.split_off(found.len().saturating_sub(keep))
        }
        _ => {
            let keep = n.unwrap_or(10);
            numbered[numbered.len().saturating_sub(keep)..].to_vec()
        }
    };
    // With `output`, each entry's input comes paired with its output (not kept: null).
    let output = content["output"].as_bool().unwrap_or(false);
    chosen.into_iter().map(|(i, s)| if output { json!([0, i, [s, null]]) } else { json!([0, i, s]) }).collect()
}

/// Shell-style glob: `*` any run, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_serves_tail_range_and_lenient_search() {
        let inputs: Vec<String> = ["%echo a", "%step", "%echo b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(history(&inputs, &json!({"hist_access_type": "tail", "n": 2})), vec![json!([0, 2, "%step"]), json!([0, 3, "%echo b"])]);
        assert_eq!(history(&inputs, &json!({"hist_access_type": "range", "start": 1, "stop": 2})).len(), 1);
        assert_eq!(history(&inputs, &json!({"hist_access_type": "search", "pattern": "%ech*"})).len(), 2);
        assert!(glob("a?c*", "abcdef") && !glob("a?c", "abcd"));
    }

    #[test]
    fn cursor_positions_convert_between_code_points_and_bytes() {
        let code = "%echo é%tr";
        assert_eq!(byte_offset(code, 7), 8);
        assert_eq!(code_points(code, 8), 7);
    }
}
