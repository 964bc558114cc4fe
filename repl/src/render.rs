//! Session output in a terminal: text as it comes, tables as laid out, live progress
//! rewritten in place, figures as inline images where the terminal shows them (kitty,
//! iTerm2, sixel) and otherwise drawn with Unicode braille.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};

use base64::encode;
use tchlab::session::output::{Bundle, CellError, Output, Stream};
use tchlab::session::panel::Panel;

/// How figures are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Images {
    /// The kitty graphics protocol.
    Kitty,
    /// iTerm2's inline images (also WezTerm).
    Iterm,
    /// DEC sixel graphics.
    Sixel,
    /// Half blocks in 24-bit colour: two pixels a character, for colour terminals.
    Blocks,
    /// Braille dots: any terminal with Unicode.
    Braille,
    /// Not at all (a note says where the figure went).
    None,
}

impl Images {
    /// `TCHLAB_IMAGES` if set (kitty, iterm, sixel, braille, none), else detected from
    /// the terminal's environment.
    pub fn detect() -> Images {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        match var("TCHLAB_IMAGES").as_str() {
            "kitty" => return Images::Kitty,
            "iterm" => return Images::Iterm,
            "sixel" => return Images::Sixel,
            "blocks" => return Images::Blocks,
            "braille" => return Images::Braille,
            "none" => return Images::None,
            _ => {}
        }
        if !std::io::stdout().is_terminal() {
            Images::None
        } else if !var("KITTY_WINDOW_ID").is_empty() || var("TERM") == "xterm-kitty" {
            Images::Kitty
        } else if matches!(var("TERM_PROGRAM").as_str(), "iTerm.app" | "WezTerm") {
            Images::Iterm
        } else if var("TERM").contains("sixel") || var("TERM") == "foot" || var("TERM").starts_with("mlterm") {
            Images::Sixel
        } else if matches!(var("COLORTERM").as_str(), "truecolor" | "24bit") {
            Images::Blocks
        } else {
            Images::Braille
        }
    }
}

/// Renders one cell's outputs.
pub struct Renderer {
    images: Images,
    /// Print only results' JSON, one per line (script `--json` mode).
    json: bool,
    /// Rewrite live displays in place (a terminal), or print only their final state.
    in_place: bool,
    live: HashMap<String, Bundle>,
    live_line_open: bool,
    /// The explorer the cell opened, for the interactive loop to drive.
    panel: Option<Panel>,
}

impl Renderer {
    /// A renderer for stdout.
    pub fn new(images: Images, json: bool) -> Self {
        Renderer { images, json, in_place: std::io::stdout().is_terminal(), live: HashMap::new(), live_line_open: false, panel: None }
    }

    /// Shows one output.
    pub fn show(&mut self, output: Output) {
        if self.json {
            // Results' JSON on stdout, and nothing else there; notes still on stderr.
            match &output {
                Output::Result(bundle) => {
                    if let Some(data) = bundle.data() {
                        println!("{data}");
                    }
                }
                Output::Stream { stream: Stream::Stderr, text } => eprint!("{text}"),
                _ => {}
            }
            return;
        }
        if !matches!(output, Output::Update { .. }) {
            self.close_live_line();
        }
        match output {
            Output::Stream { stream: Stream::Stdout, text } => print!("{text}"),
            Output::Stream { stream: Stream::Stderr, text } => eprint!("{text}"),
            Output::Display { id: Some(id), bundle } => {
                self.live_status(&bundle);
                self.live.insert(id, bundle);
            }
            Output::Update { id, bundle } => {
                self.live_status(&bundle);
                self.live.insert(id, bundle);
            }
            Output::Display { id: None, bundle } | Output::Result(bundle) => self.bundle(&bundle),
            Output::Page(text) => println!("{text}"),
            Output::Panel(panel) => {
                // Its picture now; the interactive loop then takes over its controls.
                self.bundle(&panel.picture);
                self.panel = Some(panel);
            }
            Output::Clear { .. } => {
                if self.in_place {
                    print!("\x1b[2J\x1b[H");
                }
            }
        }
        let _ = std::io::stdout().flush();
    }

    /// Ends a cell: live displays show their final state, figures included.
    pub fn finish(&mut self) {
        self.close_live_line();
        for (_, bundle) in self.live.drain().collect::<Vec<_>>() {
            if self.json {
                continue;
            }
            if !self.in_place {
                // Nothing was shown while it ran: the final state, once.
                self.bundle(&bundle);
            } else if self.images != Images::None {
                // The status line is on screen already; add the figure.
                self.figure(&bundle);
            }
        }
        let _ = std::io::stdout().flush();
    }

