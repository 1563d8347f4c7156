//! Stop rules applied to the growing suggestion text after every generated token.
//!
//! Pure functions on strings, so they are tested without a model. A rule returns where to cut
//! the text; the decode loop stops as soon as any rule fires.

use crate::sync::MutexExt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRules {
    /// Stop at the end of the first line.
    pub single_line: bool,
    /// Stop after this many complete lines (multi-line suggestions); 0 means no limit.
    pub max_lines: usize,
    /// Prose: stop after the first sentence (a `.`, `!` or `?` followed by white space).
    pub sentence: bool,
    /// The structure of the code around the cursor, when it is known.
    pub scope: Option<ScopeRules>,
}

impl Default for StopRules {
    fn default() -> Self {
        StopRules { single_line: true, max_lines: 0, sentence: false, scope: None }
    }
}

/// How a language writes brackets, strings and line comments: enough to follow bracket depth in
/// generated text without a parser.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lexical {
    /// Opening and closing bracket pairs.
    pub brackets: Vec<(char, char)>,
    /// Characters that open and close a string literal.
    pub quotes: Vec<char>,
    pub line_comments: Vec<String>,
    /// `'x'` and `'\x'` are character literals (where `'` is not a quote).
    pub char_literals: bool,
}

impl Lexical {
    fn closer_of(&self, ch: char) -> Option<char> {
        self.brackets.iter().find(|(open, _)| *open == ch).map(|(_, close)| *close)
    }

    fn is_closer(&self, ch: char) -> bool {
        self.brackets.iter().any(|(_, close)| *close == ch)
    }

    /// The closers that the brackets left open in `text` expect, innermost last; None when a
    /// closer in `text` has no opener there.
    pub fn unclosed(&self, text: &str) -> Vec<char> {
        let mut scan = Scan::new(self, Vec::new());
        for (idx, ch) in text.char_indices() {
            scan.step(text, idx, ch);
        }
        scan.stack
    }
}

/// The scanner's state over a text: expected closers, and whether it is inside a string or a
/// line comment.
struct Scan<'lex> {
    lexical: &'lex Lexical,
    stack: Vec<char>,
    quote: Option<char>,
    escaped: bool,
    comment: bool,
    /// Characters still to skip (the rest of a character literal).
    skip: usize,
}

/// What one character did to the bracket depth.
enum Step {
    Other,
    /// A closer that matched the innermost open bracket.
    Closed,
    /// A closer with no open bracket before it in the scanned text.
    Unmatched,
}

impl<'lex> Scan<'lex> {
    fn new(lexical: &'lex Lexical, stack: Vec<char>) -> Scan<'lex> {
        Scan { lexical, stack, quote: None, escaped: false, comment: false, skip: 0 }
    }

    fn step(&mut self, text: &str, idx: usize, ch: char) -> Step {
        if ch == '\n' {
            // Strings and comments in generated code rarely span lines; a lost quote must not
            // blind the scanner for the rest of the suggestion.
            self.quote = None;
            self.comment = false;
            self.escaped = false;
            return Step::Other;
        }
        if self.comment {
            return Step::Other;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Step::Other;
        }
        if ch == '\'' && self.lexical.char_literals {
            let mut rest = text[idx + 1..].chars();
            self.skip = match (rest.next(), rest.next(), rest.next()) {
                (Some('\\'), Some(_), Some('\'')) => 3,
                (Some(first), Some('\''), _) if first != '\\' => 2,
                _ => 0,
            };
            return Step::Other;
        }
        if let Some(quote) = self.quote {
            if self.escaped {
                self.escaped = false;
            } else if ch == '\\' {
                self.escaped = true;
            } else if ch == quote {
                self.quote = None;
            }
            return Step::Other;
        }
        if self.lexical.line_comments.iter().any(|token| text[idx..].starts_with(token.as_str())) {
            self.comment = true;
            return Step::Other;
        }
        if self.lexical.quotes.contains(&ch) {
            self.quote = Some(ch);
            return Step::Other;
        }
        if let Some(close) = self.lexical.closer_of(ch) {
            self.stack.push(close);
            return Step::Other;
        }
        if self.lexical.is_closer(ch) {
            if self.stack.last() == Some(&ch) {
                self.stack.pop();
                return Step::Closed;
            }
            return Step::Unmatched;
        }
        Step::Other
    }
}

/// The width in columns of a line's indentation.
pub fn indent_columns(line: &str, tab_width: usize) -> usize {
    line.chars().take_while(|ch| *ch == ' ' || *ch == '\t').map(|ch| if ch == '\t' { tab_width } else { 1 }).sum()
}

/// Stop rules from the structure of the code around the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRules {
    pub lexical: Lexical,
    /// The closers that brackets opened on the cursor line before the cursor expect.
    pub open: Vec<char>,
    /// How many closers of enclosing scopes the document lacks: a suggestion may write that many;
    /// one more closes a scope that is already closed below the cursor, and the suggestion ends
    /// before it. `usize::MAX` when unknown.
    pub missing_closers: usize,
    /// Multi-line suggestions: a later line indented less than this many columns is outside the
    /// block and ends the suggestion before it, unless it starts with a closer the rules above
    /// allow (the block's own end), which ends the suggestion after that line.
    pub body_indent: Option<usize>,
    pub tab_width: usize,
}

