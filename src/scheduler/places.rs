//! Where the KV cache is warm, and how big an arrival's first window may be.
//!
//! A place is a document and the anchored first line of its full window: jobs at the same
//! place share the prompt's prefix, so only the first job there decodes it. That first job (an
//! arrival: a file opened, a jump to another function) is what a user waits for longest. With
//! `coldPromptMs` set, its window is cut to the lines whose prompt decodes within that time at
//! the prompt speed measured on this machine (on 2 cores, 10-20 lines; on a GPU, the whole
//! window); the later jobs at that place keep the same first line, so they reuse the cache. In
//! a pause of the user's, a job with the full window warms the cache, and from then on the
//! place gets the full window. The engine keeps the cache of the places the user left (up to
//! `ModelInfo::kv_places`), so the most recent of them stay warm.

use std::sync::{Mutex, MutexGuard};

use ropey::Rope;

use crate::config::Config;
use crate::context;
use crate::engine::{Completion, Prompt};

/// A document and the first line of its full window at a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Place {
    pub uri: String,
    pub first_line: usize,
}

#[derive(Default)]
struct State {
    /// Places whose full window is in the KV cache or saved by the engine (their job decoded
    /// the prompt), least recent first; at most `capacity`.
    warm: Vec<Place>,
    /// Places where a smaller window is in use, from this line; least recent first.
    cold: Vec<(Place, usize)>,
    /// How many places the engine keeps (`ModelInfo::kv_places`; 0 until an engine is ready,
    /// taken as 1).
    capacity: usize,
    /// Measured prompt decoding: ms per prompt token and characters per prompt token (moving
    /// averages; 0 until measured).
    ms_per_prompt_token: f64,
    chars_per_token: f64,
}

#[derive(Default)]
pub(super) struct Places {
    state: Mutex<State>,
}

/// Prompt decodes shorter than this say little about the speed.
const MIN_DECODED_FOR_SPEED: usize = 32;

impl Places {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new engine: nothing is warm, and it keeps this many places.
    pub fn reset(&self, capacity: usize) {
        let mut state = self.lock();
        state.warm.clear();
        state.cold.clear();
        state.capacity = capacity;
    }

    pub fn place_of(uri: &str, rope: &Rope, cursor_char_idx: usize, config: &Config) -> Place {
        let line = rope.char_to_line(cursor_char_idx.min(rope.len_chars()));
        Place { uri: uri.to_string(), first_line: context::window_first_line(line, &config.windows) }
    }

    /// The first line of a job's window at `place` (None: the full window). A place that is
    /// warm gets the full window; one with a smaller window in use keeps it; a new place gets
    /// the lines that decode within `coldPromptMs`, once the speed is known.
    pub fn window_start(&self, place: &Place, rope: &Rope, cursor_line: usize, config: &Config) -> Option<usize> {
        let mut state = self.lock();
        if state.warm.contains(place) {
            return None;
        }
        if let Some(idx) = state.cold.iter().position(|(cold_place, _)| cold_place == place) {
            // The most recent now.
            let entry = state.cold.remove(idx);
            let first_line = entry.1;
            state.cold.push(entry);
            return Some(first_line);
        }
        if config.cold_prompt_ms == 0 || state.ms_per_prompt_token == 0.0 || state.chars_per_token == 0.0 {
            return None;
        }
        let budget_chars = (config.cold_prompt_ms as f64 / state.ms_per_prompt_token * state.chars_per_token) as usize;
        // Whole lines up from the cursor line while they fit (the cursor line itself and the
        // lines below are in the prompt anyway).
        let mut first_line = cursor_line;
        let mut chars = 0;
        while first_line > place.first_line {
            chars += rope.line(first_line - 1).len_chars();
            if chars > budget_chars {
                break;
            }
            first_line -= 1;
        }
        if first_line <= place.first_line {
            return None;
        }
        let capacity = state.capacity.max(1);
        state.cold.push((place.clone(), first_line));
        if state.cold.len() > capacity {
            state.cold.remove(0);
        }
        Some(first_line)
    }

    /// A job starts at `place` with this window: the cache holds its prompt from now on.
    pub fn started(&self, place: &Place, window_start: Option<usize>) {
        let mut state = self.lock();
        // An engine that keeps one place loses the warm one to any other prompt.
        if state.capacity <= 1 && (window_start.is_some() || !state.warm.contains(place)) {
            state.warm.clear();
        }
    }

