//! Syntax: the languages Ghostline knows, their tree-sitter grammars, and what a document's tree
//! says about the cursor (code, comment, string or prose; inside a block or a bracket pair;
//! which closers the document lacks), turned into the shape of the suggestion and its stop
//! rules.
//!
//! A language is a folder under `grammars/`: `facts.toml` (language ids, file extensions,
//! comment tokens, quotes, brackets, block openers, prose or code) and, for a language with a
//! grammar, `context.scm`, a query that captures its `@comment`, `@string`, `@block` and (for
//! prose languages) `@code` regions. Both are compiled into the binary.
//!
//! Trees live with the documents (`src/documents.rs`) and are parsed again incrementally after
//! every edit (`tree.rs`). This module never sees LSP types and never calls the model.

mod tree;

use std::sync::LazyLock;

use serde::Deserialize;

use crate::engine::stop::{indent_columns, Lexical, ScopeRules};
use crate::engine::StopRules;

pub use tree::{CursorSyntax, Region, SyntaxTree};

/// What a language's `facts.toml` says.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Facts {
    pub language_ids: Vec<String>,
    pub extensions: Vec<String>,
    pub file_names: Vec<String>,
    pub line_comments: Vec<String>,
    pub quotes: Vec<char>,
    /// Bracket pairs, each written as its two characters (`"()"`).
    pub brackets: Vec<String>,
    /// Words or characters that open a block when a line's code ends with them.
    pub block_openers: Vec<String>,
    /// `'` opens a character literal only (`'x'`, `'\n'`), not a string: it is also a
    /// lifetime or label (Rust).
    pub char_literals: bool,
    /// The language is prose: sentence completions.
    pub prose: bool,
}

impl Facts {
    pub fn lexical(&self) -> Lexical {
        Lexical {
            brackets: self
                .brackets
                .iter()
                .filter_map(|pair| {
                    let mut chars = pair.chars();
                    Some((chars.next()?, chars.next()?))
                })
                .collect(),
            quotes: self.quotes.clone(),
            line_comments: self.line_comments.clone(),
            char_literals: self.char_literals,
        }
    }

    /// Whether the code of `line_head` ends with a block opener (a word opener must be a whole
    /// word: `do`, not `undo`) outside any bracket the line leaves open, except the opener's own
    /// (`d[1:` does not open a block, `describe("x", () => {` does).
    pub fn opens_block(&self, line_head: &str) -> bool {
        let lexical = self.lexical();
        let code = line_head.trim_end();
        self.block_openers.iter().any(|opener| {
            let Some(before) = code.strip_suffix(opener.as_str()) else { return false };
            let is_word = opener.chars().all(char::is_alphanumeric);
            if is_word && before.chars().last().is_some_and(|ch| ch.is_alphanumeric() || ch == '_') {
                return false;
            }
            let mut open = lexical.unclosed(code);
            let own = opener.chars().next().and_then(|first| lexical.brackets.iter().find(|(open, _)| *open == first).map(|(_, close)| *close));
            if own.is_some() && open.last() == own.as_ref() {
                open.pop();
            }
            own.is_some() || open.is_empty()
        })
    }
}

/// A language: its facts and, when it has one, its grammar with the context query.
pub struct Language {
    pub name: &'static str,
    pub facts: Facts,
    grammar: Option<tree::Grammar>,
}

impl std::fmt::Debug for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Language").field("name", &self.name).field("grammar", &self.grammar.is_some()).finish()
    }
}

type GrammarFn = fn() -> tree_sitter::Language;

macro_rules! language {
    ($name:literal, $grammar:expr) => {
        (
            $name,
            Some($grammar as GrammarFn),
            include_str!(concat!("../../grammars/", $name, "/facts.toml")),
            include_str!(concat!("../../grammars/", $name, "/context.scm")),
        )
    };
}

/// Every language: name, grammar, facts.toml, context.scm.
const SOURCES: &[(&str, Option<GrammarFn>, &str, &str)] = &[
    language!("rust", || tree_sitter_rust::LANGUAGE.into()),
    language!("python", || tree_sitter_python::LANGUAGE.into()),
    language!("javascript", || tree_sitter_javascript::LANGUAGE.into()),
    language!("typescript", || tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into()),
    language!("tsx", || tree_sitter_typescript::LANGUAGE_TSX.into()),
    language!("go", || tree_sitter_go::LANGUAGE.into()),
    language!("c", || tree_sitter_c::LANGUAGE.into()),
    language!("cpp", || tree_sitter_cpp::LANGUAGE.into()),
    language!("java", || tree_sitter_java::LANGUAGE.into()),
    language!("lua", || tree_sitter_lua::LANGUAGE.into()),
    language!("bash", || tree_sitter_bash::LANGUAGE.into()),
    language!("markdown", || tree_sitter_md::LANGUAGE.into()),
    ("text", None, include_str!("../../grammars/text/facts.toml"), ""),
];

