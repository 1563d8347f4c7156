//! What one keystroke produced, the figures of a run, and their output: a table, JSON and an
//! SVG picture of the latency distributions.

use serde_json::{json, Value};

/// One keystroke of the replay (a typed character, or a Tab that accepts a word).
#[derive(Debug, Clone)]
pub struct Keystroke {
    pub language: &'static str,
    /// From the keystroke to the first answer for this state (empty or not); None when no answer
    /// came before the next keystroke.
    pub response_ms: Option<f64>,
    /// From the keystroke to a non-empty suggestion valid for this state; None when there was none
    /// before the next keystroke.
    pub suggestion_ms: Option<f64>,
    pub typed_ahead: bool,
    /// Characters of the suggestion's first line that equal the real rest of the line.
    pub correct_chars: usize,
    /// The keystroke was a Tab accepting this many characters.
    pub accepted_word: Option<usize>,
}

/// Server-side totals of a run.
#[derive(Debug, Clone, Default)]
pub struct ServerTotals {
    pub prompt_tokens: u64,
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
    /// Typed-ahead hits counted by the server itself (Ghostline) or the client (peer).
    pub typed_ahead_hits: u64,
    /// Keystrokes answered from a prefetched job (Ghostline).
    pub prefetch_hits: u64,
    /// Generation (Ghostline): tokens, time, tokens drafted from the context and kept, and prompt
    /// tokens restored from a saved place.
    pub generated_tokens: u64,
    pub generation_ms: f64,
    pub drafted_tokens: u64,
    pub accepted_draft_tokens: u64,
    pub restored_tokens: u64,
    /// Completion requests the client sent, and the answers to them the server counted
    /// (Ghostline) or the client received without an error (peer).
    pub requests_sent: u64,
    pub requests_answered: u64,
}

/// Nearest-rank percentile of values where None is "never" (worse than any number).
pub fn percentile(values: &[Option<f64>], fraction: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = values.iter().map(|value| value.unwrap_or(f64::INFINITY)).collect();
    sorted.sort_by(f64::total_cmp);
    let value = ghostline::stats::percentile(&sorted, fraction);
    value.is_finite().then_some(value)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), value| (sum + value, count + 1));
    (count > 0).then(|| sum / count as f64)
}

/// Time from arriving to the first suggestion, over arrivals (None: none came).
pub fn cold_start(arrivals: &[Option<f64>]) -> Value {
    json!({"p50": percentile(arrivals, 0.5), "p90": percentile(arrivals, 0.9), "cases": arrivals.len()})
}

/// The figures of one run (or one language of it).
pub fn summarize(keystrokes: &[&Keystroke], arrivals: &[Option<f64>], chars_in_lines: usize, totals: Option<&ServerTotals>) -> Value {
    let count = keystrokes.len();
    let response: Vec<Option<f64>> = keystrokes.iter().map(|key| key.response_ms).collect();
    let suggestion: Vec<Option<f64>> = keystrokes.iter().map(|key| key.suggestion_ms).collect();
    let within_10 = keystrokes.iter().filter(|key| key.suggestion_ms.is_some_and(|ms| ms <= 10.0)).count();
    let with_suggestion = keystrokes.iter().filter(|key| key.suggestion_ms.is_some()).count();
    let correct: usize = keystrokes.iter().map(|key| key.correct_chars).sum();
    let saved: usize = keystrokes.iter().filter_map(|key| key.accepted_word.map(|chars| chars - 1)).sum();
    let share = |part: usize| if count == 0 { 0.0 } else { part as f64 / count as f64 };
    let mut figures = json!({
        "keystrokes": count,
        "responseMs": {
            "p50": percentile(&response, 0.5), "p90": percentile(&response, 0.9),
            "p99": percentile(&response, 0.99),
            "max": response.iter().flatten().copied().reduce(f64::max),
            "unanswered": response.iter().filter(|value| value.is_none()).count(),
        },
        "suggestionMs": {
            "p50": percentile(&suggestion, 0.5), "p90": percentile(&suggestion, 0.9),
            "p99": percentile(&suggestion, 0.99),
            "meanWhenShown": mean(suggestion.iter().flatten().copied()),
            // Over the keys that got a suggestion: a key whose right answer is empty (the line
            // is complete) is "never" above, as a key that waited for nothing.
            "p99WhenShown": percentile(&suggestion.iter().flatten().map(|ms| Some(*ms)).collect::<Vec<_>>(), 0.99),
        },
        "shareWithSuggestion": share(with_suggestion),
        "shareWithin10ms": share(within_10),
        "typedAheadShare": share(keystrokes.iter().filter(|key| key.typed_ahead).count()),
        "correctCharsPerKeystroke": if count == 0 { 0.0 } else { correct as f64 / count as f64 },
        "correctCharsPerSuggestion": if with_suggestion == 0 { 0.0 } else { correct as f64 / with_suggestion as f64 },
        "charsSaved": saved,
        "coldStartMs": cold_start(arrivals),
        "charsSavedShare": if chars_in_lines == 0 { 0.0 } else { saved as f64 / chars_in_lines as f64 },
    });
    if let Some(totals) = totals {
        figures["promptTokensPerKeystroke"] = json!(if count == 0 { 0.0 } else { totals.prompt_tokens as f64 / count as f64 });
        figures["serverCpuSeconds"] = json!(totals.cpu_seconds);
        figures["serverPeakRssMiB"] = json!(totals.peak_rss_mib);
        figures["typedAheadHits"] = json!(totals.typed_ahead_hits);
        figures["prefetchHits"] = json!(totals.prefetch_hits);
        if totals.generated_tokens > 0 {
            figures["generationMsPerToken"] = json!(totals.generation_ms / totals.generated_tokens as f64);
            figures["draftedTokens"] = json!(totals.drafted_tokens);
            figures["acceptedDraftTokens"] = json!(totals.accepted_draft_tokens);
            figures["restoredTokens"] = json!(totals.restored_tokens);
        }
        figures["requestsSent"] = json!(totals.requests_sent);
        figures["requestsAnswered"] = json!(totals.requests_answered);
    }
    figures
}

