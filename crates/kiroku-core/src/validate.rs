//! Checks for the strings callers send: one place decides what a well-formed field is,
//! so every service refuses the same input with the same message.
//!
//! Every string that reaches a C library (whisper.cpp takes NUL-terminated strings),
//! PostgreSQL (`text` refuses NUL), a log line or an audit event goes through one of
//! these first. The limits are public (docs/api.md lists them); a refusal names the
//! field and the rule, and becomes `INVALID_ARGUMENT` at the gRPC edge.

use std::fmt;

/// A field that broke a rule: `field` names it as the API does (`options.prompt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

impl std::error::Error for FieldError {}

impl From<FieldError> for tonic::Status {
    fn from(error: FieldError) -> Self {
        tonic::Status::invalid_argument(error.to_string())
    }
}

/// A list request's `page_size`: 0 asks for `default`, more than `max` is refused.
pub fn page_size(requested: u32, default: u32, max: u32) -> Result<u32, FieldError> {
    match requested {
        0 => Ok(default),
        n if n > max => Err(refuse("page_size", format!("is at most {max}"))),
        n => Ok(n),
    }
}

fn refuse(field: &str, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// Longest meeting id, in bytes (the same on every path: streams, files, storage).
pub const MAX_MEETING_ID_BYTES: usize = 128;
/// Longest e-mail address, in bytes (RFC 5321's path limit).
pub const MAX_EMAIL_BYTES: usize = 254;

/// What a field may hold besides printable text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// One line: no control character at all.
    Line,
    /// Free text (a prompt, a note): line feeds and tabs are allowed, no other control
    /// character.
    Multiline,
}

/// `value` fits in `max_bytes` and holds no NUL or other control character (line feed
/// and tab allowed in [`Text::Multiline`]).
pub fn text(field: &str, value: &str, max_bytes: usize, kind: Text) -> Result<(), FieldError> {
    if value.len() > max_bytes {
        return Err(refuse(
            field,
            format!("is {} bytes; at most {max_bytes} are allowed", value.len()),
        ));
    }
    let allowed = |c: char| kind == Text::Multiline && matches!(c, '\n' | '\t' | '\r');
    if let Some((at, c)) = value
        .char_indices()
        .find(|&(_, c)| c.is_control() && !allowed(c))
    {
        let name = if c == '\0' {
            "a NUL character".to_string()
        } else {
            format!("the control character U+{:04X}", u32::from(c))
        };
        return Err(refuse(field, format!("holds {name} at byte {at}")));
    }
    Ok(())
}

/// A meeting id: 1 to [`MAX_MEETING_ID_BYTES`] bytes after trimming, one line. Returns
/// the trimmed id.
pub fn meeting_id(field: &str, value: &str) -> Result<String, FieldError> {
    let id = value.trim();
    if id.is_empty() {
        return Err(refuse(field, "is empty"));
    }
    text(field, id, MAX_MEETING_ID_BYTES, Text::Line)?;
    Ok(id.to_string())
}

/// An e-mail address as accounts store it: trimmed, lower case, `local@domain.tld`, at
/// most [`MAX_EMAIL_BYTES`] bytes, no space or control character.
pub fn email(field: &str, value: &str) -> Result<String, FieldError> {
    let email = value.trim().to_lowercase();
    text(field, &email, MAX_EMAIL_BYTES, Text::Line)?;
    let shaped = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
    }) && !email.chars().any(char::is_whitespace);
    if !shaped {
        return Err(refuse(field, format!("{email:?} is not a valid address")));
    }
    Ok(email)
}

/// `value` with every control character (other than line feed and tab) replaced by
/// U+FFFD and cut to at most `max_bytes` (on a character boundary): for text that must
/// be recorded even when it is hostile (an audit event naming what was refused).
pub fn sanitized(value: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max_bytes));
    for c in value.chars() {
        let c = if c.is_control() && !matches!(c, '\n' | '\t') {
            char::REPLACEMENT_CHARACTER
        } else {
            c
        };
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0, 50, 200), Ok(50));
        assert_eq!(page_size(200, 50, 200), Ok(200));
        assert_eq!(
            page_size(201, 50, 200).expect_err("over").to_string(),
            "page_size is at most 200"
        );
    }

    #[test]
    fn control_characters_are_named_with_their_place() {
        let error = text("options.prompt", "agenda\0", 100, Text::Multiline).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "options.prompt holds a NUL character at byte 6"
        );
        let error = text("meeting_id", "a\u{1b}[2J", 100, Text::Line).expect_err("refused");
        assert!(error.to_string().contains("U+001B at byte 1"), "{error}");
        assert!(
            text(
                "options.prompt",
                "line one\nline two\t",
                100,
                Text::Multiline
            )
            .is_ok()
        );
        assert!(text("meeting_id", "line one\nline two", 100, Text::Line).is_err());
    }

    #[test]
    fn lengths_are_counted_in_bytes() {
        // 議事録 is 9 bytes in UTF-8.
        assert!(text("f", "議事録", 9, Text::Line).is_ok());
        let error = text("f", "議事録", 8, Text::Line).expect_err("refused");
        assert_eq!(error.to_string(), "f is 9 bytes; at most 8 are allowed");
    }

    #[test]
    fn meeting_ids_and_emails() {
        assert_eq!(
            meeting_id("meeting_id", "  weekly-1 ").expect("accepted"),
            "weekly-1"
        );
        assert!(meeting_id("meeting_id", "   ").is_err());
        assert!(meeting_id("meeting_id", &"x".repeat(129)).is_err());
        assert_eq!(
            email("email", " Hanako@Example.JP ").expect("accepted"),
            "hanako@example.jp"
        );
        for bad in [
            "",
            "no-at",
            "@example.jp",
            "a@jp",
            "a@.jp",
            "a b@example.jp",
        ] {
            assert!(email("email", bad).is_err(), "{bad:?}");
        }
        let error = email("email", "a\0@example.jp").expect_err("refused");
        assert!(error.to_string().contains("NUL"), "{error}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn sanitized_text_always_passes_the_check(value in any::<String>(), max in 0usize..64) {
                let clean = sanitized(&value, max);
                prop_assert!(clean.len() <= max);
                prop_assert!(text("f", &clean, max, Text::Multiline).is_ok());
            }

            #[test]
            fn accepted_text_has_no_nul_and_fits(value in any::<String>(), max in 0usize..64) {
                if text("f", &value, max, Text::Multiline).is_ok() {
                    prop_assert!(!value.contains('\0'));
                    prop_assert!(value.len() <= max);
                }
            }
        }
    }
}
