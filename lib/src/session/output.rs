//! What commands emit: text on stdout or stderr, displays (MIME bundles), updates of
//! an earlier display by id, the command's result, explorers' panels, and requests to
//! clear the output.
//! Front ends map these to Jupyter messages or to the terminal; the session never
//! prints.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::plot::Figure;

/// Which text stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Normal output.
    Stdout,
    /// Notes and warnings.
    Stderr,
}

/// The MIME type of a result's machine-readable form. A vendor type, so that notebook
/// front ends (which render `application/json` as a collapsible tree and prefer it to
/// text) show the text and tables a command writes, while scripts, tests and Rust
/// cells read the data.
pub const RESULT_MIME: &str = "application/vnd.tchlab.result+json";

/// The MIME type of a heatmap's cells and labels ([`crate::plot::HeatmapCells`]), which
/// a terminal draws as labelled text where it shows no images. Notebooks have the
/// picture; the kernel leaves this out.
pub const HEATMAP_MIME: &str = "application/vnd.tchlab.heatmap+json";

/// The MIME type of text with a terminal's colour codes (ANSI SGR): what a terminal
/// shows instead of `text/plain` when it shows colour. The kernel leaves it out.
pub const ANSI_MIME: &str = "text/vnd.tchlab.ansi";

/// One piece of data in several representations, keyed by MIME type: `text/plain`
/// always; `text/html` for tables; [`RESULT_MIME`] for a result's data; `image/png` (base64)
/// and `image/svg+xml` for figures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bundle(pub BTreeMap<String, Value>);

impl Bundle {
    /// A bundle with its `text/plain` form.
    pub fn text(text: impl Into<String>) -> Self {
        let mut b = Bundle::default();
        b.0.insert("text/plain".into(), Value::String(text.into()));
        b
    }

    /// Adds the machine-readable form, under [`RESULT_MIME`].
    pub fn json(mut self, value: Value) -> Self {
        self.0.insert(RESULT_MIME.into(), value);
        self
    }

    /// Adds the `text/html` form.
    pub fn html(mut self, html: impl Into<String>) -> Self {
        self.0.insert("text/html".into(), Value::String(html.into()));
        self
    }

    /// Adds a figure as `image/png` (base64) and `image/svg+xml`.
    pub fn figure(mut self, figure: &Figure) -> Self {
        self.0.insert("image/png".into(), Value::String(base64::encode(&figure.png)));
        self.0.insert("image/svg+xml".into(), Value::String(figure.svg.clone()));
        if let Some(cells) = &figure.cells {
            self.0.insert(HEATMAP_MIME.into(), serde_json::to_value(cells).expect("cells serialise"));
        }
        self
    }

    /// Adds the text with colour codes, for terminals ([`ANSI_MIME`]).
    pub fn ansi(mut self, text: impl Into<String>) -> Self {
        self.0.insert(ANSI_MIME.into(), Value::String(text.into()));
        self
    }

    /// The text with colour codes, when there is one.
    pub fn ansi_text(&self) -> Option<&str> {
        self.0.get(ANSI_MIME).and_then(Value::as_str)
    }

    /// A heatmap's cells and labels ([`HEATMAP_MIME`]), when the bundle draws one.
    pub fn heatmap(&self) -> Option<crate::plot::HeatmapCells> {
        serde_json::from_value(self.0.get(HEATMAP_MIME)?.clone()).ok()
    }

    /// The `text/plain` form.
    pub fn plain(&self) -> &str {
        self.0.get("text/plain").and_then(Value::as_str).unwrap_or("")
    }

    /// The machine-readable form, if any.
    pub fn data(&self) -> Option<&Value> {
        self.0.get(RESULT_MIME)
    }

    /// The PNG bytes of a figure, if any.
    pub fn png(&self) -> Option<Vec<u8>> {
        base64::decode(self.0.get("image/png")?.as_str()?).ok()
    }
}

/// Values that know how to show themselves: tensors, figures, tables, histories. The
/// session's displays and Rust cells' final values both go through [`Show::bundle`].
pub trait Show {
    /// The value in every representation it has.
    fn bundle(&self) -> Bundle;

    /// Shows the value as the result of an evcxr cell: evcxr calls this method on a
    /// cell's final value when it exists, and reads MIME blocks from stdout.
    fn evcxr_display(&self) {
        let mut out = String::new();
        for (mime, value) in &self.bundle().0 {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("EVCXR_BEGIN_CONTENT {mime}\n{}\nEVCXR_END_CONTENT\n", text.trim_end_matches('\n')));
        }
        print!("{out}");
    }
}

impl Show for Bundle {
    fn bundle(&self) -> Bundle {
        self.clone()
    }
}

impl Show for Value {
    fn bundle(&self) -> Bundle {
        Bundle::text(serde_json::to_string_pretty(self).expect("JSON")).json(self.clone())
    }
}

impl Show for Figure {
    fn bundle(&self) -> Bundle {
        Bundle::text(format!("<figure {}x{}>", self.width, self.height)).figure(self)
    }
}

impl Show for Table {
    fn bundle(&self) -> Bundle {
        Bundle::text(self.to_text()).html(self.to_html())
    }
}

impl Show for tch::Tensor {
    fn bundle(&self) -> Bundle {
        if !self.defined() {
            return Bundle::text("<undefined tensor>");
        }
        let header = format!("Tensor {:?} {:?} on {}", self.size(), self.kind(), super::format::device_name(self.device()));
        let values = format!("{self}");
        Bundle::text(format!("{header}\n{values}")).html(format!("<div><b>{}</b><pre>{}</pre></div>", escape_html(&header), escape_html(&values)))
    }
}

