//! Cross-file context: a ring buffer of chunks from other open and recently edited files, put
//! in front of the prompt so the model sees the project's other code.
//!
//! A chunk is a run of lines of one file: the top of a file when it opens (its imports and first
//! definitions), and the lines around the last edit of a file when the user moves on to
//! another. A new chunk replaces an overlapping chunk of the same file; the oldest chunk goes
//! when the ring is full.
//!
//! The prompt does not follow every change of the ring: it would move the start of the prompt
//! and cost a full prompt decode on the next keystroke. The scheduler takes a snapshot of the
//! ring in idle time (after a job and its prefetching) and warms the KV cache with it then; the
//! snapshot stays at the start of every prompt, in the KV cache, until the next one. The scheduler
//! renews it only after the user has paused (no change for a second).
//!
//! Pure data: no model, no LSP types.

use std::collections::VecDeque;

use ropey::Rope;

/// A run of lines of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub uri: String,
    /// The file's path as the prompt names it (relative to the workspace when it is in it).
    pub label: String,
    pub first_line: usize,
    pub n_lines: usize,
    pub text: String,
}

impl Chunk {
    fn overlaps(&self, other: &Chunk) -> bool {
        self.uri == other.uri && self.first_line < other.first_line + other.n_lines && other.first_line < self.first_line + self.n_lines
    }
}

/// The ring and whether it changed since its last snapshot.
#[derive(Debug, Default)]
pub struct Ring {
    chunks: VecDeque<Chunk>,
    changed: bool,
}

impl Ring {
    /// Adds a chunk (blank chunks are ignored), replacing overlapping chunks of the same file
    /// and dropping the oldest beyond `max_chunks`.
    pub fn add(&mut self, chunk: Chunk, max_chunks: usize) {
        if chunk.text.trim().is_empty() || max_chunks == 0 {
            return;
        }
        if self.chunks.back() == Some(&chunk) {
            return;
        }
        self.chunks.retain(|existing| !existing.overlaps(&chunk));
        self.chunks.push_back(chunk);
        while self.chunks.len() > max_chunks {
            self.chunks.pop_front();
        }
        self.changed = true;
    }

    /// The chunks, oldest first, if they changed since the last call.
    pub fn take_if_changed(&mut self) -> Option<Vec<Chunk>> {
        if !self.changed {
            return None;
        }
        self.changed = false;
        Some(self.chunks.iter().cloned().collect())
    }

    /// Whether the ring changed since its last snapshot.
    pub fn is_changed(&self) -> bool {
        self.changed
    }
}

/// The lines `first_line..first_line + n_lines` of a document (clipped to it), capped at
/// `max_chars` on a line boundary.
pub fn chunk_of(uri: &str, label: &str, rope: &Rope, first_line: usize, n_lines: usize, max_chars: usize) -> Chunk {
    let n_doc_lines = rope.len_lines();
    let first_line = first_line.min(n_doc_lines.saturating_sub(1));
    let end_line = (first_line + n_lines).min(n_doc_lines);
    let mut text = String::new();
    let mut kept_lines = 0;
    for line in first_line..end_line {
        let line_text = rope.line(line).to_string();
        if text.len() + line_text.len() > max_chars {
            break;
        }
        text.push_str(&line_text);
        kept_lines += 1;
    }
    Chunk { uri: uri.to_string(), label: label.to_string(), first_line, n_lines: kept_lines, text }
}

/// The chunk centred on `line`.
pub fn chunk_around(uri: &str, label: &str, rope: &Rope, line: usize, n_lines: usize, max_chars: usize) -> Chunk {
    chunk_of(uri, label, rope, line.saturating_sub(n_lines / 2), n_lines, max_chars)
}

/// How the prompt names a file: its path relative to the workspace root when it is under it,
/// else its file name.
pub fn label_for(uri: &str, root_uri: Option<&str>) -> String {
    if let Some(root) = root_uri {
        let root = root.trim_end_matches('/');
        if let Some(relative) = uri.strip_prefix(root).and_then(|rest| rest.strip_prefix('/')) {
            return percent_decode(relative);
        }
    }
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    percent_decode(path.rsplit('/').next().unwrap_or(path))
}

/// The workspace's name, as repository-level prompts give it: the root folder's name.
pub fn repo_name(root_uri: &str) -> Option<String> {
    let name = root_uri.trim_end_matches('/').rsplit('/').next()?;
    (!name.is_empty() && !name.contains(':')).then(|| percent_decode(name))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'%' && idx + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[idx + 1..idx + 3]).ok();
            if let Some(byte) = hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                out.push(byte);
                idx += 3;
                continue;
            }
        }
        out.push(bytes[idx]);
        idx += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(uri: &str, first_line: usize, n_lines: usize) -> Chunk {
        Chunk { uri: uri.into(), label: uri.into(), first_line, n_lines, text: format!("{uri}:{first_line}\n") }
    }

    #[test]
    fn the_ring_replaces_overlaps_and_drops_the_oldest() {
        let mut ring = Ring::default();
        ring.add(chunk("a", 0, 10), 3);
        ring.add(chunk("b", 0, 10), 3);
        ring.add(chunk("a", 5, 10), 3);
        let chunks = ring.take_if_changed().unwrap();
        assert_eq!(chunks.iter().map(|c| (c.uri.as_str(), c.first_line)).collect::<Vec<_>>(), [("b", 0), ("a", 5)]);
        assert!(ring.take_if_changed().is_none(), "unchanged since the snapshot");
        ring.add(chunk("a", 5, 10), 3);
        assert!(ring.take_if_changed().is_none(), "the same chunk again is no change");
        ring.add(chunk("c", 0, 10), 3);
        ring.add(chunk("d", 0, 10), 3);
        let chunks = ring.take_if_changed().unwrap();
        assert_eq!(chunks.iter().map(|c| c.uri.as_str()).collect::<Vec<_>>(), ["a", "c", "d"]);
        ring.add(Chunk { text: "  \n".into(), ..chunk("e", 0, 1) }, 3);
        assert!(ring.take_if_changed().is_none(), "blank chunks are ignored");
    }

    #[test]
    fn chunks_are_clipped_to_the_document_and_capped() {
        let rope = Rope::from_str("l0\nl1\nl2\nl3\nl4\n");
        let around = chunk_around("u", "u", &rope, 1, 4, 1000);
        assert_eq!((around.first_line, around.n_lines, around.text.as_str()), (0, 4, "l0\nl1\nl2\nl3\n"));
        let end = chunk_of("u", "u", &rope, 4, 10, 1000);
        assert_eq!(end.text, "l4\n");
        let capped = chunk_of("u", "u", &rope, 0, 10, 7);
        assert_eq!((capped.text.as_str(), capped.n_lines), ("l0\nl1\n", 2));
    }

    #[test]
    fn labels_are_relative_to_the_workspace() {
        assert_eq!(label_for("file:///home/me/proj/src/a%20b.rs", Some("file:///home/me/proj/")), "src/a b.rs");
        assert_eq!(label_for("file:///elsewhere/x.py", Some("file:///home/me/proj")), "x.py");
        assert_eq!(label_for("file:///x/y.py", None), "y.py");
        assert_eq!(repo_name("file:///home/me/proj/"), Some("proj".into()));
        assert_eq!(repo_name("file:///"), None);
    }
}
