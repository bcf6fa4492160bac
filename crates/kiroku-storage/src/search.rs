//! The terms a text is indexed and searched by. Words are lowercase runs of letters and
//! digits; runs of Japanese or Chinese characters (no spaces between words) become every
//! character and every pair of neighbouring characters, so a search for 予算 finds
//! 予算会議. The terms are stored only as keyed hashes ([`crate::crypto::DataKey::index_token`]):
//! the index reveals no words, and it dies with the tenant's data key.

use std::collections::BTreeSet;

fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{30ff}'   // hiragana, katakana
        | '\u{3400}'..='\u{4dbf}' // CJK extension A
        | '\u{4e00}'..='\u{9fff}' // CJK unified ideographs
        | '\u{f900}'..='\u{faff}' // compatibility ideographs
        | '\u{ff66}'..='\u{ff9f}' // half-width katakana
    )
}

enum Run {
    Word(String),
    Cjk(Vec<char>),
}

fn runs(text: &str) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut word = String::new();
    let mut cjk = Vec::new();
    for c in text.chars() {
        if is_cjk(c) {
            if !word.is_empty() {
                runs.push(Run::Word(std::mem::take(&mut word)));
            }
            cjk.push(c);
        } else if c.is_alphanumeric() {
            if !cjk.is_empty() {
                runs.push(Run::Cjk(std::mem::take(&mut cjk)));
            }
            word.extend(c.to_lowercase());
        } else {
            if !word.is_empty() {
                runs.push(Run::Word(std::mem::take(&mut word)));
            }
            if !cjk.is_empty() {
                runs.push(Run::Cjk(std::mem::take(&mut cjk)));
            }
        }
    }
    if !word.is_empty() {
        runs.push(Run::Word(word));
    }
    if !cjk.is_empty() {
        runs.push(Run::Cjk(cjk));
    }
    runs
}

/// Index terms of a stored text.
pub fn index_terms(text: &str) -> BTreeSet<String> {
    let mut terms = BTreeSet::new();
    for run in runs(text) {
        match run {
            Run::Word(word) => {
                terms.insert(word);
            }
            Run::Cjk(chars) => {
                for (i, c) in chars.iter().enumerate() {
                    terms.insert(c.to_string());
                    if let Some(next) = chars.get(i + 1) {
                        terms.insert(format!("{c}{next}"));
                    }
                }
            }
        }
    }
    terms
}

/// Terms a query needs (every one must be in a segment): its words, and for Japanese
/// the character pairs (or the single character) of each run.
pub fn query_terms(query: &str) -> BTreeSet<String> {
    let mut terms = BTreeSet::new();
    for run in runs(query) {
        match run {
            Run::Word(word) => {
                terms.insert(word);
            }
            Run::Cjk(chars) if chars.len() == 1 => {
                terms.insert(chars[0].to_string());
            }
            Run::Cjk(chars) => {
                for pair in chars.windows(2) {
                    terms.insert(pair.iter().collect());
                }
            }
        }
    }
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str, query: &str) -> bool {
        let index = index_terms(text);
        let wanted = query_terms(query);
        !wanted.is_empty() && wanted.iter().all(|t| index.contains(t))
    }

    #[test]
    fn english_words_match_case_insensitively_and_whole() {
        assert!(found("The Budget review starts now.", "budget"));
        assert!(found("The Budget review starts now.", "REVIEW budget"));
        assert!(!found("The Budget review starts now.", "budgets"));
        assert!(!found("The Budget review starts now.", "budget approval"));
        assert!(query_terms("  ... ").is_empty());
    }

    #[test]
    fn japanese_substrings_match() {
        let text = "来期の予算会議は金曜日です。";
        assert!(found(text, "予算"));
        assert!(found(text, "予算会議"));
        assert!(found(text, "金曜"));
        assert!(found(text, "会"));
        assert!(!found(text, "予定"));
        assert!(found("Kiroku の予算 review", "予算 review"));
    }
}
