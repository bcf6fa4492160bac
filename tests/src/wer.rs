//! Word error rate: word-level Levenshtein distance over the reference length, after
//! lower-casing and dropping punctuation.

/// Lower-cases and keeps letters, digits and apostrophes; splits on the rest.
pub fn normalize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Levenshtein distance: the substitutions, insertions and deletions that turn `r` into
/// `h` (words for WER, characters for CER).
pub fn edit_distance<T: PartialEq>(r: &[T], h: &[T]) -> usize {
    let mut previous: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut current = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let substitution = previous[j] + usize::from(rw != hw);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[h.len()]
}

pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (normalize(reference), normalize(hypothesis));
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    edit_distance(&r, &h) as f64 / r.len() as f64
}

/// The longest run of consecutive reference words a minimal word alignment deletes: a
/// transcript that lost a sentence has a run as long as the sentence, one that misheard
/// words has substitutions instead (ties are aligned as substitutions).
pub fn longest_deletion(reference: &str, hypothesis: &str) -> usize {
    let (r, h) = (normalize(reference), normalize(hypothesis));
    let columns = h.len() + 1;
    // cost[i * columns + j]: edits turning r[..i] into h[..j].
    let mut cost = vec![0usize; (r.len() + 1) * columns];
    for i in 0..=r.len() {
        for j in 0..=h.len() {
            cost[i * columns + j] = match (i, j) {
                (0, _) => j,
                (_, 0) => i,
                _ => {
                    let substitution =
                        cost[(i - 1) * columns + j - 1] + usize::from(r[i - 1] != h[j - 1]);
                    substitution
                        .min(cost[(i - 1) * columns + j] + 1)
                        .min(cost[i * columns + j - 1] + 1)
                }
            };
        }
    }
    let (mut i, mut j, mut run, mut longest) = (r.len(), h.len(), 0, 0);
    while i > 0 {
        let here = cost[i * columns + j];
        if j > 0 && here == cost[(i - 1) * columns + j - 1] + usize::from(r[i - 1] != h[j - 1]) {
            (i, j, run) = (i - 1, j - 1, 0);
        } else if j > 0 && here == cost[i * columns + j - 1] + 1 {
            j -= 1;
        } else {
            i -= 1;
            run += 1;
            longest = longest.max(run);
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_substitutions_insertions_and_deletions() {
        assert_eq!(
            word_error_rate("the budget is final", "The budget, is final."),
            0.0
        );
        assert_eq!(word_error_rate("a b c d", "a x c d"), 0.25);
        assert_eq!(word_error_rate("a b c d", "a b c d e f"), 0.5);
        assert_eq!(word_error_rate("a b c d", "a d"), 0.5);
        assert_eq!(word_error_rate("a b", ""), 1.0);
    }

    #[test]
    fn finds_the_longest_run_of_lost_words() {
        assert_eq!(longest_deletion("a b c d", "a b c d"), 0);
        assert_eq!(
            longest_deletion("a b c d", "a x y d"),
            0,
            "misheard, not lost"
        );
        assert_eq!(longest_deletion("a b c d e f", "a f"), 4);
        assert_eq!(longest_deletion("a b c d e f", "a c f"), 2);
        assert_eq!(longest_deletion("a b", ""), 2);
        assert_eq!(
            longest_deletion(
                "test servers support needs two more people because customers keep growing",
                "test servers growing"
            ),
            8
        );
    }
}
