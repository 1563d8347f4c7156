//! Counters and latency distributions kept by the scheduler and returned by `ghostline/stats`.

use std::collections::VecDeque;

use serde::Serialize;

/// The most recent samples of one latency, in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    samples: VecDeque<f64>,
}

/// A summary of a histogram: count, mean and percentiles.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

const MAX_SAMPLES: usize = 20_000;

impl Histogram {
    pub fn record(&mut self, value_ms: f64) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(value_ms);
    }

    pub fn summary(&self) -> Summary {
        let mut sorted: Vec<f64> = self.samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len();
        let mean = if count == 0 { 0.0 } else { sorted.iter().sum::<f64>() / count as f64 };
        Summary {
            count,
            mean,
            p50: percentile(&sorted, 0.50),
            p90: percentile(&sorted, 0.90),
            p99: percentile(&sorted, 0.99),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// Nearest-rank percentile of sorted samples; 0 for none.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub requests: u64,
    pub answered_with_suggestion: u64,
    pub answered_empty: u64,
    pub typed_ahead_hits: u64,
    pub jobs_started: u64,
    pub jobs_superseded: u64,
    /// Jobs that have ended (finished, superseded, cancelled or failed).
    pub jobs_ended: u64,
    pub ready_notifications: u64,
    /// Suggestions accepted whole, accepted in part (a word, a line), and the characters
    /// accepted in all.
    pub accepted: u64,
    pub accepted_partially: u64,
    pub accepted_chars: u64,
    pub tokens_reused: u64,
    pub tokens_decoded: u64,
    pub tokens_generated: u64,
    /// Time spent generating (after the prompt), and the tokens drafted from the context and
    /// kept by the model (`draftTokens`).
    pub generation_ms: f64,
    pub tokens_drafted: u64,
    pub drafts_accepted: u64,
    /// Prompt tokens brought back from the saved KV cache of a place the user had left
    /// (counted in `tokensReused` too).
    pub tokens_restored: u64,
    /// Jobs started where the editor said the cursor rests (`ghostline/cursorRest`).
    pub rest_jobs: u64,
    /// Jobs started, with no new key, for a state a remote job was kept for until its text
    /// turned out to disagree with the keys typed after its own state.
    pub undecided_restarts: u64,
    /// Prompt tokens reused at a new position in the cache (counted in `tokensReused` too).
    pub tokens_shifted: u64,
    /// Jobs run in idle time for states the user may reach next, and how many of them were
    /// reached (a keystroke then answered from one).
    pub prefetch_jobs: u64,
    pub prefetch_hits: u64,
    /// Arrivals whose suggestion was replaced by the full window's (a different one), in a
    /// pause after the arrival.
    pub window_upgrades: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub counters: Counters,
    pub response_ms: Histogram,
    pub time_to_suggestion_ms: Histogram,
    pub model_load_ms: Option<f64>,
}

impl Stats {
    /// The share of suggestions shown that were accepted (whole or in part), and the characters
    /// accepted per acceptance.
    fn acceptance(&self) -> serde_json::Value {
        let counters = &self.counters;
        let acceptances = counters.accepted + counters.accepted_partially;
        let rate = if counters.answered_with_suggestion == 0 { 0.0 } else { acceptances as f64 / counters.answered_with_suggestion as f64 };
        let chars = if acceptances == 0 { 0.0 } else { counters.accepted_chars as f64 / acceptances as f64 };
        serde_json::json!({"rate": rate, "charsPerAcceptance": chars})
    }

    pub fn to_json(&self) -> serde_json::Value {
        let typed_ahead_rate = if self.counters.requests == 0 {
            0.0
        } else {
            self.counters.typed_ahead_hits as f64 / self.counters.requests as f64
        };
        serde_json::json!({
            "counters": self.counters,
            "typedAheadHitRate": typed_ahead_rate,
            "acceptance": self.acceptance(),
            "responseMs": self.response_ms.summary(),
            "timeToSuggestionMs": self.time_to_suggestion_ms.summary(),
            "modelLoadMs": self.model_load_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut histogram = Histogram::default();
        for value in 1..=100 {
            histogram.record(value as f64);
        }
        let summary = histogram.summary();
        assert_eq!((summary.p50, summary.p90, summary.p99, summary.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(summary.count, 100);
        assert_eq!(Histogram::default().summary().p99, 0.0);
    }
}