static LANGUAGES: LazyLock<Vec<Language>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .filter_map(|&(name, grammar, facts, query)| {
            let facts: Facts = match toml::from_str(facts) {
                Ok(facts) => facts,
                Err(err) => {
                    tracing::error!(language = name, %err, "grammars/{name}/facts.toml is invalid; the language is left out");
                    return None;
                }
            };
            let grammar = grammar.and_then(|grammar| match tree::Grammar::new(grammar(), query) {
                Ok(grammar) => Some(grammar),
                Err(err) => {
                    tracing::error!(language = name, %err, "grammars/{name}/context.scm is invalid; the language has no syntax");
                    None
                }
            });
            Some(Language { name, facts, grammar })
        })
        .collect()
});

/// All languages Ghostline knows.
pub fn languages() -> &'static [Language] {
    &LANGUAGES
}

/// The language of a document: from its language id, else from its file name or extension.
pub fn language_for(language_id: &str, uri: &str) -> Option<&'static Language> {
    let id = language_id.to_ascii_lowercase();
    if let Some(language) = languages().iter().find(|language| language.facts.language_ids.contains(&id)) {
        return Some(language);
    }
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    let file_name = path.rsplit(['/', '\\']).next().unwrap_or_default();
    if let Some(language) = languages().iter().find(|language| language.facts.file_names.iter().any(|name| name == file_name)) {
        return Some(language);
    }
    let extension = file_name.rsplit_once('.').map(|(_, extension)| extension.to_ascii_lowercase())?;
    languages().iter().find(|language| language.facts.extensions.contains(&extension))
}

/// How the suggestion at a cursor is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Multi-line suggestions are allowed at all (the `multiLine` setting).
    pub multi_line: bool,
    pub max_lines: usize,
    pub tab_width: usize,
}

/// The stop rules without a syntax tree: several lines on an empty line, else one.
pub fn plain_stop_rules(line_head: &str, line_tail: &str, shape: Shape) -> StopRules {
    if shape.multi_line && line_head.trim().is_empty() && line_tail.trim().is_empty() {
        StopRules::multi_line(shape.max_lines)
    } else {
        StopRules::default()
    }
}

