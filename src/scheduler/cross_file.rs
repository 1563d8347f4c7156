//! The scheduler's side of the cross-file ring (`src/ring.rs`): chunks of files as they open,
//! and the lines around a file's last edit when the user moves to another file. Prompts use a
//! snapshot of the ring, renewed only in idle time (a new snapshot moves the start of every
//! prompt, so the KV cache must be warmed with it while the user pauses).

use std::sync::{Arc, Mutex, MutexGuard};

use ropey::Rope;

use crate::context::CrossFile;
use crate::plan::CursorState;
use crate::ring::{self, Ring};
use crate::sync::MutexExt;

/// The most characters of one cross-file chunk.
const MAX_CHUNK_CHARS: usize = 2000;

#[derive(Default)]
struct State {
    ring: Ring,
    /// What prompts put in front (renewed in idle time).
    snapshot: Arc<Vec<ring::Chunk>>,
    root_uri: Option<String>,
    /// The document edited last, and the line of that edit.
    last_edit: Option<(String, Rope, usize)>,
}

/// How many chunks the ring keeps and how many lines each has (from the settings).
#[derive(Debug, Clone, Copy)]
pub(super) struct RingSize {
    pub chunks: usize,
    pub lines: usize,
}

#[derive(Default)]
pub(super) struct CrossFiles {
    state: Mutex<State>,
}

impl CrossFiles {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    pub fn set_workspace(&self, root_uri: Option<String>) {
        self.lock().root_uri = root_uri;
    }

    /// A document opened: its top goes into the ring.
    pub fn file_opened(&self, uri: &str, rope: &Rope, size: RingSize) {
        if size.chunks == 0 {
            return;
        }
        let mut state = self.lock();
        let label = ring::label_for(uri, state.root_uri.as_deref());
        let chunk = ring::chunk_of(uri, &label, rope, 0, size.lines, MAX_CHUNK_CHARS);
        state.ring.add(chunk, size.chunks);
    }

    /// Notes an edit; when it is in another document than the last one, the lines around that
    /// document's last edit go into the ring.
    pub fn note_edit(&self, cursor: &CursorState, size: RingSize) {
        if size.chunks == 0 {
            return;
        }
        let line = cursor.rope.char_to_line(cursor.cursor_char_idx.min(cursor.rope.len_chars()));
        let mut state = self.lock();
        let previous = state.last_edit.replace((cursor.uri.clone(), cursor.rope.clone(), line));
        if let Some((uri, rope, line)) = previous.filter(|(uri, _, _)| *uri != cursor.uri) {
            let label = ring::label_for(&uri, state.root_uri.as_deref());
            let chunk = ring::chunk_around(&uri, &label, &rope, line, size.lines, MAX_CHUNK_CHARS);
            state.ring.add(chunk, size.chunks);
        }
    }

    /// Other files' chunks for a prompt in `uri` (the file's own chunks would show the model
    /// an old copy of the text it is completing); None when the ring is off.
    pub fn for_prompt_in(&self, uri: &str, size: RingSize) -> Option<CrossFile> {
        if size.chunks == 0 {
            return None;
        }
        let state = self.lock();
        let repo = state.root_uri.as_deref().and_then(ring::repo_name);
        let chunks = if state.snapshot.iter().any(|chunk| chunk.uri == uri) {
            Arc::new(state.snapshot.iter().filter(|chunk| chunk.uri != uri).cloned().collect())
        } else {
            state.snapshot.clone()
        };
        Some(CrossFile { repo, chunks, file_label: ring::label_for(uri, state.root_uri.as_deref()) })
    }

    pub fn is_changed(&self) -> bool {
        self.lock().ring.is_changed()
    }

    /// Takes a new snapshot if the ring changed since the last one; whether it did.
    pub fn renew_snapshot(&self) -> bool {
        let mut state = self.lock();
        match state.ring.take_if_changed() {
            Some(chunks) => {
                state.snapshot = Arc::new(chunks);
                true
            }
            None => false,
        }
    }
}
