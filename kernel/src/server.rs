//! The sockets and their loops: shell (requests, one at a time, through the worker),
//! control (interrupt, shutdown, kernel info — answered at once), IOPub (everything
//! the kernel publishes), heartbeat (echo). A bad message is logged and dropped; no
//! loop ends because of one.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jupyter_protocol::ConnectionInfo;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use zeromq::{SocketRecv, SocketSend, ZmqMessage};

use crate::wire::{Message, Signer};
use crate::worker::{self, Job};

fn log(message: impl std::fmt::Display) {
    eprintln!("[tchlab-kernel] {message}");
}

fn to_zmq(frames: Vec<Bytes>) -> ZmqMessage {
    let mut frames = frames.into_iter();
    let mut message = ZmqMessage::from(frames.next().unwrap_or_default());
    for f in frames {
        message.push_back(f);
    }
    message
}

/// Reads the connection file and serves until shutdown.
pub fn run(connection_file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(connection_file).map_err(|e| format!("{}: {e}", connection_file.display()))?;
    let info: ConnectionInfo = serde_json::from_str(&text).map_err(|e| format!("{}: not a Jupyter connection file: {e}", connection_file.display()))?;
    if !info.key.is_empty() && info.signature_scheme != "hmac-sha256" {
        return Err(format!("{}: signature scheme `{}` is not supported; tchlab signs with hmac-sha256", connection_file.display(), info.signature_scheme));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(serve(info))
}

struct Shared {
    signer: Mutex<Signer>,
    session: String,
    iopub: mpsc::UnboundedSender<Message>,
    /// The date of an interrupt that found no cell, and when it came: control and shell
    /// are separate sockets, so an interrupt sent just after an execute request can
    /// arrive first, and is then kept for that request (see [`interrupt_overtook`]).
    idle_interrupt: Mutex<Option<(String, Instant)>>,
}

/// How long an interrupt that found no cell waits for the execute request it overtook.
const OVERTAKE_WINDOW: Duration = Duration::from_secs(2);

/// Whether an interrupt that came while idle was sent after `execute` (by the dates
/// the client wrote in both headers), and so is for it.
fn interrupt_overtook(shared: &Shared, execute: &Message) -> bool {
    let pending = shared.idle_interrupt.lock().unwrap_or_else(|e| e.into_inner()).take();
    let sent = execute.header["date"].as_str().unwrap_or("");
    pending.is_some_and(|(interrupt_date, at)| at.elapsed() < OVERTAKE_WINDOW && !sent.is_empty() && sent <= interrupt_date.as_str())
}

impl Shared {
    fn parse(&self, frames: ZmqMessage, channel: &str) -> Option<Message> {
        match self.signer.lock().expect("not poisoned").parse(frames.into_vec()) {
            Ok(m) => Some(m),
            Err(e) => {
                log(format!("dropped a message on {channel}: {e}"));
                None
            }
        }
    }

    fn frames(&self, message: &Message) -> ZmqMessage {
        to_zmq(self.signer.lock().expect("not poisoned").frames(message))
    }

    fn status(&self, parent: &Message, state: &str) {
        let _ = self.iopub.send(Message::new(
            "status",
            &parent.header,
            json!({ "execution_state": state }),
            &self.session,
            vec![Bytes::from_static(b"kernel.tchlab.status")],
        ));
    }
}

/// The `iopub_welcome` for a subscription frame (`\x01` and the topic); `None` for an
/// unsubscription or anything else.
fn welcome(frames: &ZmqMessage, session: &str) -> Option<Message> {
    let frame = frames.get(0)?;
    let topic = frame.strip_prefix(&[1u8])?;
    let topic = std::str::from_utf8(topic).ok()?;
    let identities = if topic.is_empty() { vec![] } else { vec![Bytes::copy_from_slice(topic.as_bytes())] };
    Some(Message::new("iopub_welcome", &json!({}), json!({ "subscription": topic }), session, identities))
}

fn kernel_info() -> Value {
    json!({
        "status": "ok",
        "protocol_version": "5.3",
        "implementation": "tchlab",
        "implementation_version": env!("CARGO_PKG_VERSION"),
        "language_info": {
            "name": "rust",
            "version": "",
            "mimetype": "text/rust",
            "file_extension": ".rs",
            "pygments_lexer": "rust",
            "codemirror_mode": "rust",
        },
        "banner": format!("tchlab {} — transformers in Rust over libtorch. Type %help for the commands.", env!("CARGO_PKG_VERSION")),
        "help_links": [{ "text": "tchlab commands (%help)", "url": "https://github.com/tchlab/tchlab#commands" }],
        "debugger": false,
    })
}

async fn serve(info: ConnectionInfo) -> Result<(), String> {
    let session_id = uuid::Uuid::new_v4().to_string();
    let fail = |what: &str, e: jupyter_zmq_client::RuntimeError| format!("binding the {what} socket: {e}");
    let mut shell = jupyter_zmq_client::create_kernel_shell_connection(&info, &session_id).await.map_err(|e| fail("shell", e))?.socket;
    let mut control = jupyter_zmq_client::create_kernel_control_connection(&info, &session_id).await.map_err(|e| fail("control", e))?.socket;
    let _stdin = jupyter_zmq_client::create_kernel_stdin_connection(&info, &session_id).await.map_err(|e| fail("stdin", e))?;
    // XPUB, as ipykernel's: a subscriber is greeted with `iopub_welcome` (JEP 65), so a
    // client knows when IOPub reaches it instead of waiting for a status that was
    // published before it had subscribed (jupyter_client's `wait_for_ready` asks again
    // after 1 s then).
    let mut iopub_socket = jupyter_zmq_client::create_kernel_iopub_xpub_connection(&info, &session_id).await.map_err(|e| fail("iopub", e))?.socket;
    let mut heartbeat = jupyter_zmq_client::create_kernel_heartbeat_connection(&info).await.map_err(|e| fail("heartbeat", e))?.socket;

    let (iopub, mut outgoing) = mpsc::unbounded_channel::<Message>();
    let shared = Arc::new(Shared { signer: Mutex::new(Signer::new(&info.key)), session: session_id.clone(), iopub, idle_interrupt: Mutex::new(None) });

    let publisher = shared.clone();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                outgoing = outgoing.recv() => match outgoing {
                    Some(message) => message,
                    None => break,
                },
                subscription = iopub_socket.recv() => match subscription.ok().and_then(|frames| welcome(&frames, &publisher.session)) {
                    Some(welcome) => welcome,
                    None => continue,
                },
            };
            if let Err(e) = iopub_socket.send(publisher.frames(&message)).await {
                log(format!("iopub send failed: {e}"));
            }
        }
    });

    tokio::spawn(async move {
        loop {
            match heartbeat.recv().await {
                // The heartbeat echoes whatever it is sent.
                Ok(ping) => {
                    let _ = heartbeat.send(ping).await;
                }
                Err(e) => log(format!("heartbeat: {e}")),
            }
        }
    });

    let lab = tchlab_cells::Lab::new(tchlab::session::Session::new());
    let interrupter = lab.interrupter();
    let shell_interrupter = lab.interrupter();
    let (jobs, job_queue) = std::sync::mpsc::channel::<Job>();
    let worker_iopub = shared.iopub.clone();
    std::thread::Builder::new()
        .name("tchlab-session".into())
        .spawn(move || worker::run(lab, job_queue, worker_iopub, session_id))
        .map_err(|e| e.to_string())?;

    let control_shared = shared.clone();
    tokio::spawn(async move {
        loop {
            let frames = match control.recv().await {
                Ok(f) => f,
                Err(e) => {
                    log(format!("control: {e}"));
                    continue;
                }
            };
            let Some(request) = control_shared.parse(frames, "control") else { continue };
            control_shared.status(&request, "busy");
            let reply = match request.msg_type() {
                "interrupt_request" => {
                    // A command stops at its next check; a Rust cell's process is killed.
                    if !interrupter.interrupt() {
                        let date = request.header["date"].as_str().unwrap_or("").to_string();
                        *control_shared.idle_interrupt.lock().unwrap_or_else(|e| e.into_inner()) = Some((date, Instant::now()));
                    }
                    Some(("interrupt_reply", json!({ "status": "ok" })))
                }
                "kernel_info_request" => Some(("kernel_info_reply", kernel_info())),
                "shutdown_request" => Some(("shutdown_reply", json!({ "status": "ok", "restart": request.content["restart"].as_bool().unwrap_or(false) }))),
                other => {
                    log(format!("ignored {other} on control"));
                    None
                }
            };
            if let Some((msg_type, content)) = reply {
                let _ = control.send(control_shared.frames(&request.reply(msg_type, content, &control_shared.session))).await;
            }
            control_shared.status(&request, "idle");
            if request.msg_type() == "shutdown_request" {
                // Let the reply and the idle status leave before the process ends.
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::process::exit(0);
            }
        }
    });

    loop {
        let frames = match shell.recv().await {
            Ok(f) => f,
            Err(e) => {
                log(format!("shell: {e}"));
                continue;
            }
        };
        let Some(request) = shared.parse(frames, "shell") else { continue };
        if let Some(failed) = handle_shell(&shared, &mut shell, &jobs, &shell_interrupter, &request, false).await {
            if request.content["stop_on_error"].as_bool().unwrap_or(true) {
                // As ipykernel does: executes already queued behind a failed one are
                // aborted — those that arrived before its reply, so drain first.
                while let Ok(Ok(frames)) = tokio::time::timeout(Duration::from_millis(5), shell.recv()).await {
                    if let Some(queued) = shared.parse(frames, "shell") {
                        handle_shell(&shared, &mut shell, &jobs, &shell_interrupter, &queued, true).await;
                    }
                }
            }
            let _ = shell.send(shared.frames(&failed)).await;
            shared.status(&request, "idle");
        }
    }
}

