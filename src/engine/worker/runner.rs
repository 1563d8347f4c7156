//! One job on the engine thread: tokenize the prompt (reusing unchanged pieces' tokens), keep
//! the cache's common prefix (or restore a saved place, or shift moved runs), decode the rest in
//! chunks, then generate with the stop rules, publishing the text after every token.

use super::*;

pub(super) struct JobRunner<'run, 'model> {
    pub(super) model: &'model LlamaModel,
    /// Runs of at least this many cached tokens are moved to their new positions (0: never).
    pub(super) reuse_min_tokens: usize,
    /// The context's memory can move tokens (rotary positions; not every model's can).
    pub(super) can_shift: bool,
    pub(super) context: &'run mut LlamaContext<'model>,
    pub(super) batch: &'run mut LlamaBatch<'static>,
    pub(super) state: &'run mut KvState,
    pub(super) token_pieces: &'run [Vec<u8>],
    pub(super) chunk_tokens: usize,
    pub(super) latest_job_id: &'run AtomicU64,
    pub(super) job: &'run JobRequest,
}

impl JobRunner<'_, '_> {
    /// The job's stop rules: the late ones when they come (the prompt is decoded by now, so
    /// they usually have), else the plain ones after `LATE_RULES_WAIT`; an interruption while
    /// waiting ends the job.
    pub(super) fn late_stop_rules(&self) -> Result<StopRules, StopReason> {
        let Some(late) = &self.job.params.late_stop else { return Ok(self.job.params.stop.clone()) };
        let start = Instant::now();
        loop {
            if let Some(rules) = late.wait_timeout(std::time::Duration::from_millis(2)) {
                return Ok(rules);
            }
            if let Some(reason) = self.interruption() {
                return Err(reason);
            }
            if start.elapsed() >= crate::engine::stop::LATE_RULES_WAIT {
                tracing::debug!("stop rules came late; generating with the plain ones");
                return Ok(self.job.params.stop.clone());
            }
        }
    }

    /// Why the job must stop now, if it must.
    pub(super) fn interruption(&self) -> Option<StopReason> {
        self.job.interruption(self.latest_job_id)
    }

