//! A result type's JSON Schema as `%help` shows it: one line per field, nested fields
//! by path (`val.loss`, `trials[].score`, `differences.{key}`), with the type and the
//! field's doc comment.

use serde_json::{Map, Value};

/// How deep nested fields are listed; deeper ones show as their type.
const MAX_DEPTH: usize = 4;

/// The fields of `schema`, one line each, indented for `%help`.
pub fn describe(schema: &schemars::Schema) -> String {
    let root = schema.as_value();
    let defs = root.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut lines = vec![];
    walk(root, "", &defs, 0, &mut lines);
    if lines.is_empty() {
        lines.push(("(the value)".into(), type_name(root, &defs), description(root)));
    }
    let width = lines.iter().map(|(path, ..)| path.chars().count()).max().unwrap_or(0).min(28);
    let kind_width = lines.iter().map(|(_, kind, _)| kind.len()).max().unwrap_or(0).min(16);
    lines.iter().map(|(path, kind, text)| format!("  {path:<width$}  {kind:<kind_width$}  {text}").trim_end().to_string() + "\n").collect()
}

/// `schema` with a `$ref` followed, and a nullable `anyOf` / `type: [T, "null"]` reduced
/// to `T` (with whether null is allowed).
fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> (&'a Value, bool) {
    let mut schema = schema;
    let mut nullable = false;
    for _ in 0..8 {
        if let Some(name) = schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
            match defs.get(name) {
                Some(target) => schema = target,
                None => break,
            }
        } else if let Some(options) = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array) {
            let real: Vec<&Value> = options.iter().filter(|o| o.get("type").and_then(Value::as_str) != Some("null")).collect();
            nullable |= real.len() < options.len();
            match real.as_slice() {
                [one] => schema = one,
                _ => break,
            }
        } else {
            break;
        }
    }
    if let Some(types) = schema.get("type").and_then(Value::as_array) {
        nullable |= types.iter().any(|t| t == "null");
    }
    (schema, nullable)
}

fn type_name(schema: &Value, defs: &Map<String, Value>) -> String {
    let (schema, nullable) = resolve(schema, defs);
    let options = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array);
    let name = if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        values.iter().map(Value::to_string).collect::<Vec<_>>().join(" | ")
    } else if let Some(options) = options {
        // Unit variants are constants; tagged variants are objects.
        let constants: Option<Vec<String>> = options.iter().map(|o| resolve(o, defs).0.get("const").map(Value::to_string)).collect();
        constants.map_or_else(
            || options.iter().map(|o| type_name(o, defs)).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(" | "),
            |c| c.join(" | "),
        )
    } else {
        match schema.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(types)) => types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect::<Vec<_>>().join(" | "),
            _ => "any".into(),
        }
    };
    let name = match name.as_str() {
        "array" if schema.get("prefixItems").is_some() => {
            let items =
                schema["prefixItems"].as_array().map(|items| items.iter().map(|i| type_name(i, defs)).collect::<Vec<_>>().join(", ")).unwrap_or_default();
            format!("[{items}]")
        }
        "array" => format!("[{}]", schema.get("items").map_or("any".into(), |items| type_name(items, defs))),
        "object" if schema.get("properties").is_none() => match schema.get("additionalProperties") {
            Some(values) if values.is_object() => format!("{{name: {}}}", type_name(values, defs)),
            _ => "object".into(),
        },
        _ => name,
    };
    if nullable {
        format!("{name} | null")
    } else {
        name
    }
}

fn description(schema: &Value) -> String {
    schema.get("description").and_then(Value::as_str).unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ")
}

fn walk(schema: &Value, path: &str, defs: &Map<String, Value>, depth: usize, lines: &mut Vec<(String, String, String)>) {
    if depth >= MAX_DEPTH {
        return;
    }
    let (resolved, _) = resolve(schema, defs);
    if let Some(properties) = resolved.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = resolved.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        for (name, field) in properties {
            let field_path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            let shown = if required.contains(&name.as_str()) { field_path.clone() } else { format!("{field_path}?") };
            let text = description(field);
            let text = if text.is_empty() { description(resolve(field, defs).0) } else { text };
            lines.push((shown, type_name(field, defs), text));
            walk(field, &field_path, defs, depth + 1, lines);
        }
    } else if let Some(items) = resolved.get("items") {
        walk(items, &format!("{path}[]"), defs, depth, lines);
    } else if let Some(values) = resolved.get("additionalProperties").filter(|v| v.is_object()) {
        walk(values, &format!("{path}.{{name}}"), defs, depth, lines);
    }
}

#[cfg(test)]
mod tests {
    use schemars::JsonSchema;

    /// What a test returns.
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Outer {
        /// Steps taken.
        step: i64,
        /// Validation, when there is some.
        val: Option<Inner>,
        rows: Vec<Inner>,
        by_name: std::collections::BTreeMap<String, f64>,
    }

    /// A nested record.
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        /// The loss.
        loss: f64,
    }

    #[test]
    fn fields_are_listed_by_path_with_type_and_doc_comment() {
        let text = super::describe(&schemars::schema_for!(Outer));
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert!(lines.contains(&vec!["step", "integer", "Steps", "taken."]), "{text}");
        assert!(lines.iter().any(|l| l[0] == "val?" && l[1] == "object" && l[2..] == ["|", "null", "Validation,", "when", "there", "is", "some."]), "{text}");
        assert!(lines.contains(&vec!["val.loss", "number", "The", "loss."]), "{text}");
        assert!(lines.contains(&vec!["rows[].loss", "number", "The", "loss."]), "{text}");
        assert!(lines.iter().any(|l| l[0] == "by_name" && l[1] == "{name:" && l[2] == "number}"), "{text}");
    }
}