impl ScopeRules {
    fn check(&self, text: &str) -> Option<usize> {
        let mut scan = Scan::new(&self.lexical, self.open.clone());
        let mut missing = self.missing_closers;
        let mut line_start = 0;
        let mut first_line = true;
        let mut line_judged = false;
        let mut stop_at_line_end = false;
        for (idx, ch) in text.char_indices() {
            if ch == '\n' {
                if stop_at_line_end {
                    return Some(idx);
                }
                line_start = idx + 1;
                first_line = false;
                line_judged = false;
                scan.step(text, idx, ch);
                continue;
            }
            if !first_line && !line_judged && !ch.is_whitespace() && scan.quote.is_none() {
                line_judged = true;
                if let Some(body_indent) = self.body_indent {
                    let indent = indent_columns(&text[line_start..idx], self.tab_width);
                    if indent < body_indent {
                        let closes_allowed = scan.stack.last() == Some(&ch) || (scan.stack.is_empty() && missing > 0 && self.lexical.is_closer(ch));
                        if !closes_allowed {
                            return Some(line_start - 1);
                        }
                        stop_at_line_end = true;
                    }
                }
            }
            match scan.step(text, idx, ch) {
                Step::Unmatched if scan.stack.is_empty() && missing > 0 => {
                    if missing != usize::MAX {
                        missing -= 1;
                    }
                }
                Step::Unmatched => return Some(idx),
                Step::Closed | Step::Other => {}
            }
        }
        None
    }
}

/// Where the first sentence of `text` ends: after a `.`, `!` or `?` followed by white space, and
/// after a word of two letters or more (not `1.` of a list, nor `e.g.`).
fn sentence_end(text: &str) -> Option<usize> {
    let mut chars = text.char_indices().peekable();
    while let Some((idx, ch)) = chars.next() {
        if !matches!(ch, '.' | '!' | '?') || !chars.peek().is_some_and(|(_, next)| next.is_whitespace()) {
            continue;
        }
        let word: Vec<char> = text[..idx].chars().rev().take_while(|ch| ch.is_alphanumeric()).collect();
        let letters = word.iter().filter(|ch| ch.is_alphabetic()).count();
        if ch != '.' || letters >= 2 || (letters == 0 && word.is_empty() && idx > 0) {
            return Some(idx + ch.len_utf8());
        }
    }
    None
}

/// Stop rules still being worked out when their job is submitted (the syntax tree is parsed
/// off the keystroke path). The engine decodes the prompt meanwhile and waits for them before
/// its first generated token; a job that is interrupted stops waiting, and rules that do not
/// come within `LATE_RULES_WAIT` leave the job with its plain rules (`GenerateParams::stop`).
#[derive(Clone, Default)]
pub struct LateStopRules(std::sync::Arc<(std::sync::Mutex<Option<StopRules>>, std::sync::Condvar)>);

/// How long the engine waits for late stop rules (a parse of a very large file) before it
/// generates with the plain ones.
pub const LATE_RULES_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl LateStopRules {
    pub fn set(&self, rules: StopRules) {
        let (slot, ready) = &*self.0;
        *slot.locked() = Some(rules);
        ready.notify_all();
    }

    /// The rules if they are there.
    pub fn get(&self) -> Option<StopRules> {
        self.0 .0.locked().clone()
    }

    /// Waits up to `timeout` for the rules.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> Option<StopRules> {
        let (slot, ready) = &*self.0;
        let guard = slot.locked();
        let (guard, _) = ready.wait_timeout_while(guard, timeout, |rules| rules.is_none()).unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.clone()
    }
}

impl std::fmt::Debug for LateStopRules {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "LateStopRules({:?})", self.get())
    }
}

impl StopRules {
    pub fn multi_line(max_lines: usize) -> StopRules {
        StopRules { single_line: false, max_lines, ..StopRules::default() }
    }

