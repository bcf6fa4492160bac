//! Character error rate, the accuracy measure for languages written without spaces
//! (Japanese): character-level Levenshtein distance over the reference length, after
//! NFKC normalization (full-width Latin and digits, half-width katakana folded to one
//! form) and keeping only letters and digits (punctuation, symbols and spaces dropped,
//! since Whisper places them freely).

use unicode_normalization::UnicodeNormalization;

/// NFKC, lower-cased, letters and digits only (Unicode Alphabetic or Numeric: kanji,
/// kana, the prolonged sound mark ー and the iteration mark 々 are kept).
pub fn normalize(text: &str) -> Vec<char> {
    text.nfkc()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Edits (substitutions, insertions, deletions) that turn `reference` into
/// `hypothesis`, after [`normalize`].
pub fn char_edits(reference: &str, hypothesis: &str) -> usize {
    crate::wer::edit_distance(&normalize(reference), &normalize(hypothesis))
}

/// Character error rate: [`char_edits`] over the normalized reference's length (can
/// exceed 1 when the hypothesis adds much text). An empty reference scores 0 against
/// an empty hypothesis and 1 against anything else.
pub fn character_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let reference_chars = normalize(reference).len();
    if reference_chars == 0 {
        return if normalize(hypothesis).is_empty() {
            0.0
        } else {
            1.0
        };
    }
    char_edits(reference, hypothesis) as f64 / reference_chars as f64
}

/// The first phrase of at least `min_chars` (after [`normalize`]) written twice in a
/// row ("質問がなければ質問がなければ"): the streaming failure of committing one phrase
/// twice. Longest first at each position.
pub fn doubled_phrase(text: &str, min_chars: usize) -> Option<String> {
    let chars = normalize(text);
    (0..chars.len()).find_map(|start| {
        let longest = (chars.len() - start) / 2;
        (min_chars.max(1)..=longest)
            .rev()
            .find(|&len| chars[start..start + len] == chars[start + len..start + 2 * len])
            .map(|len| chars[start..start + len].iter().collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_spaces_and_width_do_not_count() {
        assert_eq!(
            character_error_rate("予算会議を始めます。", "予算会議を 始めます"),
            0.0
        );
        // Full-width digits and Latin, half-width katakana, ASCII and CJK punctuation.
        assert_eq!(
            character_error_rate("ＡＰＩは３時から「ﾃｽﾄ」です！", "APIは3時からテストです?"),
            0.0
        );
        assert_eq!(normalize("部長々ー、。"), vec!['部', '長', '々', 'ー']);
    }

    #[test]
    fn finds_a_phrase_written_twice_in_a_row() {
        assert_eq!(
            doubled_phrase("次回の質問なければ、質問なければ。本日", 4).as_deref(),
            Some("質問なければ")
        );
        // Repeated, but not back to back; or too short.
        assert_eq!(doubled_phrase("会議は水曜日、会議は金曜日", 3), None);
        assert_eq!(doubled_phrase("はいはい", 4), None);
    }

    #[test]
    fn counts_substitutions_insertions_and_deletions_per_character() {
        // 打ち合わせ → 内合わせ: one substitution (打→内) and one deletion (ち).
        assert_eq!(char_edits("打ち合わせ", "内合わせ"), 2);
        assert_eq!(character_error_rate("打ち合わせ", "内合わせ"), 0.4);
        assert_eq!(character_error_rate("会議", "会議室"), 0.5);
        assert_eq!(character_error_rate("会議室", "会室"), 1.0 / 3.0);
        assert_eq!(character_error_rate("会議", ""), 1.0);
        assert_eq!(character_error_rate("会議", "明日の会議資料"), 2.5);
    }

    #[test]
    fn empty_reference_scores_zero_or_one() {
        assert_eq!(character_error_rate("。", ""), 0.0);
        assert_eq!(character_error_rate("", "はい"), 1.0);
    }
}
