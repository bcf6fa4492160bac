//! Whisper vocabulary: CTranslate2's `vocabulary.txt` to the raw token bytes ggml wants.
//!
//! CTranslate2 stores byte-level BPE tokens in GPT-2's printable form (each byte mapped
//! to a visible Unicode character, e.g. a leading space is `Ġ`). whisper.cpp wants the
//! raw bytes of the regular tokens only: it synthesises the special tokens
//! (`<|endoftext|>` onwards) itself from `n_vocab`.

use std::collections::HashMap;

/// GPT-2's `bytes_to_unicode` inverted: visible character → original byte.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for byte in 0u32..256 {
        if !printable.contains(&byte) {
            printable.push(byte);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .filter_map(|(byte, ch)| Some((char::from_u32(ch)?, u8::try_from(byte).ok()?)))
        .collect()
}

/// Why a vocabulary cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VocabError {
    #[error("vocabulary has no <|endoftext|> token: not a Whisper vocabulary")]
    NoEndOfText,
    #[error("vocabulary line {line}: character {ch:?} is not a GPT-2 byte symbol")]
    NotByteLevel { line: usize, ch: char },
}

/// GPT-2's printable character for `byte` (the forward table).
pub fn byte_symbol(byte: u8) -> char {
    unicode_to_byte()
        .into_iter()
        .find_map(|(ch, b)| (b == byte).then_some(ch))
        .unwrap_or('?')
}

/// Decodes the regular (non-special) tokens: every line before `<|endoftext|>`.
pub fn regular_token_bytes(vocabulary_txt: &str) -> Result<Vec<Vec<u8>>, VocabError> {
    let table = unicode_to_byte();
    let lines: Vec<&str> = vocabulary_txt.lines().collect();
    let end_of_text = lines
        .iter()
        .position(|l| *l == "<|endoftext|>")
        .ok_or(VocabError::NoEndOfText)?;
    lines[..end_of_text]
        .iter()
        .enumerate()
        .map(|(i, line)| {
            line.chars()
                .map(|ch| {
                    table
                        .get(&ch)
                        .copied()
                        .ok_or(VocabError::NotByteLevel { line: i + 1, ch })
                })
                .collect()
        })
        .collect()
}

/// Number of lines (tokens) in a vocabulary file, special tokens included.
pub fn token_count(vocabulary_txt: &str) -> usize {
    vocabulary_txt.lines().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection_over_all_256_bytes() {
        let table = unicode_to_byte();
        assert_eq!(table.len(), 256);
        let mut bytes: Vec<u8> = table.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
    }

    #[test]
    fn decodes_space_prefix_newline_and_multibyte_utf8() {
        // "Ġthe" = " the"; "Ċ" = "\n"; "ãģĤ" = "あ" (E3 81 82) in GPT-2 form.
        let vocab = "!\nĠthe\nĊ\nãģĤ\n<|endoftext|>\n<|startoftranscript|>\n";
        let tokens = regular_token_bytes(vocab).expect("valid vocabulary");
        assert_eq!(
            tokens,
            vec![
                b"!".to_vec(),
                b" the".to_vec(),
                b"\n".to_vec(),
                "あ".as_bytes().to_vec()
            ]
        );
    }

    #[test]
    fn refuses_vocabulary_without_end_of_text() {
        assert_eq!(regular_token_bytes("a\nb\n"), Err(VocabError::NoEndOfText));
    }

    #[test]
    fn refuses_characters_outside_the_byte_alphabet() {
        let err = regular_token_bytes("a\n漢\n<|endoftext|>\n").expect_err("not byte-level");
        assert_eq!(err, VocabError::NotByteLevel { line: 2, ch: '漢' });
    }
}