/// The rows of the table: label, JSON pointer, whether lower is better.
pub const ROWS: &[(&str, &str, bool)] = &[
    ("keystrokes", "/keystrokes", false),
    ("response p50 ms", "/responseMs/p50", true),
    ("response p90 ms", "/responseMs/p90", true),
    ("response p99 ms", "/responseMs/p99", true),
    ("response max ms", "/responseMs/max", true),
    ("suggestion p50 ms", "/suggestionMs/p50", true),
    ("suggestion p90 ms", "/suggestionMs/p90", true),
    ("suggestion p99 ms", "/suggestionMs/p99", true),
    ("suggestion mean ms (shown)", "/suggestionMs/meanWhenShown", true),
    ("suggestion p99 ms (shown)", "/suggestionMs/p99WhenShown", true),
    ("share with suggestion", "/shareWithSuggestion", false),
    ("share within 10 ms", "/shareWithin10ms", false),
    ("typed-ahead share", "/typedAheadShare", false),
    ("correct chars / keystroke", "/correctCharsPerKeystroke", false),
    ("correct chars / suggestion", "/correctCharsPerSuggestion", false),
    ("chars saved (Tab per word)", "/charsSaved", false),
    ("chars saved share", "/charsSavedShare", false),
    ("cold start p50 ms", "/coldStartMs/p50", true),
    ("cold start p90 ms", "/coldStartMs/p90", true),
    ("cold start, first visit p50", "/coldStartFirstVisitMs/p50", true),
    ("cold start, first visit p90", "/coldStartFirstVisitMs/p90", true),
    ("cold start, return p50 ms", "/coldStartReturnMs/p50", true),
    ("cold start, return p90 ms", "/coldStartReturnMs/p90", true),
    ("prompt tokens / keystroke", "/promptTokensPerKeystroke", true),
    ("prefetch hits", "/prefetchHits", false),
    ("generation ms / token", "/generationMsPerToken", true),
    ("tokens drafted", "/draftedTokens", false),
    ("drafted tokens kept", "/acceptedDraftTokens", false),
    ("prompt tokens restored", "/restoredTokens", false),
    ("server CPU s", "/serverCpuSeconds", true),
    ("server peak RSS MiB", "/serverPeakRssMiB", true),
];

pub fn cell(value: Option<&Value>) -> String {
    match value {
        Some(Value::Number(number)) if number.is_u64() => number.to_string(),
        Some(Value::Number(number)) => {
            let value = number.as_f64().unwrap_or(f64::NAN);
            if value.abs() >= 100.0 {
                format!("{value:.0}")
            } else if value.abs() >= 1.0 {
                format!("{value:.1}")
            } else {
                format!("{value:.2}")
            }
        }
        Some(Value::Null) => "never".to_string(),
        _ => "-".to_string(),
    }
}

