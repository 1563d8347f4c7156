//! Tests of `tree.rs`.

use super::*;
use crate::syntax::language_for;

/// Parses `text` with `|` marking the cursor, and reads the tree there.
fn at(language_id: &str, text: &str) -> CursorSyntax {
    let cursor = text.find('|').expect("a cursor");
    let text = text.replacen('|', "", 1);
    let rope = Rope::from_str(&text);
    let tree = SyntaxTree::new(language_for(language_id, "").unwrap(), &rope);
    assert!(tree.is_parsed());
    tree.at(&rope, rope.byte_to_char(cursor))
}

fn region(language_id: &str, text: &str) -> Region {
    at(language_id, text).region
}

#[test]
fn regions_in_every_language() {
    let cases: &[(&str, &str, Region)] = &[
        ("rust", "fn main() {\n    // sum of |\n}\n", Region::Comment),
        ("rust", "fn main() {\n    let s = \"hel|lo\";\n}\n", Region::String),
        ("rust", "fn main() {\n    let s = \"hello\";|\n}\n", Region::Code),
        ("rust", "/* a |block */ fn f() {}\n", Region::Comment),
        ("rust", "/* a block */| fn f() {}\n", Region::Code),
        ("python", "def f():\n    # returns |\n    pass\n", Region::Comment),
        ("python", "def f():\n    \"\"\"Return the |\"\"\"\n", Region::String),
        ("python", "x = 1|\n", Region::Code),
        ("javascript", "// todo: |\nconst a = 1;\n", Region::Comment),
        ("javascript", "const a = `x ${|}`;\n", Region::Code),
        ("typescript", "const a: string = 'ab|c';\n", Region::String),
        ("typescriptreact", "const A = () => <div>{/* hi | */}</div>;\n", Region::Comment),
        ("go", "package main\n\n// Sum adds |\nfunc Sum() {}\n", Region::Comment),
        ("c", "int main() {\n    printf(\"%d|\\n\", 1);\n}\n", Region::String),
        ("cpp", "int main() {\n    return 0; // done|\n}\n", Region::Comment),
        ("java", "class A {\n    /** Adds |\n     */\n    void f() {}\n}\n", Region::Comment),
        ("lua", "-- the |\nlocal x = 1\n", Region::Comment),
        ("bash", "echo \"hel|lo\"\n", Region::String),
        ("bash", "# install |\nset -e\n", Region::Comment),
        ("markdown", "# Title\n\nSome |text.\n", Region::Prose),
        ("markdown", "# Title\n\n```rust\nfn main() {|}\n```\n", Region::Code),
    ];
    for &(language, text, expected) in cases {
        assert_eq!(region(language, text), expected, "{language}: {text:?}");
    }
}

#[test]
fn brackets_and_blocks() {
    assert!(at("python", "foo(\n    a,\n    |\n)\n").in_brackets);
    assert!(!at("python", "def f():\n    x = 1\n    |\n    return x\n").in_brackets);
    assert!(!at("rust", "fn f() {\n    g(1);\n    |\n}\n").in_brackets);
    assert!(at("rust", "fn f() {\n    g(1,\n      |\n    );\n}\n").in_brackets);
    // After a closed call, on the same line, the cursor is not in its brackets.
    assert!(!at("javascript", "function f() {\n  g(1)|\n}\n").in_brackets);
}

#[test]
fn missing_closers_are_counted() {
    assert_eq!(at("rust", "fn f() {\n    g(1);\n    |\n}\n").missing_closers, 0);
    assert_eq!(at("go", "package main\n\nfunc f() {\n\tx := 1\n\t|").missing_closers, 1);
    // Inside a parse error, the brackets its text leaves open.
    assert_eq!(at("rust", "fn f() {\n    if x {\n        |").missing_closers, 2);
    assert_eq!(at("c", "int f() {\n    if (x) {\n        |").missing_closers, 2);
    assert_eq!(at("c", "int f() {\n    if (x) {\n        g();\n    }\n    |").missing_closers, 1);
}

