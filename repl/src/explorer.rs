//! An explorer's controls in the terminal: the panel is drawn on the alternate screen,
//! arrows choose (↑ ↓) and change (← →) a control, Enter runs (the changed values, or
//! the chosen button), Esc or q leaves, and the last picture stays in the scrollback.
//! Ctrl-C still interrupts what a control runs (the terminal keeps its signals).

use std::io::Write;

use tchlab::session::output::{CellError, Output};
use tchlab::session::panel::{Control, ControlKind, Panel, PanelEvent, Setting};
use tchlab_cells::Lab;

use crate::render::{Images, Renderer};

/// A key that means something here.
#[derive(Debug, PartialEq)]
enum Key {
    Up,
    Down,
    Left,
    Right,
    Enter,
    Leave,
    Other,
}

/// The terminal without line buffering or echo, restored when dropped.
struct RawInput {
    saved: libc::termios,
}

impl RawInput {
    fn enter() -> Option<RawInput> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios they fill and read.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            (libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) == 0).then_some(RawInput { saved })
        }
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

/// Whether a byte waits on stdin within `ms` milliseconds.
fn byte_within(ms: i32) -> bool {
    let mut fd = libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, owned here.
    unsafe { libc::poll(&mut fd, 1, ms) > 0 }
}

/// One byte from the terminal, unbuffered: [`byte_within`] asks the descriptor what
/// waits, so nothing may sit in a reader's buffer.
fn read_byte() -> Option<u8> {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into `byte`.
        let n = unsafe { libc::read(libc::STDIN_FILENO, (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 => return Some(byte),
            -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => continue,
            _ => return None,
        }
    }
}

fn read_key() -> Key {
    match read_byte() {
        None | Some(b'q') | Some(4) => Key::Leave,
        Some(b'\r') | Some(b'\n') => Key::Enter,
        // Esc alone leaves; Esc [ A..D (or Esc O A..D) are the arrows.
        Some(0x1b) if !byte_within(50) => Key::Leave,
        Some(0x1b) => match (read_byte(), read_byte()) {
            (Some(b'[' | b'O'), Some(b'A')) => Key::Up,
            (Some(b'[' | b'O'), Some(b'B')) => Key::Down,
            (Some(b'[' | b'O'), Some(b'C')) => Key::Right,
            (Some(b'[' | b'O'), Some(b'D')) => Key::Left,
            _ => Key::Other,
        },
        Some(_) => Key::Other,
    }
}

/// A control's value moved one step in `direction` (−1 or +1), within its range.
fn stepped(control: &Control, value: &Setting, direction: f64) -> Setting {
    match (&control.kind, value) {
        (ControlKind::Float { min, max, step }, Setting::Number(x)) => Setting::Number((((x + direction * step) / step).round() * step).clamp(*min, *max)),
        (ControlKind::LogFloat { min, max }, Setting::Number(x)) => Setting::Number((x * 10f64.powf(0.1 * direction)).clamp(*min, *max)),
        (ControlKind::Int { min, max, step }, Setting::Number(x)) => Setting::Number((x + direction * *step as f64).clamp(*min as f64, *max as f64)),
        (ControlKind::Choice(options), Setting::Choice(name)) => {
            let at = options.iter().position(|o| o == name).unwrap_or(0) as i64;
            let next = (at + direction as i64).rem_euclid(options.len().max(1) as i64) as usize;
            options.get(next).map_or_else(|| value.clone(), |o| Setting::Choice(o.clone()))
        }
        (ControlKind::Toggle, Setting::Flag(on)) => Setting::Flag(!on),
        _ => value.clone(),
    }
}

fn shown(control: &Control, value: &Setting) -> String {
    match (&control.kind, value) {
        (ControlKind::Int { .. }, Setting::Number(x)) => format!("{}", *x as i64),
        (ControlKind::LogFloat { .. }, Setting::Number(x)) => format!("{x:.2e}"),
        (_, Setting::Number(x)) => format!("{x:.2}"),
        (_, Setting::Choice(name)) => name.clone(),
        (_, Setting::Flag(on)) => if *on { "on" } else { "off" }.to_string(),
        (_, Setting::Nothing) => String::new(),
    }
}

struct Explorer<'a> {
    panel: Panel,
    chosen: usize,
    /// The values as the keys have set them, not yet run.
    pending: Vec<Setting>,
    said: String,
    renderer: &'a mut Renderer,
}

