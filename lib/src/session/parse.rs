//! Splitting a cell into command invocations, and command lines into words and
//! arguments. The grammar: a line starting with `%` is a command; `%%cmd` on a cell's
//! first line makes the rest of the cell its body; `CMD?` asks for help; words are
//! shell-like (single and double quotes, backslash escapes); `--name value`, `--flag`
//! and `key=value` are options, flags and pairs as each command declares them.

use std::collections::{BTreeMap, BTreeSet};

use super::commands::{Arg, ArgKind, Command};
use super::output::CellError;
use crate::suggest::did_you_mean;

/// One command to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The command's name, without `%`.
    pub name: String,
    /// The words after the name.
    pub words: Vec<String>,
    /// The cell body of a `%%` command.
    pub body: Option<String>,
    /// `CMD?`: show help instead of running.
    pub help: bool,
    /// The line as typed.
    pub line: String,
}

/// What a cell holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Commands, run in order.
    Commands(Vec<Invocation>),
    /// Rust code.
    Rust(String),
}

/// Splits a cell. Blank lines and `#` comments between commands are skipped; a cell
/// whose lines are not all commands is Rust.
pub fn split_cell(cell: &str) -> Result<Cell, CellError> {
    let trimmed = cell.trim();
    if let Some(rest) = cell.trim_start().strip_prefix("%%") {
        let (first, body) = rest.split_once('\n').unwrap_or((rest, ""));
        let mut inv = invocation(first.trim())?;
        inv.body = Some(body.to_string());
        inv.line = format!("%%{}", first.trim());
        return Ok(Cell::Commands(vec![inv]));
    }
    let lines: Vec<&str> = trimmed.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    if lines.is_empty() {
        return Ok(Cell::Commands(vec![]));
    }
    if !lines.iter().all(|l| l.starts_with('%')) {
        return Ok(Cell::Rust(cell.to_string()));
    }
    lines.into_iter().map(|l| invocation(&l[1..])).collect::<Result<_, _>>().map(Cell::Commands)
}

fn invocation(text: &str) -> Result<Invocation, CellError> {
    let line = format!("%{text}");
    let usage = |message: String| CellError { name: "UsageError".into(), message };
    let mut words = words(text).map_err(|m| usage(format!("{m} in `{line}`")))?;
    if words.is_empty() {
        return Err(usage("a lone `%`: type %help for the commands".into()));
    }
    let mut name = words.remove(0);
    let mut help = false;
    if let Some(stripped) = name.strip_suffix('?') {
        name = stripped.to_string();
        help = true;
    }
    if words.last().is_some_and(|w| w == "?") {
        words.pop();
        help = true;
    }
    Ok(Invocation { name, words, body: None, help, line })
}

/// Shell-like words: whitespace separates, quotes group, backslash escapes.
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = vec![];
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(format!("unclosed {c} quote")),
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => current.push(chars.next().ok_or("a backslash at the end")?),
                        Some(other) => current.push(other),
                    }
                }
            }
            '\\' => {
                in_word = true;
                current.push(chars.next().ok_or("a backslash at the end")?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        out.push(current);
    }
    Ok(out)
}

/// A command's arguments, parsed against its declaration.
#[derive(Debug, Clone, Default)]
pub struct Args {
    positional: BTreeMap<&'static str, String>,
    rest: Vec<String>,
    options: BTreeMap<&'static str, String>,
    flags: BTreeSet<&'static str>,
    /// `key=value` pairs in the order given.
    pub pairs: Vec<(String, String)>,
    /// The cell body of a `%%` command.
    pub body: Option<String>,
    usage: String,
}

