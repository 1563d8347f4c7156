//! Post-processing of a suggestion before it leaves: no overlap with the text after the cursor,
//! no repetition of the lines that follow, indentation in the file's style (tabs or spaces), no
//! trailing whitespace, no whitespace-only suggestions.
//!
//! Pure functions on strings; they never see a document or a model.

/// How a file indents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indent {
    Tabs,
    Spaces(usize),
}

/// The file's indentation style from a sample of its lines: tabs when most indented lines start
/// with a tab, else spaces of the most common step between consecutive indentations. None when
/// nothing is indented.
pub fn detect_indent<'a>(lines: impl Iterator<Item = &'a str>) -> Option<Indent> {
    let (mut tabs, mut spaces) = (0, 0);
    let mut steps = [0usize; 9];
    let mut previous = 0;
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('\t') {
            tabs += 1;
            continue;
        }
        let width = line.len() - line.trim_start_matches(' ').len();
        if width > 0 {
            spaces += 1;
        }
        let step = width.abs_diff(previous);
        if (1..steps.len()).contains(&step) {
            steps[step] += 1;
        }
        previous = width;
    }
    if tabs == 0 && spaces == 0 {
        return None;
    }
    if tabs > spaces {
        return Some(Indent::Tabs);
    }
    let width = (2..steps.len()).max_by_key(|&step| (steps[step], std::cmp::Reverse(step))).filter(|&step| steps[step] > 0).unwrap_or(DEFAULT_TAB_WIDTH);
    Some(Indent::Spaces(width))
}

/// The width of a tab, and of an indentation level, until a file shows its own.
pub const DEFAULT_TAB_WIDTH: usize = 4;

/// What is around the cursor besides its line: the lines after it, the file's indentation and
/// the language's bracket pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Surroundings {
    pub next_lines: String,
    pub indent: Option<Indent>,
    /// From the language's grammar facts; the common three for text without a grammar.
    pub brackets: Vec<(char, char)>,
}

impl Default for Surroundings {
    fn default() -> Self {
        Surroundings { next_lines: String::new(), indent: None, brackets: vec![('(', ')'), ('[', ']'), ('{', '}')] }
    }
}

impl Surroundings {
    /// Columns per indentation level (and per tab): the file's, else the default.
    pub fn tab_width(&self) -> usize {
        match self.indent {
            Some(Indent::Spaces(width)) => width,
            _ => DEFAULT_TAB_WIDTH,
        }
    }

    /// One level of indentation as the file writes it.
    pub fn indent_unit(&self) -> String {
        match self.indent {
            Some(Indent::Tabs) => "\t".to_string(),
            _ => " ".repeat(self.tab_width()),
        }
    }
}

/// Cleans a raw suggestion for a cursor whose line reads `line_head|line_tail`.
pub fn clean_suggestion(line_head: &str, suggestion: &str, line_tail: &str, surroundings: &Surroundings) -> String {
    let mut res: String = suggestion.split('\n').map(str::trim_end).collect::<Vec<_>>().join("\n");
    // A multi-line suggestion keeps its leading newline (it starts the next line), but never
    // ends in empty lines.
    while res.ends_with('\n') {
        res.pop();
    }
    res = realign_first_line(line_head, &res);
    res = trim_overlap_with_tail(line_head, &res, line_tail, &surroundings.brackets);
    if line_tail.trim().is_empty() {
        res = drop_repeated_next_lines(line_head, &res, &surroundings.next_lines);
    }
    if let Some(indent) = surroundings.indent {
        res = reindent(&res, indent);
    }
    if res.trim().is_empty() {
        return String::new();
    }
    res
}