    /// The explorer the cell opened, if any.
    pub fn take_panel(&mut self) -> Option<Panel> {
        self.panel.take()
    }

    /// Shows a cell's error on stderr.
    pub fn error(&mut self, e: &CellError, location: &str) {
        self.finish();
        eprintln!("{location}{}: {}", e.name, e.message);
    }

    fn live_status(&mut self, bundle: &Bundle) {
        if self.in_place && !self.json {
            let line = bundle.plain().lines().next().unwrap_or("");
            let width = terminal_width();
            let line: String = line.chars().take(width.saturating_sub(1)).collect();
            print!("\r\x1b[2K{line}");
            self.live_line_open = true;
        }
    }

    fn close_live_line(&mut self) {
        if self.live_line_open {
            println!();
            self.live_line_open = false;
        }
    }

    /// Shows a bundle: its figure if it has one, else its text.
    pub fn bundle(&mut self, bundle: &Bundle) {
        if bundle.png().is_some() {
            self.figure(bundle);
        } else {
            println!("{}", bundle.plain());
        }
    }

    fn figure(&self, bundle: &Bundle) {
        let Some(png) = bundle.png() else { return };
        let mut out = std::io::stdout();
        match self.images {
            Images::Kitty => {
                // Chunks of at most 4096 base64 bytes; m=1 while more follow.
                let data = encode(&png);
                let chunks: Vec<&[u8]> = data.as_bytes().chunks(4096).collect();
                for (i, chunk) in chunks.iter().enumerate() {
                    let more = u8::from(i + 1 < chunks.len());
                    let head = if i == 0 { format!("a=T,f=100,m={more}") } else { format!("m={more}") };
                    let _ = write!(out, "\x1b_G{head};{}\x1b\\", String::from_utf8_lossy(chunk));
                }
                let _ = writeln!(out);
            }
            Images::Iterm => {
                let _ = writeln!(out, "\x1b]1337;File=inline=1;size={};preserveAspectRatio=1:{}\x07", png.len(), encode(&png));
            }
            Images::Sixel => match decode(&png) {
                Some(image) => {
                    let _ = write!(out, "{}", sixel(&image));
                }
                None => println!("{}", bundle.plain()),
            },
            Images::Blocks => match decode(&png) {
                Some(image) => print!("{}", blocks(&image, terminal_width().min(160))),
                None => println!("{}", bundle.plain()),
            },
            Images::Braille => match decode(&png) {
                Some(image) => println!("{}", braille(&image, terminal_width().min(160))),
                None => println!("{}", bundle.plain()),
            },
            Images::None => println!("{}", bundle.plain()),
        }
    }
}

/// The terminal's width in columns (80 when unknown).
pub fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct; a failing call leaves it zeroed.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(80)
    }
}

/// An RGB image.
pub struct Rgb {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

/// Decodes an 8-bit RGB or RGBA PNG.
pub fn decode(png_bytes: &[u8]) -> Option<Rgb> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes)).read_info().ok()?;
    let mut buffer = vec![0; reader.output_buffer_size()?];
    let info = reader.next_frame(&mut buffer).ok()?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        _ => return None,
    };
    let pixels = buffer[..info.buffer_size()].chunks(channels).flat_map(|p| [p[0], p[1], p[2]]).collect();
    Some(Rgb { width: info.width as usize, height: info.height as usize, pixels })
}

impl Rgb {
    fn luminance(&self, x: usize, y: usize) -> f32 {
        let i = 3 * (y * self.width + x);
        0.299 * f32::from(self.pixels[i]) + 0.587 * f32::from(self.pixels[i + 1]) + 0.114 * f32::from(self.pixels[i + 2])
    }
}

/// The image in braille: each character is 2×4 dots, a dot where the area is dark.
pub fn braille(image: &Rgb, columns: usize) -> String {
    let (dots_x, dots_y) = (columns * 2, (columns * 2 * image.height / image.width.max(1)).div_ceil(4) * 4);
    let dark = |dx: usize, dy: usize| {
        // The darkest pixel of the dot's area, so thin lines survive the shrinking.
        let (x0, x1) = (dx * image.width / dots_x, ((dx + 1) * image.width / dots_x).max(dx * image.width / dots_x + 1));
        let (y0, y1) = (dy * image.height / dots_y, ((dy + 1) * image.height / dots_y).max(dy * image.height / dots_y + 1));
        (y0..y1.min(image.height)).flat_map(|y| (x0..x1.min(image.width)).map(move |x| (x, y))).any(|(x, y)| image.luminance(x, y) < 170.0)
    };
    // Braille dot bits: (0,0)=1 (0,1)=2 (0,2)=4 (1,0)=8 (1,1)=16 (1,2)=32 (0,3)=64 (1,3)=128.
    const BITS: [[u32; 4]; 2] = [[0x01, 0x02, 0x04, 0x40], [0x08, 0x10, 0x20, 0x80]];
    let mut out = String::new();
    for row in 0..dots_y / 4 {
        for col in 0..columns {
            let mut code = 0x2800;
            for (cx, bits) in BITS.iter().enumerate() {
                for (cy, bit) in bits.iter().enumerate() {
                    if dark(col * 2 + cx, row * 4 + cy) {
                        code |= bit;
                    }
                }
            }
            out.push(char::from_u32(code).expect("braille block"));
        }
        out.push('\n');
    }
    out
}