    /// Returns the byte length the text must be cut to if a rule fires, else `None`.
    pub fn check(&self, text: &str) -> Option<usize> {
        let mut cut: Option<usize> = None;
        let mut keep_smallest = |at: usize| cut = Some(cut.map_or(at, |prev| prev.min(at)));
        if self.single_line {
            if let Some(newline_idx) = text.find('\n') {
                keep_smallest(newline_idx);
            }
        } else if self.max_lines > 0 {
            if let Some((newline_idx, _)) = text.match_indices('\n').nth(self.max_lines - 1) {
                keep_smallest(newline_idx);
            }
        }
        if self.sentence {
            if let Some(end) = sentence_end(text) {
                keep_smallest(end);
            }
        }
        if let Some(scope) = &self.scope {
            if let Some(at) = scope.check(text) {
                keep_smallest(at);
            }
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_rules_reach_a_waiter_on_another_thread() {
        let late = LateStopRules::default();
        assert_eq!(late.wait_timeout(std::time::Duration::from_millis(1)), None);
        let setter = late.clone();
        let thread = std::thread::spawn(move || setter.set(StopRules::multi_line(3)));
        assert_eq!(late.wait_timeout(std::time::Duration::from_secs(10)), Some(StopRules::multi_line(3)));
        thread.join().unwrap();
    }

    #[test]
    fn single_line_cuts_at_first_newline() {
        let rules = StopRules::default();
        assert_eq!(rules.check("radius * radius"), None);
        assert_eq!(rules.check("radius\n    x"), Some(6));
        assert_eq!(rules.check("\nfoo"), Some(0));
    }

    #[test]
    fn multi_line_counts_lines() {
        let rules = StopRules::multi_line(2);
        assert_eq!(rules.check("a\nb"), None);
        assert_eq!(rules.check("a\nb\nc"), Some(3));
        assert_eq!(StopRules::multi_line(0).check("a\nb\nc\n"), None);
    }

    fn c_like() -> Lexical {
        Lexical { brackets: vec![('(', ')'), ('[', ']'), ('{', '}')], quotes: vec!['"'], line_comments: vec!["//".into()], char_literals: true }
    }

    fn scope(open: &str, missing_closers: usize, body_indent: Option<usize>) -> StopRules {
        let lexical = c_like();
        let open = lexical.unclosed(open);
        StopRules { single_line: body_indent.is_none(), scope: Some(ScopeRules { lexical, open, missing_closers, body_indent, tab_width: 4 }), ..StopRules::default() }
    }

    #[test]
    fn sentences_end_at_their_terminator() {
        let rules = StopRules { sentence: true, ..StopRules::default() };
        assert_eq!(rules.check("the sum of the values"), None);
        assert_eq!(rules.check("the sum. Then"), Some(8));
        assert_eq!(rules.check("version 1.5 of it"), None);
        assert_eq!(rules.check("what? yes"), Some(5));
        assert_eq!(rules.check("see step 1. then build"), None, "a number");
        assert_eq!(rules.check("tools, e.g. cargo. Then"), Some(18));
    }

    #[test]
    fn a_closer_of_a_scope_closed_below_ends_the_suggestion() {
        // `    x += 1;|` inside a function whose `}` is in the document.
        assert_eq!(scope("    x += 1", 0, None).check("; }"), Some(2));
        // Brackets of the line and of the suggestion itself balance.
        assert_eq!(scope("    foo(a, ", 0, None).check("b[0])"), None);
        // A missing closer may be written once.
        assert_eq!(scope("", 1, None).check("} }"), Some(2));
        // Closers inside strings and comments do not count.
        assert_eq!(scope("", 0, None).check("x = \"}\"; // )"), None);
        // Mismatched closer.
        assert_eq!(scope("    foo(", 0, None).check("a]"), Some(1));
        // Character literals hold brackets; lifetimes are not literals.
        assert_eq!(scope("    if ch == ", 0, None).check("'}' || ch == '\\'' { x(); }"), None);
        assert_eq!(scope("fn f<'a>(x: &'a str", 0, None).check(") -> &'a str { x }"), None);
    }

    #[test]
    fn a_dedent_below_the_block_ends_the_suggestion() {
        let rules = scope("", 0, Some(4));
        // The next function, at the enclosing depth, is not part of this block.
        assert_eq!(rules.check("x = 1\n    y = 2\ndef g():"), Some(15));
        // Blank lines do not count; an indented continuation does.
        assert_eq!(rules.check("x = 1\n\n    y = 2\n\tz"), None);
        // A block's own closer at the opener's depth is kept, and ends the suggestion.
        let opened = scope("fn f() {", 1, Some(1));
        assert_eq!(opened.check("\n    body();\n}\nfn g() {}"), Some(14));
        // When the block is closed below, its closer is not written again.
        let closed = scope("", 0, Some(4));
        assert_eq!(closed.check("body();\n}"), Some(7));
        // Until the line has a character, it is not judged.
        assert_eq!(rules.check("x = 1\n  "), None);
    }
}
