//! How a value shows itself in a notebook or a terminal: one piece of data in several
//! representations ([`Bundle`]: text, HTML, PNG and SVG figures, a result's JSON), the
//! [`Show`] trait that tensors, figures, tables and training histories implement, and
//! [`Table`]. The session's outputs (`crate::session::output`) carry bundles; Rust cells
//! show their final values through the same trait.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::plot::Figure;

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
        let header = format!("Tensor {:?} {:?} on {}", self.size(), self.kind(), crate::device::device_name(self.device()));
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