    /// A job finished decoding its prompt: the prompt speed and density are measured, and a
    /// full window makes its place warm.
    pub fn finished(&self, place: &Place, window_start: Option<usize>, prompt: &Prompt, completion: &Completion) {
        let mut state = self.lock();
        if completion.decoded_tokens >= MIN_DECODED_FOR_SPEED && completion.prompt_ms > 0.0 {
            let measured = completion.prompt_ms / completion.decoded_tokens as f64;
            state.ms_per_prompt_token = if state.ms_per_prompt_token == 0.0 { measured } else { 0.7 * state.ms_per_prompt_token + 0.3 * measured };
        }
        if completion.prompt_tokens > 0 {
            let density = context::text_chars(prompt) as f64 / completion.prompt_tokens as f64;
            state.chars_per_token = if state.chars_per_token == 0.0 { density } else { 0.7 * state.chars_per_token + 0.3 * density };
        }
        if window_start.is_none() {
            state.warm.retain(|warm| warm != place);
            state.warm.push(place.clone());
            let capacity = state.capacity.max(1);
            if state.warm.len() > capacity {
                state.warm.remove(0);
            }
            state.cold.retain(|(cold_place, _)| cold_place != place);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(prompt_tokens: usize, decoded_tokens: usize, prompt_ms: f64) -> Completion {
        Completion {
            text: String::new(),
            stop_reason: crate::engine::StopReason::StopRule,
            prompt_tokens,
            reused_tokens: prompt_tokens - decoded_tokens,
            decoded_tokens,
            generated_tokens: 1,
            prompt_ms,
            generation_ms: 1.0,
            drafted_tokens: 0,
            accepted_draft_tokens: 0,
            restored_tokens: 0,
            shifted_tokens: 0,
        }
    }

    #[test]
    fn an_arrival_gets_the_lines_that_decode_in_time_then_the_full_window_once_warm() {
        let config = Config { cold_prompt_ms: 1000, ..Config::default() };
        let text: String = (0..400).map(|idx| format!("line_{idx:03} = {idx:05}\n")).collect(); // 17 characters a line
        let rope = Rope::from_str(&text);
        let places = Places::default();
        let first = Place { uri: "file:///a.py".into(), first_line: 0 };
        // Nothing measured yet: the full window.
        assert_eq!(places.window_start(&first, &rope, 40, &config), None);
        // 10 ms a prompt token at 3 characters a token: 1 s is 300 characters, 17 lines.
        let mut prompt = Prompt::default();
        prompt.push_text("x".repeat(300));
        places.finished(&first, None, &prompt, &completion(100, 100, 1000.0));
        let cursor_line = 300;
        let far = Places::place_of("file:///a.py", &rope, rope.line_to_char(cursor_line), &config);
        assert_eq!(far.first_line, 224);
        let start = places.window_start(&far, &rope, cursor_line, &config).expect("a smaller window at a new place");
        assert_eq!(cursor_line - start, 17);
        // The next jobs at that place keep its first line (their prompts share the cache).
        assert_eq!(places.window_start(&far, &rope, cursor_line + 3, &config), Some(start));
        // Once a job with the full window has decoded it, the place gets the full window.
        places.started(&far, None);
        places.finished(&far, None, &prompt, &completion(100, 100, 1000.0));
        assert_eq!(places.window_start(&far, &rope, cursor_line + 3, &config), None);
        // Switched off: always the full window.
        let elsewhere = Place { uri: "file:///b.py".into(), first_line: 96 };
        assert_eq!(places.window_start(&elsewhere, &rope, 170, &Config { cold_prompt_ms: 0, ..Config::default() }), None);
    }

    #[test]
    fn the_places_the_engine_keeps_stay_warm_least_recent_dropped() {
        let config = Config { cold_prompt_ms: 1000, ..Config::default() };
        let text: String = (0..400).map(|idx| format!("line_{idx:03} = {idx:05}\n")).collect();
        let rope = Rope::from_str(&text);
        let mut prompt = Prompt::default();
        prompt.push_text("x".repeat(300));
        let place = |first_line| Place { uri: "file:///a.py".into(), first_line };
        let is_warm = |places: &Places, first_line: usize| places.window_start(&place(first_line), &rope, first_line + 30, &config).is_none();
        let warm_up = |places: &Places, first_line: usize| {
            places.started(&place(first_line), None);
            places.finished(&place(first_line), None, &prompt, &completion(100, 100, 1000.0));
        };
        // An engine that keeps three places: a fourth drops the least recent.
        let places = Places::default();
        places.reset(3);
        for first_line in [0, 64, 128] {
            warm_up(&places, first_line);
        }
        assert!(is_warm(&places, 0) && is_warm(&places, 64) && is_warm(&places, 128));
        warm_up(&places, 0); // back to the first: now the most recent
        warm_up(&places, 192);
        assert!(!is_warm(&places, 64), "the least recently used place is dropped");
        assert!(is_warm(&places, 0) && is_warm(&places, 128) && is_warm(&places, 192));
        // A job elsewhere with a smaller window leaves them warm.
        places.started(&place(256), Some(270));
        assert!(is_warm(&places, 0));
        // An engine that keeps one place: any other prompt takes its warmth.
        let single = Places::default();
        single.reset(1);
        warm_up(&single, 0);
        warm_up(&single, 64);
        assert!(!is_warm(&single, 0) && is_warm(&single, 64));
        single.started(&place(128), Some(140));
        assert!(!is_warm(&single, 64));
    }
}