impl Args {
    /// Parses `words` as `command` declares its arguments.
    pub fn parse(command: &Command, words: &[String], body: Option<String>) -> Result<Args, CellError> {
        let usage = command.usage();
        let fail = |message: String| Err(CellError { name: "UsageError".into(), message: format!("{message}\nusage: {usage}") });
        let mut args = Args { body, usage: usage.clone(), ..Default::default() };
        let positionals: Vec<&Arg> = command.args.iter().filter(|a| matches!(a.kind, ArgKind::Positional | ArgKind::Rest | ArgKind::Words)).collect();
        let rest_takes_options = command.args.iter().any(|a| a.kind == ArgKind::Rest);
        let takes_pairs = command.args.iter().any(|a| a.kind == ArgKind::Pairs);
        let mut next_positional = 0;
        let mut i = 0;
        while i < words.len() {
            let w = &words[i];
            // Once a rest argument has begun, every word is its own: `%timeit %generate "1"
            // --max-tokens 8` passes `--max-tokens` to %generate, not to %timeit.
            if rest_takes_options && !args.rest.is_empty() {
                args.rest.push(w.clone());
            } else if let Some(name) = w.strip_prefix("--").filter(|n| !n.is_empty()) {
                let (name, inline) = match name.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (name, None),
                };
                let Some(arg) = command.args.iter().find(|a| a.name == name && matches!(a.kind, ArgKind::Option(_) | ArgKind::Flag)) else {
                    let options = command.args.iter().filter(|a| matches!(a.kind, ArgKind::Option(_) | ArgKind::Flag)).map(|a| a.name);
                    return fail(format!("%{} has no option --{name}{}", command.name, did_you_mean(name, options).replace("mean ", "mean --")));
                };
                if arg.kind == ArgKind::Flag {
                    args.flags.insert(arg.name);
                } else if let Some(v) = inline {
                    args.options.insert(arg.name, v);
                } else {
                    i += 1;
                    let Some(v) = words.get(i) else { return fail(format!("--{name} needs a value")) };
                    args.options.insert(arg.name, v.clone());
                }
            } else if let Some((k, v)) = w.split_once('=').filter(|(k, _)| takes_pairs && is_identifier(k)) {
                args.pairs.push((k.to_string(), v.to_string()));
            } else {
                match positionals.get(next_positional) {
                    Some(arg) if matches!(arg.kind, ArgKind::Rest | ArgKind::Words) => args.rest.push(w.clone()),
                    Some(arg) => {
                        args.positional.insert(arg.name, w.clone());
                        next_positional += 1;
                    }
                    None => return fail(format!("unexpected `{w}`")),
                }
            }
            i += 1;
        }
        for arg in &positionals {
            let given = match arg.kind {
                ArgKind::Rest | ArgKind::Words => !args.rest.is_empty(),
                _ => args.positional.contains_key(arg.name),
            };
            if arg.required && !given {
                return fail(format!("missing {}", arg.name.to_uppercase()));
            }
            if let (Some(choices), Some(v)) = (arg.choices, args.positional.get(arg.name)) {
                if !choices.contains(&v.as_str()) {
                    return fail(format!(
                        "{} must be one of {}, not `{v}`{}",
                        arg.name.to_uppercase(),
                        choices.join(", "),
                        did_you_mean(v, choices.iter().copied())
                    ));
                }
            }
        }
        Ok(args)
    }

    /// A positional argument or option by name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.positional.get(name).or_else(|| self.options.get(name)).map(String::as_str)
    }

    /// Whether a flag was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(name)
    }

    /// The words of a `Rest` argument.
    pub fn rest(&self) -> &[String] {
        &self.rest
    }

    /// A positional argument or option parsed as `T`; the error names it and shows the usage.
    pub fn parse_as<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, CellError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                self.usage_error(format!("{} expects a {}, got `{v}`", display_name(name), std::any::type_name::<T>().rsplit("::").next().unwrap_or("value")))
            }),
        }
    }

    /// An error with this command's usage line.
    pub fn usage_error(&self, message: impl Into<String>) -> CellError {
        CellError { name: "UsageError".into(), message: format!("{}\nusage: {}", message.into(), self.usage) }
    }
}

fn display_name(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
        format!("--{name}")
    } else {
        name.to_string()
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !s.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_follow_shell_quoting() {
        assert_eq!(words(r#"generate "the cat" --top-k 5 'it''s' a\ b"#).unwrap(), vec!["generate", "the cat", "--top-k", "5", "its", "a b"]);
        assert_eq!(words(r#""say \"hi\"""#).unwrap(), vec![r#"say "hi""#]);
        assert!(words("\"open").unwrap_err().contains("unclosed"));
        assert_eq!(words(r#""""#).unwrap(), vec![""], "an empty quoted word is a word");
    }

    #[test]
    fn cells_split_into_commands_cell_commands_and_rust() {
        let Cell::Commands(c) = split_cell("%seed 1\n# a comment\n\n%train 10\n").unwrap() else { panic!() };
        assert_eq!(c.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["seed", "train"]);
        let Cell::Commands(c) = split_cell("%%time\n%step 3\n").unwrap() else { panic!() };
        assert_eq!((c[0].name.as_str(), c[0].body.as_deref()), ("time", Some("%step 3\n")));
        let Cell::Commands(c) = split_cell("%generate?").unwrap() else { panic!() };
        assert!(c[0].help);
        assert!(matches!(split_cell("let x = 1;").unwrap(), Cell::Rust(_)));
    }

    #[test]
    fn a_rest_argument_keeps_the_options_that_follow_it() {
        let timeit = crate::session::commands::find("timeit").unwrap();
        let words: Vec<String> = ["--runs", "3", "%generate", "1", "--max-tokens", "8"].iter().map(|s| s.to_string()).collect();
        let args = Args::parse(timeit, &words, None).unwrap();
        assert_eq!(args.get("runs"), Some("3"));
        assert_eq!(args.rest(), &words[2..]);
    }
}