/// At a line whose head is only indentation (an editor's auto-indent), a suggestion that
/// starts with that indentation again (the model wrote the line from its start) would indent the
/// line twice: the first line loses the head's width of leading white space. Deeper
/// indentation than the head's stays deeper.
fn realign_first_line(line_head: &str, suggestion: &str) -> String {
    if line_head.is_empty() || !line_head.chars().all(|ch| ch == ' ' || ch == '\t') {
        return suggestion.to_string();
    }
    let head_columns = crate::engine::stop::indent_columns(line_head, DEFAULT_TAB_WIDTH);
    let first_line = suggestion.split('\n').next().unwrap_or_default();
    let leading: String = first_line.chars().take_while(|ch| *ch == ' ' || *ch == '\t').collect();
    if leading.is_empty() || crate::engine::stop::indent_columns(&leading, DEFAULT_TAB_WIDTH) < head_columns {
        return suggestion.to_string();
    }
    // Drop leading characters until the head's width is covered.
    let mut columns = 0;
    let mut cut = 0;
    for ch in leading.chars() {
        if columns >= head_columns {
            break;
        }
        columns += if ch == '\t' { DEFAULT_TAB_WIDTH } else { 1 };
        cut += ch.len_utf8();
    }
    suggestion[cut..].to_string()
}

/// Cuts the suggestion where it starts repeating the lines after the cursor: the model has seen
/// them and tends to write them again. A one-line suggestion that makes the cursor line equal to
/// the next non-blank line is dropped.
fn drop_repeated_next_lines(line_head: &str, suggestion: &str, next_lines: &str) -> String {
    // Lines compare with their indentation: a `}` that closes an outer block is not the `}`
    // below it at another depth.
    let Some(next) = next_lines.lines().map(str::trim_end).find(|line| !line.trim().is_empty()) else {
        return suggestion.to_string();
    };
    let mut lines = suggestion.split('\n');
    let first = lines.next().unwrap_or_default();
    if format!("{line_head}{first}").trim_end() == next {
        return String::new();
    }
    let mut kept = first.to_string();
    for line in lines {
        if line.trim_end() == next {
            break;
        }
        kept.push('\n');
        kept.push_str(line);
    }
    kept.trim_end().to_string()
}

/// Rewrites the indentation of the suggestion's later lines (each carries its own) in the file's
/// style: tabs become spaces of the file's width; runs of four spaces (the models' habit) become
/// tabs in a tab-indented file.
fn reindent(suggestion: &str, indent: Indent) -> String {
    let mut lines = suggestion.split('\n');
    let mut out = lines.next().unwrap_or_default().to_string();
    for line in lines {
        let body = line.trim_start_matches([' ', '\t']);
        let leading = &line[..line.len() - body.len()];
        // The model writes tabs and four-space levels whatever the file does.
        let columns = crate::engine::stop::indent_columns(leading, DEFAULT_TAB_WIDTH);
        let converted = match indent {
            Indent::Tabs if leading.contains(' ') => format!("{}{}", "\t".repeat(columns / DEFAULT_TAB_WIDTH), " ".repeat(columns % DEFAULT_TAB_WIDTH)),
            Indent::Spaces(width) if leading.contains('\t') => {
                let tabs = leading.chars().filter(|&ch| ch == '\t').count();
                " ".repeat(tabs * width + (columns - tabs * DEFAULT_TAB_WIDTH))
            }
            _ => leading.to_string(),
        };
        out.push('\n');
        out.push_str(&converted);
        out.push_str(body);
    }
    out
}

/// Removes the end of the suggestion that repeats the start of the text after the cursor: the
/// whole rest of the line, or closing brackets that would leave the line with more closers
/// than openers (`print(|)` must not gain a second `)`).
fn trim_overlap_with_tail(line_head: &str, suggestion: &str, line_tail: &str, brackets: &[(char, char)]) -> String {
    let is_closer = |ch: char| brackets.iter().any(|(_, close)| *close == ch);
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
        if overlap.chars().all(is_closer) && excess_closers(&format!("{line_head}{suggestion}{line_tail}"), brackets) {
            return stripped.to_string();
        }
    }
    suggestion.to_string()
}

