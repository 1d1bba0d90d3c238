//! Chat templates: the model's Jinja template rendered with minijinja, configured the way
//! `transformers` renders them (trim_blocks, lstrip_blocks, `raise_exception`,
//! `strftime_now`, common Python string/dict methods).

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};

use super::strftime::strftime_utc_now;
use super::TokenizerError;

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

pub(super) fn render(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TokenizerError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function("strftime_now", |format: String| strftime_utc_now(&format));
    env.add_filter("tojson", tojson);
    env.set_unknown_method_callback(python_method);
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| TokenizerError::Template(describe(&e)))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| TokenizerError::Template(describe(&e)))
}

/// The error with its cause chain (minijinja puts the template's own message in the cause).
fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// ChatML, for models without a template.
pub(super) fn chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

/// `tojson` as `transformers` defines it: Python's `json.dumps` layout (`", "` and `": "`
/// separators, keys in insertion order, non-ASCII kept), optional `indent`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted for compatibility; the output already matches their usual values.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            out.push_str(
                &serde_json::to_string(s)
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
            );
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(&Value::from(key.to_string()), indent, depth + 1, out)?;
                out.push_str(": ");
                write_json(&v.get_item(key)?, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot convert {} to JSON", v.kind()),
            ))
        }
    }
    Ok(())
}

/// Python methods that Hugging Face templates call on strings and dicts.
fn python_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let unknown = || Err(Error::from(ErrorKind::UnknownMethod));
    if let Some(s) = value.as_str() {
        let arg_str = |i: usize| args.get(i).and_then(Value::as_str);
        return match method {
            "strip" => Ok(Value::from(strip(s, arg_str(0), true, true))),
            "lstrip" => Ok(Value::from(strip(s, arg_str(0), true, false))),
            "rstrip" => Ok(Value::from(strip(s, arg_str(0), false, true))),
            "upper" => Ok(Value::from(s.to_uppercase())),
            "lower" => Ok(Value::from(s.to_lowercase())),
            "title" | "capitalize" => state.apply_filter(method, std::slice::from_ref(value)),
            "startswith" | "endswith" => {
                let prefixes = match args.first() {
                    Some(a) if a.as_str().is_some() => vec![a.clone()],
                    Some(a) => a.try_iter()?.collect(),
                    None => return Err(Error::new(ErrorKind::MissingArgument, method.to_string())),
                };
                let hit = prefixes.iter().filter_map(Value::as_str).any(|p| {
                    if method == "startswith" {
                        s.starts_with(p)
                    } else {
                        s.ends_with(p)
                    }
                });
                Ok(Value::from(hit))
            }
            "split" => {
                let parts: Vec<Value> = match arg_str(0) {
                    Some(sep) if !sep.is_empty() => s.split(sep).map(Value::from).collect(),
                    _ => s.split_whitespace().map(Value::from).collect(),
                };
                Ok(Value::from(parts))
            }
            "replace" => match (arg_str(0), arg_str(1)) {
                (Some(from), Some(to)) => Ok(Value::from(s.replace(from, to))),
                _ => Err(Error::new(ErrorKind::MissingArgument, "replace(old, new)")),
            },
            _ => unknown(),
        };
    }
    if value.as_object().is_some() {
        return match method {
            "items" => state.apply_filter("items", std::slice::from_ref(value)),
            "keys" | "values" => {
                let items = state.apply_filter("items", std::slice::from_ref(value))?;
                let pick = usize::from(method == "values");
                let out: Result<Vec<Value>, Error> = items
                    .try_iter()?
                    .map(|pair| pair.get_item_by_index(pick))
                    .collect();
                Ok(Value::from(out?))
            }
            "get" => {
                let key = args.first().cloned().unwrap_or(Value::UNDEFINED);
                let found = value.get_item(&key)?;
                if found.is_undefined() {
                    Ok(args.get(1).cloned().unwrap_or(Value::from(())))
                } else {
                    Ok(found)
                }
            }
            _ => unknown(),
        };
    }
    unknown()
}

fn strip(s: &str, chars: Option<&str>, left: bool, right: bool) -> String {
    let matches = |c: char| match chars {
        Some(set) => set.contains(c),
        None => c.is_whitespace(),
    };
    let mut out = s;
    if left {
        out = out.trim_start_matches(matches);
    }
    if right {
        out = out.trim_end_matches(matches);
    }
    out.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello"),
        ]
    }

    #[test]
    fn python_string_methods_and_helpers_work_in_templates() {
        let t = "{% for m in messages %}{{ m.content.strip().upper() }}|{{ m.role.startswith('us') }}|{% endfor %}{{ bos_token }}{{ '  x '.rstrip() }}|{{ 'a,b'.split(',')|length }}|{{ messages[0]|tojson }}";
        let out = render(t, &msgs(), false, "<s>", "</s>").unwrap();
        assert_eq!(
            out,
            r#"HI|True|HELLO|False|<s>  x|2|{"role": "user", "content": "Hi"}"#
        );
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = "{{ {'a': [1, 2.5, none, true], 'b': {'c': 'é\\\"'}}|tojson }}|{{ [1, {'k': []}]|tojson(indent=2) }}";
        let out = render(t, &msgs(), false, "", "").unwrap();
        assert_eq!(
            out,
            "{\"a\": [1, 2.5, null, true], \"b\": {\"c\": \"é\\\"\"}}|[\n  1,\n  {\n    \"k\": []\n  }\n]"
        );
    }

    #[test]
    fn raise_exception_becomes_a_template_error() {
        let t = "{% if messages[0].role != 'system' %}{{ raise_exception('need a system turn') }}{% endif %}";
        let err = render(t, &msgs(), false, "", "").unwrap_err();
        assert!(err.to_string().contains("need a system turn"), "{err}");
    }

    #[test]
    fn strftime_now_formats_a_date() {
        let out = render("{{ strftime_now('%Y') }}", &msgs(), false, "", "").unwrap();
        let year: u32 = out.parse().unwrap();
        assert!((2024..3000).contains(&year), "{out}");
    }

    #[test]
    fn block_tags_do_not_leave_newlines_like_transformers() {
        let t = "{% for m in messages %}\n  {{ m.role }}\n{% endfor %}\n";
        assert_eq!(
            render(t, &msgs(), false, "", "").unwrap(),
            "  user\n  assistant\n"
        );
    }

    #[test]
    fn chatml_fallback() {
        assert_eq!(
            chatml(&msgs(), true),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