/// The stop rules for a suggestion at a cursor whose line reads `line_head|line_tail`:
/// prose and comments end with their sentence, strings with their line; code gets several lines
/// on a line that opens a block or an empty line in a block (not inside brackets), one line
/// mid-expression, and ends where the block ends (a dedent below it, or a closer of a scope the
/// document already closes).
pub fn stop_rules(language: &Language, cursor: &CursorSyntax, line_head: &str, line_tail: &str, shape: Shape) -> StopRules {
    match cursor.region {
        Region::Prose | Region::Comment => return StopRules { sentence: true, ..StopRules::default() },
        Region::String => return StopRules::default(),
        Region::Code => {}
    }
    let facts = &language.facts;
    let lexical = facts.lexical();
    let tail_closes_only = line_tail.trim().chars().all(|ch| lexical.brackets.iter().any(|(_, close)| *close == ch));
    let empty_line = line_head.trim().is_empty() && line_tail.trim().is_empty();
    let opener = !line_head.trim().is_empty() && tail_closes_only && facts.opens_block(line_head);
    let multi_line = shape.multi_line && !cursor.in_brackets && (empty_line || opener);
    let body_indent = match (multi_line, opener) {
        (false, _) => None,
        (true, true) => Some(indent_columns(line_head, shape.tab_width) + 1),
        (true, false) => Some(indent_columns(line_head, shape.tab_width)),
    };
    // One line may close what the line opens; several lines close a scope only when the
    // document lacks its closer (the tree knows which, also for the brackets of this line).
    let open = if multi_line { Vec::new() } else { lexical.unclosed(&format!("{line_head}{line_tail}")) };
    let scope = ScopeRules {
        open,
        lexical,
        missing_closers: cursor.missing_closers,
        body_indent,
        tab_width: shape.tab_width,
    };
    StopRules {
        single_line: !multi_line,
        max_lines: if multi_line { shape.max_lines } else { 0 },
        scope: Some(scope),
        ..StopRules::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_loads_with_its_grammar_and_query() {
        let names: Vec<&str> = languages().iter().map(|language| language.name).collect();
        assert_eq!(names.len(), SOURCES.len(), "a facts.toml failed to load");
        for language in languages() {
            assert_eq!(language.grammar.is_some(), language.name != "text", "{}: grammar or query failed", language.name);
        }
    }

    #[test]
    fn language_from_id_then_file_name() {
        let name = |id: &str, uri: &str| language_for(id, uri).map(|language| language.name);
        assert_eq!(name("rust", "file:///a/b.txt"), Some("rust"));
        assert_eq!(name("typescriptreact", "file:///x"), Some("tsx"));
        assert_eq!(name("", "file:///src/main.RS"), Some("rust"));
        assert_eq!(name("unknown", "file:///p/q.hpp"), Some("cpp"));
        assert_eq!(name("", "file:///repo/.git/COMMIT_EDITMSG"), Some("text"));
        assert_eq!(name("shellscript", "file:///x"), Some("bash"));
        assert_eq!(name("", "file:///x/Makefile"), None);
        assert_eq!(name("", "untitled:Untitled-1"), None);
    }

    #[test]
    fn block_openers_are_whole_words() {
        let lua = language_for("lua", "").unwrap();
        assert!(lua.facts.opens_block("for i = 1, 10 do"));
        assert!(!lua.facts.opens_block("local undo"));
        let python = language_for("python", "").unwrap();
        assert!(python.facts.opens_block("def f(x):  "));
        assert!(!python.facts.opens_block("x = d[1:"));
        assert!(!python.facts.opens_block("f(lambda x:"));
        let javascript = language_for("javascript", "").unwrap();
        assert!(javascript.facts.opens_block("describe('x', () => {"));
        assert!(!javascript.facts.opens_block("const o = {}"));
    }

    /// Language, document with `|` at the cursor, what the model writes, what is kept.
    const STOP_CASES: &[(&str, &str, &str, &str)] = &[
        // Python: a dedent below the block ends it.
        ("python", "def f(x):\n    y = x + 1\n    |\n", "return y\n\ndef g():\n    pass", "return y\n"),
        ("python", "def f(x):|\n", "\n    return x * 2\n\nprint(f(2))", "\n    return x * 2\n"),
        ("python", "def f(x):\n    return x\n\n|\n", "def g():\n    return 2\nclass A:", "def g():\n    return 2\nclass A:"),
        ("python", "print(|)\n", "x) + 1", "x"),
        ("python", "items = [\n    1,\n    |\n]\n", "2,\n    3,\n]", "2,"),
        // Rust: the closer of the function is below the cursor already.
        ("rust", "fn f() {\n    let x = 1;\n    |\n}\n", "let y = x + 1;\n    y\n}\n\nfn g() {}", "let y = x + 1;\n    y"),
        ("rust", "fn f() {\n    let v = vec![1, 2|];\n}\n", ", 3]; v.len() }", ", 3"),
        ("rust", "fn f() {|\n", "\n    g();\n}\n\nfn g() {}", "\n    g();\n}"),
        ("rust", "fn f() {\n    if x {\n        |", "a();\n    }\n}\n", "a();\n    }"),
        // JavaScript, TypeScript: a callback's body, a closed call.
        ("javascript", "describe('x', () => {|\n});\n", "\n  it('works', () => {});\n});", "\n  it('works', () => {});"),
        ("typescript", "function f(a: number) {\n  return g(a|);\n}\n", ", 2); }", ", 2"),
        // Go, C, C++, Java: blocks closed below.
        ("go", "package main\n\nfunc f() {\n\tx := 1\n\t|\n}\n", "fmt.Println(x)\n}\n\nfunc g() {}", "fmt.Println(x)"),
        ("c", "int main(void) {\n    int x = 1;\n    |\n}\n", "return x;\n}\nint g;", "return x;"),
        ("cpp", "int main() {\n    std::vector<int> v{1, |};\n}\n", "2, 3}; }", "2, 3"),
        ("java", "class A {\n    void f() {\n        |\n    }\n}\n", "g();\n    }\n}", "g();"),
        // Lua, Bash: word openers and closers.
        ("lua", "for i = 1, 10 do|\nend\n", "\n  print(i)\nend\nprint('done')", "\n  print(i)"),
        ("bash", "if [ -f x ]; then\n  echo hi\n  |\nfi\n", "echo there\nfi\necho after", "echo there"),
        // Comments and prose end with their sentence; strings with their line.
        ("rust", "// Adds the two |\nfn add() {}\n", "numbers. Returns the sum.", "numbers."),
        ("python", "x = \"hello |\"\n", "world\ny = 2", "world"),
        ("markdown", "# Notes\n\nThe cache |\n", "keeps tokens. It is fast.", "keeps tokens."),
        ("plaintext", "Dear team,\n\nThe release |", "is ready. Thanks.", "is ready."),
    ];

    #[test]
    fn stop_rules_cut_where_the_code_says() {
        let shape = Shape { multi_line: true, max_lines: 8, tab_width: 4 };
        for &(language_id, document, raw, expected) in STOP_CASES {
            let cursor = document.find('|').unwrap();
            let text = document.replacen('|', "", 1);
            let rope = ropey::Rope::from_str(&text);
            let language = language_for(language_id, "").unwrap();
            let tree = SyntaxTree::new(language, &rope);
            let char_idx = rope.byte_to_char(cursor);
            let line = rope.char_to_line(char_idx);
            let line_start = rope.line_to_char(line);
            let line_end = line_start + crate::context::line_len_chars(&rope, line);
            let head = rope.slice(line_start..char_idx).to_string();
            let tail = rope.slice(char_idx..line_end).to_string();
            let rules = stop_rules(language, &tree.at(&rope, char_idx), &head, &tail, shape);
            let kept = rules.check(raw).map_or(raw, |cut| &raw[..cut]);
            assert_eq!(kept, expected, "{language_id}: {document:?} with {raw:?} ({rules:?})");
        }
    }
}