/// Ghostline's figure over the peer's (both numbers, non-zero peer).
pub fn ratio(ours: Option<&Value>, theirs: Option<&Value>) -> Option<f64> {
    let ours = ours?.as_f64()?;
    let theirs = theirs?.as_f64()?;
    (theirs != 0.0).then(|| ours / theirs)
}

/// A text table, one column per run, and the ratio of the first run to the second.
pub fn table(names: &[String], figures: &[&Value]) -> String {
    let mut out = format!("{:<28}", "");
    for name in names {
        out.push_str(&format!(" {name:>27}"));
    }
    if names.len() >= 2 {
        out.push_str(&format!("{:>10}", "ratio"));
    }
    out.push('\n');
    for (label, pointer, _) in ROWS {
        if figures.iter().all(|figure| figure.pointer(pointer).is_none()) {
            continue;
        }
        out.push_str(&format!("{label:<28}"));
        for figure in figures {
            let text = match figure.pointer(pointer) {
                Some(Value::Null) if pointer.ends_with("WhenShown") => "-".to_string(),
                value => cell(value),
            };
            out.push_str(&format!("{text:>28}"));
        }
        if figures.len() >= 2 {
            let ratio = ratio(figures[0].pointer(pointer), figures[1].pointer(pointer));
            out.push_str(&format!("{:>10}", ratio.map(|ratio| format!("{ratio:.2}")).unwrap_or_else(|| "-".to_string())));
        }
        out.push('\n');
    }
    out
}

/// One server's latencies for the picture: its name, response and time-to-suggestion values.
pub type Curve = (String, Vec<Option<f64>>, Vec<Option<f64>>);

const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Two panels of cumulative distributions (response latency, time to suggestion) on a log
/// axis from 0.1 ms to 10 s; keystrokes that never got one keep a curve below 100 %.
pub fn svg(title: &str, runs: &[Curve]) -> String {
    let (width, height, margin) = (520.0, 300.0, 50.0);
    let (plot_w, plot_h) = (width - 2.0 * margin + 20.0, height - 2.0 * margin);
    let x_of = |ms: f64| margin + (ms.clamp(0.1, 10_000.0).log10() + 1.0) / 5.0 * plot_w;
    let y_of = |share: f64| margin + plot_h - share * plot_h;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"13\">{}</text>\n",
        width * 2.0,
        height + 20.0,
        escape(title)
    );
    for (panel, label) in ["response latency (first answer)", "time to suggestion"].iter().enumerate() {
        let dx = panel as f64 * width;
        out.push_str(&format!("<g transform=\"translate({dx},20)\">\n<text x=\"{margin}\" y=\"{}\">{label}: share of keystrokes within x</text>\n", margin - 12.0));
        for decade in 0..=5 {
            let ms = 10f64.powi(decade - 1);
            let x = x_of(ms);
            out.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{margin}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                margin + plot_h,
                margin + plot_h + 14.0,
                if ms < 1.0 { "0.1 ms".to_string() } else if ms < 1000.0 { format!("{ms} ms") } else { format!("{} s", ms / 1000.0) }
            ));
        }
        for tenth in 0..=4 {
            let share = tenth as f64 / 4.0;
            let y = y_of(share);
            out.push_str(&format!(
                "<line x1=\"{margin}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>\n",
                margin + plot_w,
                margin - 4.0,
                y + 4.0,
                share * 100.0
            ));
        }
        let ten_ms = x_of(10.0);
        out.push_str(&format!("<line x1=\"{ten_ms:.1}\" y1=\"{margin}\" x2=\"{ten_ms:.1}\" y2=\"{:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n", margin + plot_h));
        for (idx, (name, response, suggestion)) in runs.iter().enumerate() {
            let values = if panel == 0 { response } else { suggestion };
            let mut finite: Vec<f64> = values.iter().flatten().copied().collect();
            finite.sort_by(f64::total_cmp);
            let total = values.len().max(1) as f64;
            let mut points = vec![format!("{:.1},{:.1}", x_of(0.1), y_of(0.0))];
            for (rank, ms) in finite.iter().enumerate() {
                points.push(format!("{:.1},{:.1}", x_of(*ms), y_of(rank as f64 / total)));
                points.push(format!("{:.1},{:.1}", x_of(*ms), y_of((rank + 1) as f64 / total)));
            }
            points.push(format!("{:.1},{:.1}", x_of(10_000.0), y_of(finite.len() as f64 / total)));
            let color = COLORS[idx % COLORS.len()];
            out.push_str(&format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/>\n", points.join(" ")));
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{}</text>\n",
                margin + 8.0,
                margin + 14.0 + idx as f64 * 14.0,
                escape(name)
            ));
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
