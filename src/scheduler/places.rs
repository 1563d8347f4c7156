//! Where the KV cache is warm, and how big an arrival's first window may be.
//!
//! A place is a document and the anchored first line of its full window: jobs at the same
//! place share the prompt's prefix, so only the first job there decodes it. That first job (an
//! arrival: a file opened, a jump to another function) is what a user waits for longest. With
//! `coldPromptMs` set, its prompt is cut to what decodes within that time at the prompt speed
//! measured on this machine (at load, then from every job's prompt): the lines below the cursor
//! take up to half of it, the window above the rest (on 2 cores, 3-20 lines; on a GPU, the
//! whole window). The later jobs at that place keep the same first line and suffix, so they
//! reuse the cache. In a pause of the user's, a job with the full window warms the cache, and
//! from then on the place gets the full window. The engine keeps the cache of the places the user left (up to
//! `ModelInfo::kv_places`), so the most recent of them stay warm.

use std::sync::{Mutex, MutexGuard};

use ropey::Rope;

use crate::config::Config;
use crate::context;
use crate::engine::{Completion, Prompt, PromptSpeed};
use crate::plan::ArrivalWindow;
use crate::sync::MutexExt;

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
    /// Places where an arrival's smaller prompt is in use; least recent first.
    cold: Vec<(Place, ArrivalWindow)>,
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

/// The fewest lines above the cursor an arrival's window holds, however slow the prompt.
const MIN_ARRIVAL_LINES: usize = 2;

/// Prompt decodes shorter than this say little about the speed.
const MIN_DECODED_FOR_SPEED: usize = 32;

impl Places {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// A new engine: nothing is warm, it keeps this many places, and its prompt speed is the
    /// one measured at load (None: unknown until its first jobs, as for a remote backend).
    pub fn reset(&self, capacity: usize, measured: Option<PromptSpeed>) {
        let mut state = self.lock();
        state.warm.clear();
        state.cold.clear();
        state.capacity = capacity;
        (state.ms_per_prompt_token, state.chars_per_token) = measured.map_or((0.0, 0.0), |speed| (speed.ms_per_token, speed.chars_per_token));
    }

    pub fn place_of(uri: &str, rope: &Rope, cursor_char_idx: usize, config: &Config) -> Place {
        let line = rope.char_to_line(cursor_char_idx.min(rope.len_chars()));
        Place { uri: uri.to_string(), first_line: context::window_first_line(line, &config.windows) }
    }

    /// An arrival's smaller prompt at `place` (None: the full one). A place that is warm gets
    /// the full prompt; one with a smaller prompt in use keeps it (its jobs share the cache); a
    /// new place gets what decodes within `coldPromptMs` at the measured prompt speed.
    pub fn arrival_window(&self, place: &Place, rope: &Rope, cursor_line: usize, config: &Config) -> Option<ArrivalWindow> {
        let mut state = self.lock();
        if state.warm.contains(place) {
            return None;
        }
        if let Some(idx) = state.cold.iter().position(|(cold_place, _)| cold_place == place) {
            // The most recent now.
            let entry = state.cold.remove(idx);
            let arrival = entry.1;
            state.cold.push(entry);
            return Some(arrival);
        }
        if config.cold_prompt_ms == 0 || state.ms_per_prompt_token == 0.0 || state.chars_per_token == 0.0 {
            return None;
        }
        let budget_chars = (config.cold_prompt_ms as f64 / state.ms_per_prompt_token * state.chars_per_token) as usize;
        // The cursor line, then the lines below while they take at most half the time (at an
        // empty line they say what it must do: `blankLineSuffixLines`), then whole lines up
        // from the cursor line while the rest fits, never fewer than `MIN_ARRIVAL_LINES`.
        let line_chars = |line: usize| if line < rope.len_lines() { rope.line(line).len_chars() } else { 0 };
        let most_below = config.blank_line_suffix_lines.max(config.windows.suffix_lines);
        let mut chars = line_chars(cursor_line);
        let mut suffix_lines = 0;
        while suffix_lines < most_below && cursor_line + 1 + suffix_lines < rope.len_lines() {
            let next = line_chars(cursor_line + 1 + suffix_lines);
            if chars + next > budget_chars / 2 {
                break;
            }
            chars += next;
            suffix_lines += 1;
        }
        let all_below = suffix_lines == most_below || cursor_line + 1 + suffix_lines >= rope.len_lines();
        let mut first_line = cursor_line;
        while first_line > place.first_line {
            chars += line_chars(first_line - 1);
            if chars > budget_chars && cursor_line - first_line >= MIN_ARRIVAL_LINES {
                break;
            }
            first_line -= 1;
        }
        if first_line <= place.first_line && all_below {
            return None;
        }
        let arrival = ArrivalWindow { first_line, suffix_lines: if all_below { most_below } else { suffix_lines } };
        let capacity = state.capacity.max(1);
        state.cold.push((place.clone(), arrival));
        if state.cold.len() > capacity {
            state.cold.remove(0);
        }
        Some(arrival)
    }

    /// A job starts at `place` with this window: the cache holds its prompt from now on.
    pub fn started(&self, place: &Place, arrival: Option<ArrivalWindow>) {
        let mut state = self.lock();
        // An engine that keeps one place loses the warm one to any other prompt.
        if state.capacity <= 1 && (arrival.is_some() || !state.warm.contains(place)) {
            state.warm.clear();
        }
    }

