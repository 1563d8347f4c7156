//! Choosing tokens: greedy, constrained to text the suggestion must start with, the other
//! likely starts, and drafts from earlier runs of the last tokens (n-gram lookup).

use super::*;

/// The suggestion's text as tokens are chosen: the bytes that must come first (the healed end
/// of the prompt, not shown, then the forced prefix, shown) and the bytes of a character not
/// yet complete.
pub(super) struct Output {
    pub(super) text: String,
    pub(super) pending_bytes: Vec<u8>,
    /// How many of the next bytes are the healed ones (not shown).
    pub(super) hidden: usize,
    pub(super) required: Vec<u8>,
}

impl Output {
    pub(super) fn new(healed_bytes: Vec<u8>, forced_prefix: &str) -> Output {
        let hidden = healed_bytes.len();
        let mut required = healed_bytes;
        required.extend_from_slice(forced_prefix.as_bytes());
        Output { text: String::new(), pending_bytes: Vec::new(), hidden, required }
    }

    /// The greedy choice, among the tokens that agree with the required bytes while any are left.
    pub(super) fn choose(&self, logits: &[f32], token_pieces: &[Vec<u8>]) -> LlamaToken {
        if self.required.is_empty() {
            argmax(logits)
        } else {
            constrained_argmax(logits, token_pieces, &self.required)
        }
    }

    pub(super) fn push(&mut self, piece: &[u8]) {
        let shown_from = self.hidden.min(piece.len());
        self.hidden -= shown_from;
        self.pending_bytes.extend_from_slice(&piece[shown_from..]);
        self.required.drain(..piece.len().min(self.required.len()));
        let n_valid = match std::str::from_utf8(&self.pending_bytes) {
            Ok(valid) => valid.len(),
            Err(err) if err.error_len().is_none() => err.valid_up_to(),
            // Invalid bytes that no later token can complete: replace them.
            Err(_) => {
                self.text.push_str(&String::from_utf8_lossy(&self.pending_bytes));
                self.pending_bytes.clear();
                0
            }
        };
        if n_valid > 0 {
            self.text.push_str(std::str::from_utf8(&self.pending_bytes[..n_valid]).unwrap_or_default());
            self.pending_bytes.drain(..n_valid);
        }
    }
}

/// The longest run of tokens drafted from the context looks back at most this far.
pub(super) const DRAFT_MAX_NGRAM: usize = 4;
/// Matches shorter than this propose too often to pay for their checking.
pub(super) const DRAFT_MIN_NGRAM: usize = 2;

/// Up to `max` tokens that followed the most recent earlier occurrence of the history's last
/// tokens (the longest such run from `DRAFT_MAX_NGRAM` down to `DRAFT_MIN_NGRAM` tokens), as a
/// guess of what comes next; empty when the context holds no such run.
pub(super) fn draft(history: &[LlamaToken], max: usize) -> Vec<LlamaToken> {
    if max == 0 {
        return Vec::new();
    }
    for ngram in (DRAFT_MIN_NGRAM..=DRAFT_MAX_NGRAM).rev() {
        if history.len() <= ngram {
            continue;
        }
        let key = &history[history.len() - ngram..];
        // The latest occurrence that is followed by at least one token.
        let found = (0..history.len() - ngram).rev().find(|&start| &history[start..start + ngram] == key);
        if let Some(start) = found {
            let from = start + ngram;
            return history[from..(from + max).min(history.len())].to_vec();
        }
    }
    Vec::new()
}

pub(super) fn common_prefix_len(cached: &[LlamaToken], tokens: &[LlamaToken]) -> usize {
    cached.iter().zip(tokens).take_while(|(cached, new)| cached == new).count()
}

pub(super) fn argmax(logits: &[f32]) -> LlamaToken {
    let mut best_idx = 0;
    let mut best = f32::NEG_INFINITY;
    for (idx, &logit) in logits.iter().enumerate() {
        if logit > best {
            best = logit;
            best_idx = idx;
        }
    }
    LlamaToken(best_idx as i32)
}

/// Up to `count` tokens other than `chosen` among those `allowed`, most likely first, each at
/// least 5% likely among the allowed ones.
pub(super) fn likely_others(logits: &[f32], chosen: LlamaToken, count: usize, allowed: impl Fn(usize) -> bool) -> Vec<LlamaToken> {
    let max = logits.iter().enumerate().filter(|&(idx, _)| allowed(idx)).map(|(_, &logit)| logit).fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = logits.iter().enumerate().filter(|&(idx, _)| allowed(idx)).map(|(_, &logit)| (logit - max).exp()).sum();
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(count + 1);
    for (idx, &logit) in logits.iter().enumerate() {
        if idx as i32 == chosen.0 || best.len() == count && logit <= best[count - 1].0 || !allowed(idx) {
            continue;
        }
        let at = best.partition_point(|&(other, _)| other >= logit);
        best.insert(at, (logit, idx));
        best.truncate(count);
    }
    best.into_iter().filter(|&(logit, _)| (logit - max).exp() / total >= 0.05).map(|(_, idx)| LlamaToken(idx as i32)).collect()
}

/// Whether a token's bytes agree with `required`: they start with it, or are a non-empty
/// start of it.
pub(super) fn agrees_with(piece: &[u8], required: &[u8]) -> bool {
    !piece.is_empty() && (piece.starts_with(required) || required.starts_with(piece))
}

/// The most likely token whose bytes agree with `required`.
pub(super) fn constrained_argmax(logits: &[f32], token_pieces: &[Vec<u8>], required: &[u8]) -> LlamaToken {
    let mut best_idx = None;
    let mut best = f32::NEG_INFINITY;
    for (idx, (&logit, piece)) in logits.iter().zip(token_pieces).enumerate() {
        if logit > best && agrees_with(piece, required) {
            best = logit;
            best_idx = Some(idx);
        }
    }
    best_idx.map_or_else(|| argmax(logits), |idx| LlamaToken(idx as i32))
}


#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(ids: &[i32]) -> Vec<LlamaToken> {
        ids.iter().copied().map(LlamaToken).collect()
    }

    #[test]
    fn a_draft_continues_the_latest_earlier_run_of_the_last_tokens() {
        // `1 2 3` occurred twice before; the later occurrence (followed by 7 8) wins.
        let history = tokens(&[1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 6, 2, 3]);
        assert_eq!(draft(&history, 3), tokens(&[7, 8, 6]));
        // The longest match first: `9 2 3` never occurred, so `2 3` does, latest first.
        let history = tokens(&[2, 3, 5, 1, 2, 3, 6, 9, 2, 3]);
        assert_eq!(draft(&history, 2), tokens(&[6, 9]));
        // Drafts stop at the end of the history and at `max`.
        assert_eq!(draft(&tokens(&[4, 5, 6, 4, 5]), 8), tokens(&[6, 4, 5]));
        assert_eq!(draft(&tokens(&[4, 5, 6, 4, 5]), 0), Vec::new());
        // One token in common is not enough; nothing repeated, no draft.
        assert_eq!(draft(&tokens(&[1, 2, 3, 4, 9, 4]), 4), Vec::new());
        assert_eq!(draft(&tokens(&[1]), 4), Vec::new());
    }
}