    pub(super) fn tokenize_prompt(&mut self) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let mut tokens = Vec::new();
        let mut new_piece_cache = Vec::with_capacity(self.job.prompt.pieces.len());
        for (piece_idx, piece) in self.job.prompt.pieces.iter().enumerate() {
            let piece_tokens = match piece {
                Piece::Special(special) => special_token(self.model, *special).into_iter().collect(),
                Piece::Text(text) => match self.state.piece_cache.get(piece_idx) {
                    Some((cached_piece, cached_tokens)) if cached_piece == piece => cached_tokens.clone(),
                    _ => vocab.tokenize(text.as_bytes(), false, false),
                },
            };
            tokens.extend_from_slice(&piece_tokens);
            new_piece_cache.push((piece.clone(), piece_tokens));
        }
        self.state.piece_cache = new_piece_cache;
        tokens
    }

    /// Before a prompt that keeps little of the cache: the cache is saved as a place (when the
    /// prompt discards enough of it), and the saved place sharing the most with the prompt
    /// comes back into the cache when that brings back more. The tokens restored beyond what
    /// the cache shared with the prompt.
    pub(super) fn switch_place(&mut self, tokens: &[LlamaToken]) -> Result<usize, EngineError> {
        if self.state.saved.budget_bytes == 0 {
            return Ok(0);
        }
        let kept = common_prefix_len(&self.state.tokens, tokens);
        let discarded = self.state.tokens.len() - kept;
        // Taken out before saving: saving may drop or evict entries and move the indices.
        let best = self.state.saved.best_for(tokens).filter(|&(_, common)| common >= kept + MIN_RESTORED_GAIN);
        let restore = best.map(|(idx, common)| (self.state.saved.take(idx), common));
        // A shift not yet applied (the keys are rotated at the next decode) must not be saved:
        // the copy would hold the new positions with keys for the old ones.
        if discarded >= MIN_SAVED_TOKENS && discarded * 3 >= self.state.tokens.len() && !self.state.shift_pending {
            let cached = std::mem::take(&mut self.state.tokens);
            self.state.saved.save(self.context, &cached);
            self.state.tokens = cached;
        }
        let Some((place, common)) = restore else { return Ok(0) };
        self.context.clear_kv_cache();
        self.state.tokens.clear();
        self.state.shift_pending = false;
        match self.context.state_seq_set(&place.state, 0) {
            Ok(()) => {
                self.state.tokens = place.tokens;
                Ok(common - kept)
            }
            Err(err) => {
                tracing::warn!(%err, "could not restore a saved place; decoding its prompt");
                self.context.clear_kv_cache();
                Ok(0)
            }
        }
    }

    /// Reuses runs of cached tokens that the prompt still holds after its common prefix, at
    /// their new positions (as llama-server's `--cache-reuse`): the cells between are removed
    /// and each run of at least `reuse_min_tokens` is shifted to where the prompt has it
    /// (`llama_memory_seq_add`; the keys' rotary positions are updated before the next decode).
    /// The window that moved down past an anchor, or the lines below a line the user comes back
    /// to, then cost only what is new. Returns how many tokens were moved: afterwards the cache
    /// holds the prompt's first `common` + that many tokens.
    pub(super) fn reuse_moved(&mut self, tokens: &[LlamaToken], common: usize) -> Result<usize, EngineError> {
        let min = self.reuse_min_tokens;
        if min == 0 || common >= self.state.tokens.len() || !self.can_shift {
            return Ok(0);
        }
        // At least one prompt token is decoded, for the logits.
        let last = tokens.len() - 1;
        let (mut head_cache, mut head_prompt) = (common, common);
        let map = |err: llama_cpp_2::context::kv_cache::KvCacheConversionError| EngineError::Decode(err.to_string());
        while head_cache < self.state.tokens.len() && head_prompt < last {
            let run = self.state.tokens[head_cache..].iter().zip(&tokens[head_prompt..last]).take_while(|(cached, new)| cached == new).count();
            if run < min {
                head_cache += 1;
                continue;
            }
            if head_cache > head_prompt {
                self.context.kv_cache_seq_rm(0, Some(head_prompt as u32), Some(head_cache as u32)).map_err(map)?;
                self.context.kv_cache_seq_add(0, Some(head_cache as u32), Some((head_cache + run) as u32), head_prompt as i32 - head_cache as i32).map_err(map)?;
                self.state.shift_pending = true;
            }
            head_cache += run;
            head_prompt += run;
        }
        if head_prompt == common {
            return Ok(0);
        }
        self.context.kv_cache_seq_rm(0, Some(head_prompt as u32), None).map_err(map)?;
        self.state.tokens = tokens[..head_prompt].to_vec();
        Ok(head_prompt - common)
    }

    pub(super) fn run(mut self) -> Result<Completion, EngineError> {
        let prompt_start = Instant::now();
        let mut tokens = self.tokenize_prompt();
        let n_ctx = self.context.n_ctx() as usize;
        let max_prompt = n_ctx.saturating_sub(self.job.params.max_tokens + 1).max(1);
        if tokens.len() > max_prompt {
            // Cutting tokens here would cut the prompt's structure (its special tokens come
            // first); the prompt builder budgets the text, so this is a prompt it misjudged.
            return Err(EngineError::PromptTooLong { prompt_tokens: tokens.len(), limit: max_prompt });
        }
        if tokens.is_empty() {
            return Ok(Completion { prompt_ms: 0.0, ..superseded_before_start_with(StopReason::EndOfGeneration) });
        }
        let mut healed_bytes = Vec::new();
        if self.job.params.token_healing && tokens.len() > 1 && matches!(self.job.prompt.pieces.last(), Some(Piece::Text(_))) {
            if let Some(last) = tokens.pop() {
                healed_bytes = self.token_pieces.get(last.0 as usize).cloned().unwrap_or_default();
                if healed_bytes.is_empty() {
                    tokens.push(last);
                } else if healed_bytes.len() > 1 && healed_bytes.iter().all(|byte| *byte == b' ' || *byte == b'\t') {
                    // A run of indentation: code tokenizes it as the run less its last character,
                    // then that character with the word (`···········` + `·depth`). Rolling back
                    // the whole run made the model spell it out in short pieces and never stop
                    // (measured: 48 tokens of spaces at a blank line); the run less one stays in
                    // the prompt and only the last character is healed.
                    let kept = healed_bytes.split_off(healed_bytes.len() - 1);
                    let run = std::mem::replace(&mut healed_bytes, kept);
                    tokens.extend(self.model.vocab().tokenize(&run, false, false));
                }
            }
        }

        let restored_tokens = self.switch_place(&tokens)?;
        let common = common_prefix_len(&self.state.tokens, &tokens).min(tokens.len() - 1);
        let shifted_tokens = self.reuse_moved(&tokens, common)?;
        let common = common + shifted_tokens;
        if common < self.state.tokens.len() {
            let removed = self
                .context
                .clear_kv_cache_seq(Some(0), Some(common as u32), None)
                .map_err(|err| EngineError::Decode(err.to_string()))?;
            if !removed {
                self.context.clear_kv_cache();
                self.state.tokens.clear();
            } else {
                self.state.tokens.truncate(common);
            }
        }
        let reused_tokens = self.state.tokens.len();
        self.job.publish_prompt(tokens.len(), reused_tokens);
        let mut decoded_tokens = 0;
        let mut completion = Completion {
            text: String::new(),
            stop_reason: StopReason::EndOfGeneration,
            prompt_tokens: tokens.len(),
            reused_tokens,
            decoded_tokens: 0,
            generated_tokens: 0,
            prompt_ms: 0.0,
            generation_ms: 0.0,
            drafted_tokens: 0,
            accepted_draft_tokens: 0,
            restored_tokens,
            shifted_tokens,
        };

        let mut logits_idx = 0;
        while self.state.tokens.len() < tokens.len() {
            if let Some(reason) = self.interruption() {
                completion.stop_reason = reason;
                completion.decoded_tokens = decoded_tokens;
                completion.prompt_ms = ms_since(prompt_start);
                return Ok(completion);
            }
            let start = self.state.tokens.len();
            let end = (start + self.chunk_tokens).min(tokens.len());
            self.batch.clear();
            for (token_idx, token) in tokens[start..end].iter().enumerate() {
                let is_last = start + token_idx + 1 == tokens.len();
                self.batch
                    .add(*token, (start + token_idx) as i32, &[0], is_last)
                    .map_err(|err| EngineError::Decode(err.to_string()))?;
            }
            self.context.decode(self.batch).map_err(|err| EngineError::Decode(err.to_string()))?;
            self.state.shift_pending = false;
            self.state.tokens.extend_from_slice(&tokens[start..end]);
            decoded_tokens += end - start;
            self.job.publish_prompt(tokens.len(), end);
            logits_idx = (end - start - 1) as i32;
        }
        completion.decoded_tokens = decoded_tokens;
        completion.prompt_ms = ms_since(prompt_start);

        self.generate(&mut completion, logits_idx, healed_bytes)?;
        tracing::debug!(
            job = self.job.id,
            prompt_tokens = completion.prompt_tokens,
            reused = completion.reused_tokens,
            decoded = completion.decoded_tokens,
            generated = completion.generated_tokens,
            stop = ?completion.stop_reason,
            text = %completion.text,
            "job done"
        );
        Ok(completion)
    }

    /// Generates greedily. While `healed_bytes` (the rolled-back end of the prompt) and then the
    /// job's forced prefix are not yet reproduced, only tokens consistent with them are allowed;
    /// the healed bytes are not emitted, the forced prefix is.
    ///
    /// With `draft_tokens`, each step decodes the chosen token together with the tokens that
    /// followed the latest tokens' last occurrence in the context (`draft`), and keeps those the
    /// model would have chosen itself: each is checked with the same choice as plain decoding
    /// on the logits of the token before it, so the text is the same, in fewer decodes when the
    /// code repeats what is above or below.
    pub(super) fn generate(&mut self, completion: &mut Completion, mut logits_idx: i32, healed_bytes: Vec<u8>) -> Result<(), EngineError> {
        let generation_start = Instant::now();
        let n_ctx = self.context.n_ctx() as usize;
        let mut output = Output::new(healed_bytes, &self.job.params.forced_prefix);
        let mut alternatives_due = self.job.params.alternatives > 0 && self.job.params.forced_prefix.is_empty();
        completion.stop_reason = StopReason::MaxTokens;
        let stop = match self.late_stop_rules() {
            Ok(stop) => stop,
            Err(reason) => {
                completion.stop_reason = reason;
                return Ok(());
            }
        };
        // A token chosen from the last batch's logits while checking a draft, not yet decoded.
        let mut chosen: Option<LlamaToken> = None;
        'steps: while completion.generated_tokens < self.job.params.max_tokens {
            if let Some(reason) = self.interruption() {
                completion.stop_reason = reason;
                break;
            }
            let token = match chosen.take() {
                Some(token) => token,
                None => {
                    let logits = self.context.get_logits_ith(logits_idx);
                    let token = output.choose(logits, self.token_pieces);
                    if alternatives_due && !self.is_end(token) {
                        alternatives_due = false;
                        self.report_alternatives(logits, token, &output);
                    }
                    token
                }
            };
            if let Some(reason) = self.take(token, &mut output, completion, &stop) {
                completion.stop_reason = reason;
                break;
            }
            if self.state.tokens.len() + 1 >= n_ctx {
                completion.stop_reason = StopReason::ContextFull;
                break;
            }
            let room = (self.job.params.max_tokens - completion.generated_tokens).min(n_ctx - self.state.tokens.len() - 2);
            let max_drafted = self.job.params.draft_tokens.min(room);
            let drafted = if max_drafted == 0 {
                Vec::new()
            } else {
                // The history the draft continues: the cache and the token just chosen.
                self.state.tokens.push(token);
                let drafted = draft(&self.state.tokens, max_drafted);
                self.state.tokens.pop();
                drafted
            };
            let position = self.state.tokens.len();
            self.batch.clear();
            for (offset, token) in std::iter::once(token).chain(drafted.iter().copied()).enumerate() {
                self.batch.add(token, (position + offset) as i32, &[0], true).map_err(|err| EngineError::Decode(err.to_string()))?;
            }
            self.context.decode(self.batch).map_err(|err| EngineError::Decode(err.to_string()))?;
            self.state.tokens.push(token);
            self.state.tokens.extend_from_slice(&drafted);
            completion.drafted_tokens += drafted.len();
            logits_idx = 0;
            for (idx, &drafted_token) in drafted.iter().enumerate() {
                let next = output.choose(self.context.get_logits_ith(idx as i32), self.token_pieces);
                if next != drafted_token {
                    // The model disagrees from here: the rest of the draft leaves the cache, and
                    // its own choice is the next token.
                    self.forget_from(position + 1 + idx)?;
                    chosen = Some(next);
                    continue 'steps;
                }
                completion.accepted_draft_tokens += 1;
                logits_idx = idx as i32 + 1;
                if let Some(reason) = self.take(next, &mut output, completion, &stop) {
                    completion.stop_reason = reason;
                    self.forget_from(position + 2 + idx)?;
                    break 'steps;
                }
            }
        }
        completion.text = output.text;
        completion.generation_ms = ms_since(generation_start);
        Ok(())
    }

    pub(super) fn is_end(&self, token: LlamaToken) -> bool {
        let vocab = self.model.vocab();
        vocab.is_eog(token) || vocab.is_control(token)
    }

    /// Adds a chosen token to the suggestion and publishes it; the reason to stop, if it ends it.
    pub(super) fn take(&self, token: LlamaToken, output: &mut Output, completion: &mut Completion, stop: &StopRules) -> Option<StopReason> {
        if self.is_end(token) {
            return Some(StopReason::EndOfGeneration);
        }
        completion.generated_tokens += 1;
        output.push(self.token_pieces.get(token.0 as usize).map(Vec::as_slice).unwrap_or_default());
        if let Some(cut) = stop.check(&output.text) {
            output.text.truncate(cut);
            self.publish(&output.text, completion.generated_tokens);
            return Some(StopReason::StopRule);
        }
        self.publish(&output.text, completion.generated_tokens);
        None
    }

    /// Removes the cache's tokens from `position` on.
    pub(super) fn forget_from(&mut self, position: usize) -> Result<(), EngineError> {
        if position >= self.state.tokens.len() {
            return Ok(());
        }
        let removed = self.context.clear_kv_cache_seq(Some(0), Some(position as u32), None).map_err(|err| EngineError::Decode(err.to_string()))?;
        if removed {
            self.state.tokens.truncate(position);
        } else {
            self.context.clear_kv_cache();
            self.state.tokens.clear();
        }
        Ok(())
    }

    /// The first token: other tokens that agree with the healed bytes as well, shown as the text
    /// they add after them.
    pub(super) fn report_alternatives(&self, logits: &[f32], token: LlamaToken, output: &Output) {
        let vocab = self.model.vocab();
        let hidden = output.hidden;
        let agrees = |idx: usize| {
            let piece = self.token_pieces.get(idx).map(Vec::as_slice).unwrap_or_default();
            piece.len() > hidden && (output.required.is_empty() || agrees_with(piece, &output.required))
        };
        let alternatives: Vec<String> = likely_others(logits, token, self.job.params.alternatives, agrees)
            .into_iter()
            .filter(|other| !vocab.is_eog(*other) && !vocab.is_control(*other))
            .filter_map(|other| std::str::from_utf8(&self.token_pieces.get(other.0 as usize)?[hidden..]).ok().map(str::to_string))
            .filter(|shown| !shown.is_empty())
            .collect();
        self.job.progress.send_modify(|progress| progress.alternatives = alternatives);
    }

    pub(super) fn publish(&self, text: &str, generated_tokens: usize) {
        self.job.publish(text, generated_tokens);
    }
}
