//! The socket `tchlab::live` calls: a private directory (on tmpfs where there is one)
//! holding the socket and the tensor files, and a thread per connection that hands
//! each request line to whoever runs the session and writes back the answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender};

/// A request line and where its answer goes.
pub(crate) type LiveRequest = (String, Sender<String>);

pub(crate) struct LiveSocket {
    dir: PathBuf,
    requests: Receiver<LiveRequest>,
}

impl LiveSocket {
    /// Creates the directory and starts accepting connections.
    pub(crate) fn open() -> std::io::Result<LiveSocket> {
        let base = [std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from), Some(PathBuf::from("/dev/shm"))]
            .into_iter()
            .flatten()
            .find(|d| d.is_dir() && std::fs::metadata(d).is_ok_and(|m| !m.permissions().readonly()))
            .unwrap_or_else(std::env::temp_dir);
        remove_abandoned(&base);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("tchlab-live-{}-{nanos}", std::process::id()));
        // Private from the first moment: created with mode 0700, not chmod-ed afterwards.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let listener = UnixListener::bind(dir.join("socket"))?;
        let (sender, requests) = crossbeam_channel::unbounded();
        std::thread::Builder::new().name("tchlab-live".into()).spawn(move || {
            for stream in listener.incoming().flatten() {
                let sender = sender.clone();
                std::thread::spawn(move || serve(stream, &sender));
            }
        })?;
        Ok(LiveSocket { dir, requests })
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("socket")
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Drops requests a dead cell process left unanswered, so none acts later.
    pub(crate) fn forget_pending(&self) {
        while self.requests.try_recv().is_ok() {}
    }

    pub(crate) fn requests(&self) -> &Receiver<LiveRequest> {
        &self.requests
    }
}

impl Drop for LiveSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the directories of front ends that ended without cleaning up (a kernel
/// shut down by `exit`, a killed REPL): those whose process no longer exists.
fn remove_abandoned(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("tchlab-live-").and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// One connection: one request line in, one answer line out.
fn serve(stream: UnixStream, requests: &Sender<LiveRequest>) {
    let mut line = String::new();
    let Ok(mut writer) = stream.try_clone() else { return };
    if BufReader::new(stream).read_line(&mut line).is_err() || line.trim().is_empty() {
        return;
    }
    let (reply, answer) = crossbeam_channel::bounded(1);
    if requests.send((line, reply)).is_ok() {
        if let Ok(mut answer) = answer.recv() {
            answer.push('\n');
            let _ = writer.write_all(answer.as_bytes());
        }
    }
}