/// The image in half blocks: each character shows two stacked pixels, upper in the
/// foreground colour of `▀`, lower in the background, each the average of its area.
pub fn blocks(image: &Rgb, columns: usize) -> String {
    let rows = (columns * image.height / image.width.max(1)).div_ceil(2) * 2;
    let average = |cx: usize, cy: usize| -> [u32; 3] {
        let (x0, x1) = (cx * image.width / columns, ((cx + 1) * image.width / columns).max(cx * image.width / columns + 1).min(image.width));
        let (y0, y1) = (cy * image.height / rows, ((cy + 1) * image.height / rows).max(cy * image.height / rows + 1).min(image.height));
        let mut sum = [0u32; 3];
        for y in y0..y1 {
            for x in x0..x1 {
                let i = 3 * (y * image.width + x);
                for c in 0..3 {
                    sum[c] += u32::from(image.pixels[i + c]);
                }
            }
        }
        let n = ((x1 - x0) * (y1 - y0)).max(1) as u32;
        sum.map(|v| v / n)
    };
    let mut out = String::new();
    for row in (0..rows).step_by(2) {
        for col in 0..columns {
            let ([r, g, b], [r2, g2, b2]) = (average(col, row), average(col, row + 1));
            out.push_str(&format!("\x1b[38;2;{r};{g};{b}m\x1b[48;2;{r2};{g2};{b2}m▀"));
        }
        out.push_str("\x1b[0m\n");
    }
    out
}

/// The image as DEC sixel graphics, in a 6×6×6 colour cube.
pub fn sixel(image: &Rgb) -> String {
    let level = |v: u8| (u16::from(v) * 5 + 127) / 255;
    let index = |x: usize, y: usize| {
        let i = 3 * (y * image.width + x);
        (level(image.pixels[i]) * 36 + level(image.pixels[i + 1]) * 6 + level(image.pixels[i + 2])) as usize
    };
    let mut out = String::from("\x1bPq");
    for c in 0..216 {
        let (r, g, b) = (c / 36, c / 6 % 6, c % 6);
        out.push_str(&format!("#{c};2;{};{};{}", r * 20, g * 20, b * 20));
    }
    for band in (0..image.height).step_by(6) {
        let mut used = vec![false; 216];
        for y in band..(band + 6).min(image.height) {
            for x in 0..image.width {
                used[index(x, y)] = true;
            }
        }
        for (c, _) in used.iter().enumerate().filter(|(_, u)| **u) {
            out.push_str(&format!("#{c}"));
            for x in 0..image.width {
                let bits: u8 = (0..6).filter(|dy| band + dy < image.height && index(x, band + dy) == c).map(|dy| 1 << dy).sum();
                out.push(char::from(63 + bits));
            }
            out.push('$');
        }
        out.push('-');
    }
    out.push_str("\x1b\\");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, dark: impl Fn(usize, usize) -> bool) -> Rgb {
        let pixels = (0..h).flat_map(|y| (0..w).flat_map(move |x| (0..3).map(move |_| (x, y)))).map(|(x, y)| if dark(x, y) { 0 } else { 255 }).collect();
        Rgb { width: w, height: h, pixels }
    }

    #[test]
    fn braille_draws_dark_pixels_as_dots() {
        let diagonal = image(8, 8, |x, y| x == y);
        let text = braille(&diagonal, 4);
        assert_eq!(text.lines().count(), 2);
        assert_eq!(text.lines().next().unwrap().chars().next(), Some('\u{2811}'), "dots (0,0) and (1,1): {text}");
        assert!(braille(&image(8, 8, |_, _| false), 4).chars().all(|c| c == '\u{2800}' || c == '\n'));
    }

    #[test]
    fn sixel_frames_the_image() {
        let s = sixel(&image(4, 7, |x, _| x == 0));
        assert!(s.starts_with("\x1bPq") && s.ends_with("\x1b\\"));
        assert_eq!(s.matches('-').count(), 2, "two bands of six rows");
    }
}
