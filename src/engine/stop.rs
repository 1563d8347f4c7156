//! Stop rules applied to the growing suggestion text after every generated token.
//!
//! Pure functions on strings, so they are tested without a model. A rule returns where to cut
//! the text; the decode loop stops as soon as any rule fires.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRules {
    /// Stop at the end of the first line.
    pub single_line: bool,
    /// Stop after this many complete lines (multi-line suggestions); 0 means no limit.
    pub max_lines: usize,
    /// Stop before any of these strings.
    pub stop_strings: Vec<String>,
}

impl Default for StopRules {
    fn default() -> Self {
        StopRules { single_line: true, max_lines: 0, stop_strings: Vec::new() }
    }
}

impl StopRules {
    pub fn multi_line(max_lines: usize) -> StopRules {
        StopRules { single_line: false, max_lines, stop_strings: Vec::new() }
    }

    /// Returns the byte length the text must be cut to if a rule fires, else `None`.
    pub fn check(&self, text: &str) -> Option<usize> {
        let mut cut: Option<usize> = None;
        let mut keep_smallest = |at: usize| cut = Some(cut.map_or(at, |prev| prev.min(at)));
        if self.single_line {
            if let Some(newline_idx) = text.find('\n') {
                keep_smallest(newline_idx);
            }
        } else if self.max_lines > 0 {
            if let Some((newline_idx, _)) = text.match_indices('\n').nth(self.max_lines - 1) {
                keep_smallest(newline_idx);
            }
        }
        for stop in &self.stop_strings {
            if stop.is_empty() {
                continue;
            }
            if let Some(stop_idx) = text.find(stop.as_str()) {
                keep_smallest(stop_idx);
            }
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_cuts_at_first_newline() {
        let rules = StopRules::default();
        assert_eq!(rules.check("radius * radius"), None);
        assert_eq!(rules.check("radius\n    x"), Some(6));
        assert_eq!(rules.check("\nfoo"), Some(0));
    }

    #[test]
    fn multi_line_counts_lines() {
        let rules = StopRules::multi_line(2);
        assert_eq!(rules.check("a\nb"), None);
        assert_eq!(rules.check("a\nb\nc"), Some(3));
        assert_eq!(StopRules::multi_line(0).check("a\nb\nc\n"), None);
    }

    #[test]
    fn stop_strings_cut_before_the_earliest() {
        let rules = StopRules { single_line: false, max_lines: 0, stop_strings: vec!["```".into(), "END".into()] };
        assert_eq!(rules.check("abc END ``` x"), Some(4));
        assert_eq!(rules.check("abc"), None);
    }
}
