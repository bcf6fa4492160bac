//! Secrets from the environment, one rule for every key and token: `NAME` holds the
//! value, or `NAME_FILE` names a file that does (a mounted Kubernetes secret, or what
//! `kiroku up` writes under `.run/`). Never a flag: flags show in `ps`. Error messages
//! name the variable and the file, never the value.

use zeroize::Zeroizing;

/// A secret read from the environment: its text (wiped when dropped) and where it came
/// from, for error messages.
pub struct EnvSecret {
    pub text: Zeroizing<String>,
    /// `NAME`, or `NAME_FILE (path)`.
    pub source: String,
}

impl std::fmt::Debug for EnvSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnvSecret({}: ***)", self.source)
    }
}

/// `NAME`, else the contents of the file `NAME_FILE` names, else `None`. An unreadable
/// file is an error (a configured secret that cannot be read must not silently turn
/// the feature off).
pub fn from_env(name: &str) -> Result<Option<EnvSecret>, String> {
    lookup(name, |var| std::env::var(var).ok())
}

/// [`from_env`] for a secret the caller cannot run without.
pub fn required_from_env(name: &str) -> Result<EnvSecret, String> {
    required(name, from_env(name)?)
}

fn lookup(name: &str, var: impl Fn(&str) -> Option<String>) -> Result<Option<EnvSecret>, String> {
    if let Some(text) = var(name) {
        return Ok(Some(EnvSecret {
            text: Zeroizing::new(text),
            source: name.to_string(),
        }));
    }
    let file_var = format!("{name}_FILE");
    let Some(path) = var(&file_var) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .map(Zeroizing::new)
        .map_err(|e| format!("{file_var} ({path}): {e}"))?;
    Ok(Some(EnvSecret {
        text,
        source: format!("{file_var} ({path})"),
    }))
}

fn required(name: &str, secret: Option<EnvSecret>) -> Result<EnvSecret, String> {
    secret.ok_or_else(|| format!("set {name} or {name}_FILE"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_variable_wins_over_the_file() {
        let vars = env(&[("KEY", "from-env"), ("KEY_FILE", "/nonexistent/secret")]);
        let secret = lookup("KEY", vars).expect("read").expect("set");
        assert_eq!(secret.text.as_str(), "from-env");
        assert_eq!(secret.source, "KEY");
    }

    #[test]
    fn a_file_is_read_and_named_and_a_missing_one_is_an_error() {
        let path = std::env::temp_dir().join(format!("kiroku-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").expect("write");
        let path_text = path.display().to_string();
        let secret = lookup("KEY", env(&[("KEY_FILE", &path_text)]))
            .expect("read")
            .expect("set");
        assert_eq!(secret.text.as_str(), "from-file\n");
        assert_eq!(secret.source, format!("KEY_FILE ({path_text})"));
        assert!(!format!("{secret:?}").contains("from-file"), "{secret:?}");
        std::fs::remove_file(&path).expect("remove");
        let error = lookup("KEY", env(&[("KEY_FILE", &path_text)])).expect_err("file gone");
        assert!(
            error.starts_with(&format!("KEY_FILE ({path_text}): ")),
            "{error}"
        );
    }

    #[test]
    fn neither_set_is_none_or_a_clear_error_when_required() {
        let secret = lookup("KEY", env(&[])).expect("read");
        assert!(secret.is_none());
        let error = required("KEY", secret).expect_err("unset");
        assert_eq!(error, "set KEY or KEY_FILE");
    }
}
