//! Session output in a terminal: text as it comes, tables as laid out, live progress
//! rewritten in place, figures as inline images where the terminal shows them (kitty,
//! iTerm2, sixel), otherwise as coloured half blocks (24-bit where the terminal
//! announces it, else the 256-colour palette nearly every terminal has, tmux included),
//! and with Unicode braille only where colour is off. Where a figure is a heatmap and
//! no inline image is shown, it is drawn as a grid of coloured cells with its rows and
//! columns labelled by their tokens, which a picture shrunk to the terminal's width
//! would blur.

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
    /// Half blocks in 24-bit colour: two pixels a character, where `COLORTERM` says
    /// the terminal has it.
    Blocks,
    /// Half blocks in the 256-colour palette: any colour terminal.
    Palette,
    /// Braille dots: any terminal with Unicode.
    Braille,
    /// Not at all (a note says where the figure went).
    None,
}

impl Images {
    /// `TCHLAB_IMAGES` if set (kitty, iterm, sixel, blocks, palette, braille, none),
    /// else detected from the terminal's environment. `NO_COLOR` (no-color.org) turns
    /// colour off.
    pub fn detect() -> Images {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        match var("TCHLAB_IMAGES").as_str() {
            "kitty" => return Images::Kitty,
            "iterm" => return Images::Iterm,
            "sixel" => return Images::Sixel,
            "blocks" => return Images::Blocks,
            "palette" => return Images::Palette,
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
        } else if !var("NO_COLOR").is_empty() || var("TERM") == "dumb" {
            Images::Braille
        } else if matches!(var("COLORTERM").as_str(), "truecolor" | "24bit") {
            Images::Blocks
        } else {
            Images::Palette
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
        if let Some(cells) = bundle.heatmap().filter(|_| matches!(self.images, Images::Blocks | Images::Palette | Images::Braille)) {
            print!("{}", heatmap(&cells, self.images, terminal_width()));
        } else if let Some(coloured) =
            bundle.ansi_text().filter(|_| matches!(self.images, Images::Kitty | Images::Iterm | Images::Sixel | Images::Blocks | Images::Palette))
        {
            println!("{coloured}");
        } else if bundle.png().is_some() {
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
            Images::Blocks | Images::Palette => match decode(&png) {
                Some(image) => print!("{}", blocks(&image, terminal_width().min(160), self.images == Images::Palette)),
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
/// foreground colour of `▀`, lower in the background, each the average of its area;
/// in 24-bit colour, or the nearest of the 256-colour palette with `palette`.
pub fn blocks(image: &Rgb, columns: usize, palette: bool) -> String {
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
            let (upper, lower) = (average(col, row).map(|v| v as u8), average(col, row + 1).map(|v| v as u8));
            out.push_str(&format!("\x1b[{}m\x1b[{}m▀", colour_code(38, upper, palette), colour_code(48, lower, palette)));
        }
        out.push_str("\x1b[0m\n");
    }
    out
}

/// The SGR parameters that set the foreground (`layer` 38) or background (48) to
/// `rgb`: exactly, or as the nearest colour of the 256-colour palette.
fn colour_code(layer: u8, [r, g, b]: [u8; 3], palette: bool) -> String {
    if palette {
        format!("{layer};5;{}", palette_index([r, g, b]))
    } else {
        format!("{layer};2;{r};{g};{b}")
    }
}

/// The nearest entry of xterm's 256-colour palette: the 6×6×6 cube (16–231) or the grey
/// ramp (232–255), whichever is closer.
pub fn palette_index([r, g, b]: [u8; 3]) -> u8 {
    const LEVELS: [i32; 6] = [0, 95, 135, 175, 215, 255];
    let nearest = |v: u8| (0..6).min_by_key(|&i| (LEVELS[i] - i32::from(v)).abs()).expect("six levels");
    let (ri, gi, bi) = (nearest(r), nearest(g), nearest(b));
    let distance = |(x, y, z): (i32, i32, i32)| (x - i32::from(r)).pow(2) + (y - i32::from(g)).pow(2) + (z - i32::from(b)).pow(2);
    let cube = distance((LEVELS[ri], LEVELS[gi], LEVELS[bi]));
    let grey_step = ((i32::from(r) + i32::from(g) + i32::from(b)) / 3 - 8).clamp(0, 230) / 10;
    let grey_value = 8 + 10 * grey_step;
    if distance((grey_value, grey_value, grey_value)) < cube {
        232 + grey_step as u8
    } else {
        16 + (36 * ri + 6 * gi + bi) as u8
    }
}

/// A heatmap as text: the title, the column labels written downwards, then a row per
/// label with a coloured block per cell, and a key of what the colours mean. Cells are
/// two columns wide while the map fits `width`, one otherwise; columns that still do
/// not fit are left out, and a line says so. Without colour (`Images::Braille`), a
/// cell's shade (` ░▒▓█`) says how strong it is.
pub fn heatmap(map: &tchlab::plot::HeatmapCells, images: Images, width: usize) -> String {
    use unicode_width::UnicodeWidthChar;
    const LABEL: usize = 12;
    let clip = |label: &str| -> (String, usize) {
        let (mut out, mut used) = (String::new(), 0);
        for c in label.chars() {
            let w = c.width().unwrap_or(0);
            if used + w > LABEL {
                break;
            }
            out.push(c);
            used += w;
        }
        (out, used)
    };
    let label_width = map.rows.iter().map(|r| clip(r).1).max().unwrap_or(0);
    let room = width.saturating_sub(label_width + 2).max(1);
    let cell = if map.columns.len() * 2 <= room { 2 } else { 1 };
    let shown = map.columns.len().min(room / cell);
    let rgb = |hex: &str| -> Option<[u8; 3]> {
        let h = hex.strip_prefix('#').filter(|h| h.len() == 6)?;
        let byte = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).ok();
        Some([byte(0)?, byte(2)?, byte(4)?])
    };
    let block = |hex: &str, intensity: Option<f64>| -> String {
        let fill = "█".repeat(cell);
        match (images, rgb(hex)) {
            (Images::Braille, _) | (_, None) => {
                let shade = intensity.map_or(' ', |v| [' ', '░', '▒', '▓', '█'][((v * 4.0).round() as usize).min(4)]);
                shade.to_string().repeat(cell)
            }
            (_, Some(c)) => format!("\x1b[{}m{fill}\x1b[0m", colour_code(38, c, images == Images::Palette)),
        }
    };
    let mut out = format!("{}  ({} ↓, {} →)\n", map.title, map.row_axis, map.column_axis);
    let columns: Vec<Vec<char>> = map.columns.iter().take(shown).map(|c| clip(c).0.chars().collect()).collect();
    let depth = columns.iter().map(Vec::len).max().unwrap_or(0);
    for line in 0..depth {
        out.push_str(&" ".repeat(label_width + 1));
        for chars in &columns {
            match chars.get(line) {
                Some(&c) => {
                    out.push(c);
                    out.push_str(&" ".repeat(cell.saturating_sub(c.width().unwrap_or(1))));
                }
                None => out.push_str(&" ".repeat(cell)),
            }
        }
        out.push('\n');
    }
    for (i, row) in map.rows.iter().enumerate() {
        let (label, used) = clip(row);
        out.push_str(&" ".repeat(label_width - used));
        out.push_str(&label);
        out.push(' ');
        for j in 0..shown {
            let hex = map.colours.get(i).and_then(|r| r.get(j)).map_or("", String::as_str);
            out.push_str(&block(hex, map.intensity.get(i).and_then(|r| r.get(j)).copied().flatten()));
        }
        out.push('\n');
    }
    if shown < map.columns.len() {
        out.push_str(&format!("(the first {shown} of {} columns: widen the terminal, or `--save` the figure)\n", map.columns.len()));
    }
    let key: Vec<String> = map.key.iter().enumerate().map(|(k, (value, hex))| format!("{} {value}", block(hex, Some(1.0 - k as f64 / 4.0)))).collect();
    out.push_str(&format!("{}: {}\n", map.legend, key.join("  ")));
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
    fn palette_colours_are_the_nearest_of_the_cube_or_the_grey_ramp() {
        assert_eq!(palette_index([0, 0, 0]), 16);
        assert_eq!(palette_index([255, 255, 255]), 231);
        assert_eq!(palette_index([255, 0, 0]), 196);
        assert_eq!(palette_index([128, 128, 128]), 244);
        assert_eq!(palette_index([68, 1, 84]), 53, "viridis's darkest, a dark purple");
    }

    fn cells() -> tchlab::plot::HeatmapCells {
        tchlab::plot::HeatmapCells {
            title: "attention".into(),
            row_axis: "query".into(),
            column_axis: "key".into(),
            rows: vec!["the".into(), "␣cat".into()],
            columns: vec!["the".into(), "␣cat".into()],
            colours: vec![vec!["#fde725".into(), String::new()], vec!["#440154".into(), "#21918c".into()]],
            intensity: vec![vec![Some(1.0), None], vec![Some(0.0), Some(0.5)]],
            key: vec![("1".into(), "#fde725".into()), ("0".into(), "#440154".into())],
            legend: "attention".into(),
        }
    }

    #[test]
    fn a_heatmap_names_its_rows_and_columns_and_colours_its_cells() {
        let text = heatmap(&cells(), Images::Palette, 80);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("attention  (query ↓, key →)"));
        assert_eq!(lines[1], "     t ␣ ", "column labels run downwards, two columns a cell");
        assert!(lines[5].starts_with(" the ") && lines[6].starts_with("␣cat "), "{text}");
        let high = lines[5].split("\x1b[38;5;").nth(1).unwrap().split('m').next().unwrap();
        let low = lines[6].split("\x1b[38;5;").nth(1).unwrap().split('m').next().unwrap();
        assert_ne!(high, low, "a high and a low cell differ in colour");
        assert!(lines[5].ends_with("\x1b[0m  "), "a blank cell is blank: {:?}", lines[5]);
        assert!(lines.last().unwrap().starts_with("attention: "));
    }

    #[test]
    fn without_colour_a_heatmap_shades_its_cells() {
        let text = heatmap(&cells(), Images::Braille, 80);
        assert!(!text.contains('\x1b'));
        assert!(text.contains("\n␣cat   ▒▒\n"), "{text}");
    }

    #[test]
    fn a_narrow_terminal_gets_one_column_cells_then_fewer_columns() {
        assert!(heatmap(&cells(), Images::Palette, 8).lines().nth(1).unwrap().ends_with("t␣"));
        assert!(heatmap(&cells(), Images::Palette, 6).contains("the first 1 of 2 columns"));
    }

    #[test]
    fn sixel_frames_the_image() {
        let s = sixel(&image(4, 7, |x, _| x == 0));
        assert!(s.starts_with("\x1bPq") && s.ends_with("\x1b\\"));
        assert_eq!(s.matches('-').count(), 2, "two bands of six rows");
    }
}
