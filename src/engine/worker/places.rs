//! What the KV cache holds: the current prompt's tokens, and the places the user left, saved
//! as sequence states within a memory budget and restored when the user comes back.

use super::*;

/// What is in the KV cache of sequence 0, token by token, the tokens of the pieces of the
/// previous prompt (so unchanged pieces are not tokenized again), and the places saved from
/// the cache.
#[derive(Default)]
pub(super) struct KvState {
    pub(super) tokens: Vec<LlamaToken>,
    pub(super) piece_cache: Vec<(Piece, Vec<LlamaToken>)>,
    pub(super) saved: SavedPlaces,
    /// Tokens were moved (`reuse_moved`) and no decode has applied the keys' rotation yet.
    pub(super) shift_pending: bool,
}

/// The KV cache of places the user left, copied out of the context (within `budget_bytes`;
/// least recently used first, so the first is dropped first), so coming back restores the prompt's prefix instead of
/// decoding it again. Copies, not other sequences of the context: a sequence kept in the
/// context would widen the attention of every decode (llama.cpp attends over all used cells).
#[derive(Default)]
pub(super) struct SavedPlaces {
    pub(super) places: Vec<SavedPlace>,
    pub(super) budget_bytes: usize,
}

pub(super) struct SavedPlace {
    pub(super) tokens: Vec<LlamaToken>,
    pub(super) state: SeqState,
}

/// A prompt that would discard at least this many cached tokens (and a third of them) moves to
/// another place: the cache is saved first. Small: an arrival's prompt on a slow machine is a
/// few dozen tokens that took a second or more, and a window warm-up that the next key
/// interrupts must not cost that key the arrival's prompt again (a copy of 24 tokens is about
/// 300 KiB for the default model, far less than decoding them).
pub(super) const MIN_SAVED_TOKENS: usize = 24;
/// Restoring pays when it brings back at least this many more tokens than the cache keeps.
pub(super) const MIN_RESTORED_GAIN: usize = 16;

impl SavedPlaces {
    /// Saves the cache's `tokens`, dropping older copies of the same place and the least
    /// recently used places beyond the budget.
    pub(super) fn save(&mut self, context: &LlamaContext, tokens: &[LlamaToken]) {
        let state = match context.state_seq_get(0, LlamaStateSeqFlags::empty()) {
            Ok(state) => state,
            Err(err) => {
                tracing::warn!(%err, "could not copy the KV cache out; the place is not saved");
                return;
            }
        };
        if state.byte_len() > self.budget_bytes {
            return;
        }
        // An older copy that shares most of its tokens with this one is the same place.
        self.places.retain(|place| common_prefix_len(&place.tokens, tokens) * 2 < place.tokens.len());
        self.places.push(SavedPlace { tokens: tokens.to_vec(), state });
        while self.places.iter().map(|place| place.state.byte_len()).sum::<usize>() > self.budget_bytes {
            self.places.remove(0);
        }
    }

    /// The saved place that shares the most tokens with `tokens`, and how many.
    pub(super) fn best_for(&self, tokens: &[LlamaToken]) -> Option<(usize, usize)> {
        self.places.iter().enumerate().map(|(idx, place)| (common_prefix_len(&place.tokens, tokens), idx)).max().map(|(common, idx)| (idx, common))
    }

    pub(super) fn take(&mut self, idx: usize) -> SavedPlace {
        self.places.remove(idx)
    }
}
