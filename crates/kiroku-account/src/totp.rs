//! Time-based one-time passwords (RFC 6238) for admin MFA (control 9.2.3).
//!
//! SHA-1, 6 digits, 30 s step (what every authenticator app speaks); a code is
//! accepted for the current step and one step either side (clock drift), and each
//! step's code is accepted once: the caller stores the returned step and passes it as
//! `last_used_step` next time, so a replayed code is refused.

use totp_rs::{Algorithm, TOTP};

pub const STEP_SECONDS: u64 = 30;
pub const DIGITS: usize = 6;
/// Steps accepted either side of the current one.
pub const SKEW_STEPS: i64 = 1;
/// Secret length: 160 bits, RFC 4226's recommendation.
pub const SECRET_BYTES: usize = 20;
const ISSUER: &str = "Kiroku";

fn totp(secret: &[u8], account: &str) -> Result<TOTP, String> {
    // The label may not contain ':' (otpauth URI syntax); emails never do.
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        0,
        STEP_SECONDS,
        secret.to_vec(),
        Some(ISSUER.to_string()),
        account.replace(':', "_"),
    )
    .map_err(|e| format!("totp set-up: {e}"))
}

/// A fresh random secret.
pub fn new_secret() -> Result<Vec<u8>, String> {
    let mut secret = vec![0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|e| format!("no randomness: {e}"))?;
    Ok(secret)
}

/// The `otpauth://` URI an authenticator app scans, and the base32 secret.
pub fn enrollment(secret: &[u8], account: &str) -> Result<(String, String), String> {
    let totp = totp(secret, account)?;
    Ok((totp.get_url(), totp.get_secret_base32()))
}

/// The raw secret of a base32 one (as shown at enrollment).
pub fn decode_secret(base32: &str) -> Result<Vec<u8>, String> {
    totp_rs::Secret::Encoded(base32.to_string())
        .to_bytes()
        .map_err(|e| format!("secret is not base32: {e:?}"))
}

/// The code for the step containing `unix_seconds` (tests and `kiroku mfa code`).
pub fn code_at(secret: &[u8], unix_seconds: u64) -> Result<String, String> {
    Ok(totp(secret, "x")?.generate(unix_seconds))
}

/// Checks `code` at `unix_seconds`; returns the matched step, which must be later than
/// `last_used_step` (single use). `None` when the code is wrong, outside the window or
/// already used.
pub fn verify(
    secret: &[u8],
    code: &str,
    unix_seconds: u64,
    last_used_step: Option<i64>,
) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret, "x").ok()?;
    let current = (unix_seconds / STEP_SECONDS) as i64;
    (-SKEW_STEPS..=SKEW_STEPS)
        .map(|offset| current + offset)
        .filter(|step| *step >= 0 && last_used_step.is_none_or(|last| *step > last))
        .find(|step| {
            let expected = totp.generate(*step as u64 * STEP_SECONDS);
            // constant-time comparison of two 6-digit strings
            expected
                .bytes()
                .zip(code.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 secret "12345678901234567890" (8-digit codes there;
    /// the last 6 digits are the 6-digit codes).
    #[test]
    fn matches_the_rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (time, eight_digits) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            assert_eq!(code_at(secret, time).expect("code"), &eight_digits[2..]);
        }
    }

    // control 9.2.3: drift of one step accepted, two refused
    #[test]
    fn control_9_2_3_one_step_of_drift_is_accepted_and_two_are_not() {
        let secret = new_secret().expect("secret");
        let now = 1_700_000_000u64;
        let code = code_at(&secret, now).expect("code");
        assert!(verify(&secret, &code, now + STEP_SECONDS, None).is_some());
        assert!(verify(&secret, &code, now - STEP_SECONDS, None).is_some());
        assert!(verify(&secret, &code, now + 2 * STEP_SECONDS, None).is_none());
        assert!(verify(&secret, &code, now - 2 * STEP_SECONDS, None).is_none());
    }

    // control 9.2.3: a code is usable once
    #[test]
    fn control_9_2_3_a_used_code_is_refused() {
        let secret = new_secret().expect("secret");
        let now = 1_700_000_000u64;
        let code = code_at(&secret, now).expect("code");
        let step = verify(&secret, &code, now, None).expect("first use");
        assert_eq!(verify(&secret, &code, now, Some(step)), None);
        // nor can an older code be used after a newer one
        let older = code_at(&secret, now - STEP_SECONDS).expect("code");
        assert_eq!(verify(&secret, &older, now, Some(step)), None);
    }

    #[test]
    fn malformed_codes_are_refused() {
        let secret = new_secret().expect("secret");
        for code in ["", "12345", "1234567", "abcdef", "12 345"] {
            assert_eq!(verify(&secret, code, 1_700_000_000, None), None, "{code}");
        }
    }

    #[test]
    fn enrollment_uri_names_the_issuer_and_account() {
        let secret = new_secret().expect("secret");
        let (uri, base32) = enrollment(&secret, "ana@example.com").expect("uri");
        assert!(
            uri.starts_with("otpauth://totp/Kiroku:ana%40example.com?"),
            "{uri}"
        );
        assert!(uri.contains(&format!("secret={base32}")), "{uri}");
        assert!(uri.contains("issuer=Kiroku"), "{uri}");
        assert_eq!(decode_secret(&base32).expect("decode"), secret);
    }
}
