//! Robust reading of the JSON that LLMs write: code fences, `<think>` blocks, text before and after,
//! Chinese (full-width) punctuation, single quotes, trailing commas, scores written as "4/5" or "4分".

use serde_json::Value;

/// The first JSON object in `text` that parses after repair, or `None`.
pub fn extract_json(text: &str) -> Option<Value> {
    let text = strip_think(text);
    // Fast path: the whole text (or a fenced block) is already valid.
    for candidate in fenced_blocks(&text).into_iter().chain([text.to_string()]) {
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(candidate.trim()) {
            return Some(v);
        }
    }
    // Repair from each opening brace on, so that an apostrophe in the prose before the object
    // cannot open a string.
    let chars: Vec<char> = text.chars().collect();
    for (start, c) in chars.iter().enumerate() {
        if !matches!(c, '{' | '｛') {
            continue;
        }
        let rest: String = chars[start..].iter().collect();
        let repaired: Vec<char> = repair(&rest).chars().collect();
        if let Some(end) = balanced_end(&repaired, 0) {
            let candidate: String = repaired[..=end].iter().collect();
            if let Ok(v @ Value::Object(_)) =
                serde_json::from_str::<Value>(&drop_trailing_commas(&candidate))
            {
                return Some(v);
            }
        }
    }
    None
}

/// Removes `<think>...</think>` reasoning (Qwen3) and an unclosed trailing `<think>`.
fn strip_think(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("<think>") {
        out.push_str(&rest[..i]);
        match rest[i..].find("</think>") {
            Some(j) => rest = &rest[i + j + "</think>".len()..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The contents of ``` fenced blocks, in order.
fn fenced_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("```") {
        let after = &rest[i + 3..];
        // Skip the info string (`json`, `JSON`, ...) up to the end of the line.
        let body_start = after.find('\n').map(|n| n + 1).unwrap_or(0);
        let body = &after[body_start..];
        match body.find("```") {
            Some(j) => {
                out.push(body[..j].to_string());
                rest = &body[j + 3..];
            }
            None => {
                out.push(body.to_string());
                break;
            }
        }
    }
    out
}

/// Maps full-width structural punctuation and single-quoted strings to JSON outside of strings;
/// text inside strings is kept as written.
fn repair(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // The character that closes the string we are in, if any.
    let mut close: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        match close {
            Some(end) => {
                if escaped {
                    escaped = false;
                    out.push(c);
                } else if c == '\\' {
                    escaped = true;
                    out.push(c);
                } else if c == end {
                    close = None;
                    out.push('"');
                } else if c == '"' {
                    // An ASCII quote inside a string opened by another quote character.
                    out.push_str("\\\"");
                } else if c == '\n' {
                    out.push_str("\\n");
                } else {
                    out.push(c);
                }
            }
            None => match c {
                '"' | '＂' => {
                    close = Some('"');
                    out.push('"');
                }
                '“' => {
                    close = Some('”');
                    out.push('"');
                }
                '\'' => {
                    close = Some('\'');
                    out.push('"');
                }
                '：' => out.push(':'),
                '，' | '、' => out.push(','),
                '｛' => out.push('{'),
                '｝' => out.push('}'),
                '［' | '【' => out.push('['),
                '］' | '】' => out.push(']'),
                _ => out.push(c),
            },
        }
    }
    out
}

/// The index of the `}` that closes the `{` at `start` (strings respected), if any.
fn balanced_end(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, &c) in chars.iter().enumerate().skip(start) {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return (c == '}').then_some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn drop_trailing_commas(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut in_str = false;
    let mut escaped = false;
    for (i, &c) in chars.iter().enumerate() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            out.push(c);
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        if c == ',' {
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(next, Some('}') | Some(']')) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// A 1..=5 score from a number or a string such as "4", "4/5", "4分", "score: 4"; `None` otherwise.
pub fn score_value(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let s = s.trim();
            let start = s.find(|c: char| c.is_ascii_digit())?;
            let num: String = s[start..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            num.parse().ok()?
        }
        Value::Object(o) => {
            return o
                .get("score")
                .or_else(|| o.get("value"))
                .and_then(score_value)
        }
        _ => return None,
    };
    (1.0..=5.0).contains(&x).then_some(x)
}

/// A yes/no from `true`, `"yes"`, `"是"`, `1` ...
pub fn bool_value(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|x| x != 0.0),
        Value::String(s) => {
            let s = s.trim().to_lowercase();
            if ["yes", "true", "y", "是", "有", "caught"]
                .iter()
                .any(|w| s.starts_with(w))
            {
                Some(true)
            } else if ["no", "false", "n", "否", "没有", "无", "missed"]
                .iter()
                .any(|w| s.starts_with(w))
            {
                Some(false)
            } else {
                None
            }
        }
        Value::Object(o) => o
            .get("caught")
            .or_else(|| o.get("value"))
            .and_then(bool_value),
        _ => None,
    }
}

/// A list of strings from an array (of strings or numbers) or a comma-separated string.
pub fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter_map(|x| match x {
                Value::String(s) => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|s| !s.is_empty())
            .collect(),
        Value::String(s) => s
            .split([',', '，', ';'])
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_fenced_and_surrounded_json() {
        assert_eq!(extract_json(r#"{"a": 1}"#), Some(json!({"a": 1})));
        assert_eq!(
            extract_json("Here you go:\n```json\n{\"a\": 2}\n```\nHope this helps"),
            Some(json!({"a": 2}))
        );
        assert_eq!(
            extract_json("Sure! {\"a\": {\"b\": [1, 2]}} and more {text}"),
            Some(json!({"a": {"b": [1, 2]}}))
        );
        assert_eq!(
            extract_json("<think>{\"a\": 0} hmm</think>{\"a\": 3}"),
            Some(json!({"a": 3}))
        );
        assert_eq!(extract_json("no json here"), None);
        assert_eq!(extract_json("{\"a\": 1"), None);
    }

    #[test]
    fn chinese_punctuation_single_quotes_and_trailing_commas() {
        let v = extract_json("评分如下：｛“inquiry”：4，“reason”：“问得很细，很好”，｝").unwrap();
        assert_eq!(v, json!({"inquiry": 4, "reason": "问得很细，很好"}));
        let v = extract_json("{'reply': 'It\u{2019}s been two days', 'disclosed': ['duration',],}")
            .unwrap();
        assert_eq!(
            v,
            json!({"reply": "It’s been two days", "disclosed": ["duration"]})
        );
        // A quote inside a string opened by a full-width quote stays text.
        let v = extract_json("{“reason”：“he said \"hi\"”}").unwrap();
        assert_eq!(v["reason"], "he said \"hi\"");
    }

    #[test]
    fn score_and_bool_values() {
        for (v, want) in [
            (json!(4), Some(4.0)),
            (json!("4/5"), Some(4.0)),
            (json!("4分"), Some(4.0)),
            (json!({"score": "3"}), Some(3.0)),
            (json!(7), None),
            (json!("n/a"), None),
        ] {
            assert_eq!(score_value(&v), want, "{v}");
        }
        assert_eq!(bool_value(&json!("是")), Some(true));
        assert_eq!(bool_value(&json!("No")), Some(false));
        assert_eq!(bool_value(&json!(null)), None);
        assert_eq!(string_list(&json!("a, b，c")), vec!["a", "b", "c"]);
    }
}