    /// A job finished decoding its prompt: the prompt speed and density are measured, and a
    /// full window makes its place warm.
    pub fn finished(&self, place: &Place, arrival: Option<ArrivalWindow>, prompt: &Prompt, completion: &Completion) {
        let mut state = self.lock();
        if completion.decoded_tokens >= MIN_DECODED_FOR_SPEED && completion.prompt_ms > 0.0 {
            let measured = completion.prompt_ms / completion.decoded_tokens as f64;
            state.ms_per_prompt_token = if state.ms_per_prompt_token == 0.0 { measured } else { 0.7 * state.ms_per_prompt_token + 0.3 * measured };
        }
        if completion.prompt_tokens > 0 {
            let density = context::text_chars(prompt) as f64 / completion.prompt_tokens as f64;
            state.chars_per_token = if state.chars_per_token == 0.0 { density } else { 0.7 * state.chars_per_token + 0.3 * density };
        }
        if arrival.is_none() {
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
        assert_eq!(places.arrival_window(&first, &rope, 40, &config), None);
        // 5 ms a prompt token at 3 characters a token: 1 s is 600 characters; the cursor line
        // and the 16 lines below take 289 of them, 18 lines above fit in the rest.
        let mut prompt = Prompt::default();
        prompt.push_text("x".repeat(300));
        places.finished(&first, None, &prompt, &completion(100, 100, 500.0));
        let cursor_line = 300;
        let far = Places::place_of("file:///a.py", &rope, rope.line_to_char(cursor_line), &config);
        assert_eq!(far.first_line, 224);
        let arrival = places.arrival_window(&far, &rope, cursor_line, &config).expect("a smaller window at a new place");
        assert_eq!(arrival, ArrivalWindow { first_line: cursor_line - 18, suffix_lines: 16 });
        // The next jobs at that place keep its first line (their prompts share the cache).
        assert_eq!(places.arrival_window(&far, &rope, cursor_line + 3, &config), Some(arrival));
        // Once a job with the full window has decoded it, the place gets the full window.
        places.started(&far, None);
        places.finished(&far, None, &prompt, &completion(100, 100, 1000.0));
        assert_eq!(places.arrival_window(&far, &rope, cursor_line + 3, &config), None);
        // Switched off: always the full window.
        let elsewhere = Place { uri: "file:///b.py".into(), first_line: 96 };
        assert_eq!(places.arrival_window(&elsewhere, &rope, 170, &Config { cold_prompt_ms: 0, ..Config::default() }), None);
    }

    #[test]
    fn with_the_speed_measured_at_load_the_very_first_arrival_gets_a_smaller_window() {
        let config = Config { cold_prompt_ms: 1000, ..Config::default() };
        let text: String = (0..400).map(|idx| format!("line_{idx:03} = {idx:05}\n")).collect(); // 17 characters a line
        let rope = Rope::from_str(&text);
        let places = Places::default();
        places.reset(4, Some(PromptSpeed { ms_per_token: 5.0, chars_per_token: 3.0 }));
        let place = Places::place_of("file:///a.py", &rope, rope.line_to_char(300), &config);
        let arrival = places.arrival_window(&place, &rope, 300, &config).expect("a smaller window from the first job on");
        // 1 s at 5 ms a token and 3 characters a token is 600 characters: the cursor line and
        // the 16 lines below take 289, 18 lines above fit in the rest.
        assert_eq!(arrival, ArrivalWindow { first_line: 300 - 18, suffix_lines: 16 });
        // A slower machine (60 characters): no line below fits in half of it, 2 lines above.
        let slow = Places::default();
        slow.reset(4, Some(PromptSpeed { ms_per_token: 50.0, chars_per_token: 3.0 }));
        assert_eq!(slow.arrival_window(&place, &rope, 300, &config), Some(ArrivalWindow { first_line: 298, suffix_lines: 0 }));
        // Unknown speed (a remote backend before its first answer): the full window.
        let unknown = Places::default();
        unknown.reset(4, None);
        assert_eq!(unknown.arrival_window(&place, &rope, 300, &config), None);
    }

    #[test]
    fn the_places_the_engine_keeps_stay_warm_least_recent_dropped() {
        let config = Config { cold_prompt_ms: 1000, ..Config::default() };
        let text: String = (0..400).map(|idx| format!("line_{idx:03} = {idx:05}\n")).collect();
        let rope = Rope::from_str(&text);
        let mut prompt = Prompt::default();
        prompt.push_text("x".repeat(300));
        let place = |first_line| Place { uri: "file:///a.py".into(), first_line };
        let is_warm = |places: &Places, first_line: usize| places.arrival_window(&place(first_line), &rope, first_line + 30, &config).is_none();
        let warm_up = |places: &Places, first_line: usize| {
            places.started(&place(first_line), None);
            places.finished(&place(first_line), None, &prompt, &completion(100, 100, 1000.0));
        };
        // An engine that keeps three places: a fourth drops the least recent.
        let places = Places::default();
        places.reset(3, None);
        for first_line in [0, 64, 128] {
            warm_up(&places, first_line);
        }
        assert!(is_warm(&places, 0) && is_warm(&places, 64) && is_warm(&places, 128));
        warm_up(&places, 0); // back to the first: now the most recent
        warm_up(&places, 192);
        assert!(!is_warm(&places, 64), "the least recently used place is dropped");
        assert!(is_warm(&places, 0) && is_warm(&places, 128) && is_warm(&places, 192));
        // A job elsewhere with a smaller window leaves them warm.
        places.started(&place(256), Some(ArrivalWindow { first_line: 270, suffix_lines: 4 }));
        assert!(is_warm(&places, 0));
        // An engine that keeps one place: any other prompt takes its warmth.
        let single = Places::default();
        single.reset(1, None);
        warm_up(&single, 0);
        warm_up(&single, 64);
        assert!(!is_warm(&single, 0) && is_warm(&single, 64));
        single.started(&place(128), Some(ArrivalWindow { first_line: 140, suffix_lines: 4 }));
        assert!(!is_warm(&single, 64));
    }
}