impl Show for crate::train::History {
    fn bundle(&self) -> Bundle {
        let mut table = Table::new(["step", "loss", "lr", "grad norm", "val loss"]);
        let shown = self.steps.len().saturating_sub(10);
        for r in &self.steps[shown..] {
            let val = r.val.as_ref().map_or(String::new(), |v| format!("{:.4}", v.loss));
            table.row([r.step.to_string(), format!("{:.4}", r.loss), format!("{:.3e}", r.lr), format!("{:.3}", r.grad_norm), val]);
        }
        let caption = format!("{} steps{}", self.steps.len(), if shown > 0 { ", the last 10 shown" } else { "" });
        Bundle::text(format!("{caption}\n{}", table.to_text())).html(format!("<p>{caption}</p>{}", table.to_html()))
    }
}

/// One event of a command's output.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Text on a stream.
    Stream {
        /// stdout or stderr.
        stream: Stream,
        /// The text, newlines included.
        text: String,
    },
    /// A display (a plot, a table, live progress); `id` lets later updates replace it.
    Display {
        /// Set for displays that will be updated.
        id: Option<String>,
        /// What to show.
        bundle: Bundle,
    },
    /// Replaces the display with this id.
    Update {
        /// The display's id.
        id: String,
        /// What to show now.
        bundle: Bundle,
    },
    /// The command's result, the cell's value (Jupyter's `execute_result`).
    Result(Bundle),
    /// Help text for a pager (Jupyter's `payload` for `CMD?`).
    Page(String),
    /// An explorer's controls and picture (`%explore`): shown the first time an id
    /// comes, redrawn each later time. Front ends without controls show the picture.
    Panel(super::panel::Panel),
    /// Clears the cell's output.
    Clear {
        /// Wait for the next output before clearing.
        wait: bool,
    },
}

/// A failed cell: a short name (as Python's exception names) and a message that says
/// what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct CellError {
    /// `UsageError`, `FileError`, `ShapeError`, `NonFiniteError`, `KeyboardInterrupt`, `MemoryError`,
    /// `InternalError` (a caught panic), `TchlabError`.
    pub name: String,
    /// The message, usage line included where it helps.
    pub message: String,
}

impl std::fmt::Display for CellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl From<crate::Error> for CellError {
    fn from(e: crate::Error) -> Self {
        use crate::Error;
        let name = match &e {
            Error::Io { .. } | Error::Format { .. } => "FileError",
            Error::ShapeMismatch { .. } => "ShapeError",
            Error::NonFinite(_) => "NonFiniteError",
            Error::Interrupted { .. } | Error::Cancelled(_) => "KeyboardInterrupt",
            Error::TooLarge(_) => "MemoryError",
            Error::Internal(_) => "InternalError",
            Error::Invalid(_) => "UsageError",
            Error::Torch(t) if crate::interrupt::is_out_of_memory(&t.to_string()) => "MemoryError",
            Error::Torch(_) => "TchlabError",
        };
        CellError { name: name.into(), message: e.to_string() }
    }
}

/// A table rendered as aligned text and as HTML.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table { headers: headers.into_iter().map(Into::into).collect(), rows: vec![] }
    }

    /// Adds a row.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Aligned columns; numbers right-aligned.
    pub fn to_text(&self) -> String {
        let n = self.headers.len();
        let width = |i: usize| self.rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).chain([self.headers[i].chars().count()]).max().unwrap_or(0);
        let widths: Vec<usize> = (0..n).map(width).collect();
        let numeric = |s: &str| s.parse::<f64>().is_ok();
        let line = |cells: &[String]| {
            let parts: Vec<String> = (0..n)
                .map(|i| {
                    let c = cells.get(i).map_or("", String::as_str);
                    if numeric(c) {
                        format!("{c:>w$}", w = widths[i])
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
        for r in &self.rows {
            out.push('\n');
            out.push_str(&line(r));
        }
        out
    }

    /// An HTML table.
    pub fn to_html(&self) -> String {
        let cell = |tag: &str, c: &str| format!("<{tag}>{}</{tag}>", escape_html(c));
        let mut out = String::from("<table><thead><tr>");
        out.extend(self.headers.iter().map(|h| cell("th", h)));
        out.push_str("</tr></thead><tbody>");
        for r in &self.rows {
            out.push_str("<tr>");
            out.extend(r.iter().map(|c| cell("td", c)));
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
        out
    }

    /// A bundle with both forms.
    pub fn bundle(&self) -> Bundle {
        Bundle::text(self.to_text()).html(self.to_html())
    }

    /// The table under a line that sums it up.
    pub fn bundle_under(&self, summary: &str) -> Bundle {
        Bundle::text(format!("{summary}\n\n{}", self.to_text())).html(format!("<p>{}</p>{}", escape_html(summary), self.to_html()))
    }
}

/// Escapes text for HTML.
pub fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_escape() {
        let mut t = Table::new(["name", "value"]);
        t.row(["lr", "0.001"]);
        t.row(["<b>", "12"]);
        assert_eq!(t.to_text(), "name  value\n----  -----\nlr    0.001\n<b>      12");
        assert!(t.to_html().contains("<td>&lt;b&gt;</td>"));
    }
}
