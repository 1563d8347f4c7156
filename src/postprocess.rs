//! Post-processing of a suggestion before it leaves: no overlap with the text after the cursor,
//! no trailing whitespace, no whitespace-only suggestions.
//!
//! Pure functions on strings; they never see a document or a model.

/// Cleans a raw suggestion for a cursor whose line reads `line_head|line_tail`.
pub fn clean_suggestion(line_head: &str, suggestion: &str, line_tail: &str) -> String {
    let mut res: String = suggestion.split('\n').map(str::trim_end).collect::<Vec<_>>().join("\n");
    // A multi-line suggestion keeps its leading newline (it starts the next line), but never
    // ends in empty lines.
    while res.ends_with('\n') {
        res.pop();
    }
    res = trim_overlap_with_tail(line_head, &res, line_tail);
    if res.trim().is_empty() {
        return String::new();
    }
    res
}

/// Removes the end of the suggestion that repeats the start of the text after the cursor: the
/// whole rest of the line, or closing brackets that would leave the line with more closers
/// than openers (`print(|)` must not gain a second `)`).
fn trim_overlap_with_tail(line_head: &str, suggestion: &str, line_tail: &str) -> String {
    let tail = line_tail.trim_end();
    if tail.is_empty() || suggestion.contains('\n') {
        return suggestion.to_string();
    }
    if !tail.chars().all(is_closer) {
        if let Some(stripped) = suggestion.strip_suffix(tail) {
            return stripped.to_string();
        }
    }
    let boundaries: Vec<usize> = tail.char_indices().map(|(idx, _)| idx).skip(1).chain([tail.len()]).collect();
    for &overlap_len in boundaries.iter().rev() {
        let overlap = &tail[..overlap_len];
        let Some(stripped) = suggestion.strip_suffix(overlap) else { continue };
        if overlap.chars().all(is_closer) && excess_closers(&format!("{line_head}{suggestion}{line_tail}")) {
            return stripped.to_string();
        }
    }
    suggestion.to_string()
}

fn is_closer(ch: char) -> bool {
    matches!(ch, ')' | ']' | '}')
}

/// Whether any bracket kind closes more often than it opens on this text.
fn excess_closers(text: &str) -> bool {
    [('(', ')'), ('[', ']'), ('{', '}')].iter().any(|&(open, close)| {
        let n_open = text.chars().filter(|&ch| ch == open).count();
        let n_close = text.chars().filter(|&ch| ch == close).count();
        n_close > n_open
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// line_head, raw suggestion, line_tail, expected.
    const CASES: &[(&str, &str, &str, &str)] = &[
        ("    print(\"Hello, \" + ", "name + \"!\")", ")", "name + \"!\""),
        ("print(", "x)", ")", "x"),
        ("foo(bar(", "1, 2))", "))", "1, 2"),
        ("let v = vec![", "1, 2]", "];", "1, 2"),
        ("call(", "f(a)", ")", "f(a)"),
        ("x = ", "compute(1)", "", "compute(1)"),
        ("x = ", "   ", "", ""),
        ("x = ", "y   ", "", "y"),
        ("if a", " == b:", " == b:", ""),
        ("", "\n    return 1\n\n", "", "\n    return 1"),
        ("def f(", "a, b):", "):", "a, b"),
    ];

    #[test]
    fn golden_cases() {
        for (line_head, suggestion, line_tail, expected) in CASES {
            assert_eq!(
                clean_suggestion(line_head, suggestion, line_tail),
                *expected,
                "{line_head:?} + {suggestion:?} before {line_tail:?}"
            );
        }
    }
}