impl Explorer<'_> {
    fn draw(&mut self) {
        let mut out = String::from("\x1b[H\x1b[J");
        out.push_str(&format!("\x1b[1m{}\x1b[0m\n", self.panel.title));
        for (i, (control, value)) in self.panel.controls.iter().zip(&self.pending).enumerate() {
            let marker = if i == self.chosen { "\x1b[7m>\x1b[0m" } else { " " };
            let changed = if *value != control.value { " *" } else { "" };
            if control.kind == ControlKind::Button {
                out.push_str(&format!("{marker} [ {} ]\n", control.label));
            } else {
                out.push_str(&format!("{marker} {:<16} {}{changed}\n", control.label, shown(control, value)));
            }
        }
        let hint = if self.panel.finished { "finished · Esc leaves" } else { "↑↓ choose · ←→ change · Enter runs · Esc leaves" };
        out.push_str(&format!("\x1b[2m{hint}\x1b[0m\n\n"));
        print!("{out}");
        let _ = std::io::stdout().flush();
        self.renderer.bundle(&self.panel.picture);
        if !self.said.is_empty() {
            println!("\n{}", self.said.trim_end());
        }
        let _ = std::io::stdout().flush();
    }

    /// Runs the changed values, then the chosen button.
    fn run(&mut self, lab: &mut Lab) {
        let mut events: Vec<PanelEvent> = self
            .panel
            .controls
            .iter()
            .zip(&self.pending)
            .filter(|(c, v)| c.kind != ControlKind::Button && **v != c.value)
            .map(|(c, v)| PanelEvent::Set { control: c.name.to_string(), value: v.clone() })
            .collect();
        if let Some(button) = self.panel.controls.get(self.chosen).filter(|c| c.kind == ControlKind::Button) {
            events.push(PanelEvent::Press { control: button.name.to_string() });
        }
        self.said.clear();
        for event in events {
            let mut said = String::new();
            let mut latest: Option<Panel> = None;
            let result: Result<(), CellError> = lab.panel_event(&self.panel.id.clone(), event, &mut |output| match output {
                Output::Panel(panel) => latest = Some(panel),
                Output::Stream { text, .. } => said.push_str(&text),
                _ => {}
            });
            if let Some(panel) = latest {
                self.panel = panel;
            }
            self.said.push_str(&said);
            if let Err(e) = result {
                self.said.push_str(&format!("{}: {}\n", e.name, e.message));
                break;
            }
        }
        self.pending = self.panel.controls.iter().map(|c| c.value.clone()).collect();
    }
}

/// Drives `panel`'s controls until Esc; the last picture stays on the screen.
pub fn run(lab: &mut Lab, panel: Panel, images: Images) {
    let Some(raw) = RawInput::enter() else { return };
    let mut renderer = Renderer::new(images, false);
    let pending = panel.controls.iter().map(|c| c.value.clone()).collect();
    let mut explorer = Explorer { panel, chosen: 0, pending, said: String::new(), renderer: &mut renderer };
    print!("\x1b[?1049h");
    loop {
        explorer.draw();
        let count = explorer.panel.controls.len();
        match read_key() {
            Key::Up => explorer.chosen = (explorer.chosen + count - 1) % count.max(1),
            Key::Down => explorer.chosen = (explorer.chosen + 1) % count.max(1),
            key @ (Key::Left | Key::Right) => {
                let direction = if key == Key::Left { -1.0 } else { 1.0 };
                let i = explorer.chosen;
                if let Some(control) = explorer.panel.controls.get(i) {
                    explorer.pending[i] = stepped(control, &explorer.pending[i], direction);
                }
            }
            Key::Enter if !explorer.panel.finished => explorer.run(lab),
            Key::Leave => break,
            _ => {}
        }
    }
    print!("\x1b[?1049l");
    drop(raw);
    let last = explorer.panel;
    println!("{}", last.title);
    renderer.bundle(&last.picture);
    let _ = std::io::stdout().flush();
}