/// Answers one shell request. A failed execute's reply is returned unsent instead, for
/// the caller to abort what is queued behind it first (then send it, and the idle status).
async fn handle_shell(
    shared: &Shared,
    shell: &mut zeromq::RouterSocket,
    jobs: &std::sync::mpsc::Sender<Job>,
    interrupter: &tchlab_cells::Interrupter,
    request: &Message,
    aborting: bool,
) -> Option<Message> {
    let msg_type = request.msg_type().to_string();
    if matches!(msg_type.as_str(), "comm_open" | "comm_msg" | "comm_close") {
        // No reply; busy and idle around it, as ipykernel does.
        shared.status(request, "busy");
        let (done, handled) = oneshot::channel();
        let job = Job::Comm { parent: request.header.clone(), msg_type, content: request.content.clone(), done };
        if jobs.send(job).is_ok() {
            let _ = handled.await;
        }
        shared.status(request, "idle");
        return None;
    }
    let reply_type = match msg_type.strip_suffix("_request") {
        Some(base) => format!("{base}_reply"),
        None => {
            log(format!("ignored {msg_type} on shell"));
            return None;
        }
    };
    shared.status(request, "busy");
    let mut failed = false;
    let content = match msg_type.as_str() {
        "kernel_info_request" => kernel_info(),
        "shutdown_request" => json!({ "status": "ok", "restart": request.content["restart"].as_bool().unwrap_or(false) }),
        "execute_request" if aborting => json!({ "status": "aborted", "execution_count": Value::Null, "user_expressions": {}, "payload": [] }),
        "execute_request" => {
            let (reply, answer) = oneshot::channel();
            let job = Job::Execute {
                parent: request.header.clone(),
                code: request.content["code"].as_str().unwrap_or("").to_string(),
                silent: request.content["silent"].as_bool().unwrap_or(false),
                reply,
            };
            // From here an interrupt is for this cell, even before the session starts it.
            interrupter.cell_arriving();
            if interrupt_overtook(shared, request) {
                interrupter.interrupt();
            }
            let content = if jobs.send(job).is_ok() { answer.await.ok() } else { None };
            let content =
                content.unwrap_or_else(|| json!({ "status": "error", "ename": "KernelError", "evalue": "the session thread has stopped", "traceback": [] }));
            failed = content["status"] == "error";
            content
        }
        "complete_request" | "inspect_request" | "is_complete_request" | "history_request" | "comm_info_request" => {
            let (reply, answer) = oneshot::channel();
            let job = Job::Query { msg_type: msg_type.clone(), content: request.content.clone(), reply };
            let content = if jobs.send(job).is_ok() { answer.await.ok() } else { None };
            content.unwrap_or_else(|| json!({ "status": "error", "ename": "KernelError", "evalue": "the session thread has stopped", "traceback": [] }))
        }
        other => {
            log(format!("no handler for {other}"));
            shared.status(request, "idle");
            return None;
        }
    };
    let reply = request.reply(&reply_type, content, &shared.session);
    if failed {
        return Some(reply);
    }
    let _ = shell.send(shared.frames(&reply)).await;
    shared.status(request, "idle");
    if msg_type == "shutdown_request" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::process::exit(0);
    }
    None
}