/// Whether any bracket kind closes more often than it opens on this text.
fn excess_closers(text: &str, brackets: &[(char, char)]) -> bool {
    brackets.iter().any(|&(open, close)| {
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
        ("    ", "    if depth < 0:", "", "if depth < 0:"),
        ("        ", "        return x\n    y = 1", "", "return x\n    y = 1"),
        ("    ", "        deeper()", "", "    deeper()"),
        ("\t", "\tcall()", "", "call()"),
        ("        ", "  x", "", "  x"),
    ];

    const T: Option<Indent> = Some(Indent::Tabs);
    const S2: Option<Indent> = Some(Indent::Spaces(2));
    const S4: Option<Indent> = Some(Indent::Spaces(4));

    /// language, line_head, raw suggestion, line_tail, the lines after the cursor line, the file's
    /// indentation, expected.
    #[allow(clippy::type_complexity)]
    const IN_CONTEXT: &[(&str, &str, &str, &str, &str, Option<Indent>, &str)] = &[
        // Overlap with the text after the cursor.
        ("python", "    print(", "total)", ")", "", S4, "total"),
        ("python", "    items.append(", "value)", ")\n", "", S4, "value"),
        ("python", "x = {", "'a': 1}", "}", "", S4, "'a': 1"),
        ("rust", "    let v = vec![", "1, 2, 3]", "];", "", S4, "1, 2, 3"),
        ("rust", "    println!(", "\"{}\", x)", ");", "", S4, "\"{}\", x"),
        ("rust", "    if let Some(x) = map.get(", "&key)", ") {", "", S4, "&key"),
        ("javascript", "  console.log(", "result)", ");", "", S2, "result"),
        ("javascript", "  const xs = [", "1, 2]", "];", "", S2, "1, 2"),
        ("go", "\tfmt.Println(", "err)", ")", "", T, "err"),
        ("go", "\tif err := f(", "ctx)", "); err != nil {", "", T, "ctx"),
        ("c", "    printf(", "\"%d\\n\", n)", ");", "", S4, "\"%d\\n\", n"),
        ("lua", "  print(", "name)", ")", "", S2, "name"),
        ("java", "        System.out.println(", "msg)", ");", "", S4, "msg"),
        ("bash", "echo \"$(", "date)", ")\"", "", S4, "date"),
        // A tail that is not only closers is kept when the suggestion does not end with it.
        ("python", "    return max(", "a, b", "))", "", S4, "a, b"),
        ("rust", "    foo(", "bar(1), 2", ")", "", S4, "bar(1), 2"),
        // No repetition of the lines that follow.
        ("python", "    ", "return result", "", "    return result\n", S4, ""),
        ("python", "    total = ", "0", "", "    total = 0\n", S4, ""),
        ("rust", "    ", "Ok(())", "", "\n    Ok(())\n}\n", S4, ""),
        ("javascript", "  ", "return x;", "", "  return x;\n}\n", S2, ""),
        ("go", "\t", "return nil", "", "\treturn nil\n}\n", T, ""),
        ("c", "    ", "return 0;", "", "    return 0;\n}\n", S4, ""),
        ("lua", "  ", "end", "", "  end\n", S2, ""),
        ("lua", "  ", "end", "", "end\n", S2, "end"),
        ("rust", "    ", "}", "", "}\n", S4, "}"),
        ("python", "", "\n    x = 1\n    return x", "", "    return x\n", S4, "\n    x = 1"),
        ("rust", "", "\n    let y = 2;\n    y\n}", "", "    y\n}\n", S4, "\n    let y = 2;"),
        ("javascript", "", "\n  a();\n  b();\n}", "", "  b();\n}\n", S2, "\n  a();"),
        ("go", "", "\n\tx := 1\n\treturn x\n}", "", "\treturn x\n}\n", T, "\n\tx := 1"),
        ("java", "", "\n        int a = 1;\n        return a;", "", "        return a;\n    }\n", S4, "\n        int a = 1;"),
        ("lua", "", "\n  local n = 0\n  return n\nend", "", "  return n\nend\n", S2, "\n  local n = 0"),
        ("c", "", "\n    int i;\n    return i;", "", "\n\n    return i;\n", S4, "\n    int i;"),
        ("rust", "", "\n        x\n    }\n}", "", "}\n", S4, "\n        x\n    }"),
        // Different text below is not repetition.
        ("python", "    ", "return total", "", "    print(total)\n", S4, "return total"),
        ("rust", "    let n = ", "items.len();", "", "    let m = 0;\n", S4, "items.len();"),
        ("go", "\tn := ", "len(xs)", "", "\tm := 0\n", T, "len(xs)"),
        ("javascript", "  const y = ", "x + 1;", "", "  return y;\n", S2, "x + 1;"),
        // Indentation in the file's style.
        ("go", "", "\n    x := 1\n    return x", "", "", T, "\n\tx := 1\n\treturn x"),
        ("go", "", "\n        nested()", "", "", T, "\n\t\tnested()"),
        ("c", "", "\n    if (a) {\n        b();\n    }", "", "", T, "\n\tif (a) {\n\t\tb();\n\t}"),
        ("python", "", "\n\tx = 1\n\treturn x", "", "", S4, "\n    x = 1\n    return x"),
        ("javascript", "", "\n\tfoo();", "", "", S2, "\n  foo();"),
        ("lua", "", "\n\tlocal a = 1", "", "", S2, "\n  local a = 1"),
        ("rust", "", "\n\t\tdeep();", "", "", S4, "\n        deep();"),
        ("java", "", "\n    return 1;", "", "", S4, "\n    return 1;"),
        ("python", "", "\n    pass", "", "", None, "\n    pass"),
        ("go", "", "\n\treturn", "", "", T, "\n\treturn"),
        // Whitespace.
        ("python", "x = ", "  \n  ", "", "", S4, ""),
        ("rust", "let a = ", "b;   ", "", "", S4, "b;"),
        ("javascript", "", "\n  a();   \n\n", "", "", S2, "\n  a();"),
        ("go", "x := ", "\t", "", "", T, ""),
        ("lua", "local s = ", "'a'  ", "", "", S2, "'a'"),
        ("bash", "if [ -f ", "\"$f\" ]; then  ", "", "", S2, "\"$f\" ]; then"),
        ("c", "int n = ", "0; ", "", "", S4, "0;"),
        ("java", "int n = ", "", "", "", S4, ""),
    ];

    #[test]
    fn golden_cases_in_context() {
        let languages: std::collections::BTreeSet<&str> = IN_CONTEXT.iter().map(|case| case.0).collect();
        assert!(languages.len() >= 6 && IN_CONTEXT.len() + CASES.len() >= 60);
        for (language, line_head, suggestion, line_tail, next_lines, indent, expected) in IN_CONTEXT {
            let surroundings = Surroundings { next_lines: next_lines.to_string(), indent: *indent, ..Surroundings::default() };
            assert_eq!(
                clean_suggestion(line_head, suggestion, line_tail, &surroundings),
                *expected,
                "{language}: {line_head:?} + {suggestion:?} before {line_tail:?}, then {next_lines:?}"
            );
        }
    }

    #[test]
    fn indentation_is_read_from_the_file() {
        assert_eq!(detect_indent("fn f() {\n\tlet a = 1;\n\tif a {\n\t\tb();\n\t}\n}\n".lines()), Some(Indent::Tabs));
        assert_eq!(detect_indent("def f():\n    a = 1\n    if a:\n        b()\n".lines()), Some(Indent::Spaces(4)));
        assert_eq!(detect_indent("function f() {\n  a();\n  if (b) {\n    c();\n  }\n}\n".lines()), Some(Indent::Spaces(2)));
        assert_eq!(detect_indent("a = 1\nb = 2\n".lines()), None);
    }

    #[test]
    fn golden_cases() {
        for (line_head, suggestion, line_tail, expected) in CASES {
            assert_eq!(
                clean_suggestion(line_head, suggestion, line_tail, &Surroundings::default()),
                *expected,
                "{line_head:?} + {suggestion:?} before {line_tail:?}"
            );
        }
    }
}