/// Every node's kind and byte range, in order.
fn nodes(tree: &SyntaxTree) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut stack = vec![tree.tree.as_ref().unwrap().root_node()];
    while let Some(node) = stack.pop() {
        out.push((node.kind().to_string(), node.start_byte(), node.end_byte()));
        for idx in (0..node.child_count()).rev() {
            stack.extend(node.child(idx));
        }
    }
    out
}

#[test]
fn incremental_edits_keep_the_tree_in_step() {
    let language = language_for("rust", "").unwrap();
    let mut rope = Rope::from_str("// héllo wörld ✓\nfn f() {\n    let s = 1;\n}\n");
    let mut tree = SyntaxTree::new(language, &rope);
    // Open a string on line 2 by typing `"` after `= `, one character at a time.
    let at_char = rope.line_to_char(2) + 12;
    for (offset, ch) in "\"hi".chars().enumerate() {
        let pending = SyntaxTree::before_edit(&rope, at_char + offset, at_char + offset);
        rope.insert_char(at_char + offset, ch);
        tree.edited(&rope, pending, ch.len_utf8());
        tree.reparse(&rope);
    }
    assert_eq!(rope.line(2).to_string(), "    let s = \"hi1;\n");
    assert_eq!(nodes(&tree), nodes(&SyntaxTree::new(language, &rope)));
    // Replace a span after multibyte text with multibyte text.
    let start = rope.line_to_char(2);
    let pending = SyntaxTree::before_edit(&rope, start, start + 4);
    rope.remove(start..start + 4);
    rope.insert(start, "/*é*/");
    tree.edited(&rope, pending, "/*é*/".len());
    tree.reparse(&rope);
    assert_eq!(nodes(&tree), nodes(&SyntaxTree::new(language, &rope)));
    // A version is parsed once, whichever copy asks first.
    let end = rope.len_chars();
    let pending = SyntaxTree::before_edit(&rope, end, end);
    rope.insert(end, "\n");
    tree.edited(&rope, pending, 1);
    let copy = tree.clone();
    assert!(tree.parsed.get().is_none());
    let fresh = copy.fresh(&rope);
    assert!(tree.parsed.get().is_some(), "the copy's parse is the original's");
    assert!(!fresh.is_dirty());
    assert_eq!(nodes(&tree.fresh(&rope)), nodes(&fresh));
    tree = tree.fresh(&rope);
    // Line comments with multibyte text are comments to their end.
    let cursor = rope.line_to_char(0) + crate::context::line_len_chars(&rope, 0);
    assert_eq!(tree.at(&rope, cursor).region, Region::Comment);
}

#[test]
fn an_unparsed_tree_parses_on_first_use_like_a_new_one() {
    let language = crate::syntax::language_for("python", "x.py").unwrap();
    let rope = Rope::from_str("def f(a):\n    return [a,\n");
    let unparsed = SyntaxTree::unparsed(language);
    assert!(unparsed.is_dirty() && !unparsed.is_parsed());
    let fresh = unparsed.fresh(&rope);
    let new = SyntaxTree::new(language, &rope);
    assert!(fresh.is_parsed() && !fresh.is_dirty());
    assert_eq!(fresh.tree.as_ref().map(|tree| tree.root_node().to_sexp()), new.tree.as_ref().map(|tree| tree.root_node().to_sexp()));
}

#[test]
fn a_document_too_large_has_no_tree_and_no_rules() {
    let rope = Rope::from_str(&"x = 1\n".repeat(MAX_PARSE_BYTES / 6 + 10));
    let tree = SyntaxTree::new(language_for("python", "").unwrap(), &rope);
    assert!(!tree.is_parsed());
    assert_eq!(tree.at(&rope, 3).missing_closers, usize::MAX);
}
