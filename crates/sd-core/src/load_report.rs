//! [`LoadReport`]: what did not fit when weights were loaded, by name. Its own
//! module, so that the error type can carry it without depending on the loader.

use std::fmt;

/// What did not fit, by name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// Model variables no file provides.
    pub missing: Vec<String>,
    /// File tensors no model variable takes (after renaming).
    pub unexpected: Vec<String>,
    /// `(name, model shape, file shape)` where the two differ.
    pub mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl LoadReport {
    pub(crate) fn is_fatal(&self, allow_unexpected: bool) -> bool {
        !self.missing.is_empty()
            || !self.mismatched.is_empty()
            || (!allow_unexpected && !self.unexpected.is_empty())
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 20;
        let list = |f: &mut fmt::Formatter<'_>, what: &str, names: Vec<String>| {
            if names.is_empty() {
                return Ok(());
            }
            writeln!(f, "  {} {what}:", names.len())?;
            for name in names.iter().take(SHOWN) {
                writeln!(f, "    {name}")?;
            }
            if names.len() > SHOWN {
                writeln!(f, "    ... and {} more", names.len() - SHOWN)?;
            }
            Ok(())
        };
        list(f, "missing from the files", self.missing.clone())?;
        let shapes = self
            .mismatched
            .iter()
            .map(|(name, model, file)| format!("{name}: model {model:?}, file {file:?}"))
            .collect();
        list(f, "with the wrong shape", shapes)?;
        list(f, "not used by the model", self.unexpected.clone())
    }
}
