//! Weight-name manifests: every tensor name of a model with its shape.
//!
//! The reference harness writes one per component of the full-size SD1.5,
//! SD2.1 and SDXL models (`reference/manifests/`), made from their configs;
//! tests build the same architectures here and compare, so the real files
//! load without conversion even though they never appear on this machine.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

use sd_core::{CoreError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Tensor name -> shape.
    pub tensors: BTreeMap<String, Vec<i64>>,
    /// Names the real files may also carry that a model need not take
    /// (for example `text_model.embeddings.position_ids` in files saved by
    /// older transformers).
    #[serde(default)]
    pub optional: BTreeMap<String, Vec<i64>>,
}

/// How two manifests differ, by name.
#[derive(Debug, Default, PartialEq)]
pub struct ManifestDiff {
    pub only_in_expected: Vec<String>,
    pub only_in_actual: Vec<String>,
    pub shape_differs: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl ManifestDiff {
    pub fn is_empty(&self) -> bool {
        self.only_in_expected.is_empty()
            && self.only_in_actual.is_empty()
            && self.shape_differs.is_empty()
    }
}

impl Manifest {
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
        serde_json::from_str(&text).map_err(|source| CoreError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The names and shapes of every variable in a built model.
    /// This file manifest's tensors as the model variables `map` makes of
    /// each key (a single file's layout onto diffusers'); panics when two
    /// keys fill the same variable.
    pub fn mapped(&self, map: &dyn Fn(&str) -> sd_core::weights::KeyMap) -> Manifest {
        let mut tensors = BTreeMap::new();
        for (key, shape) in &self.tensors {
            for (target, shape) in map(key).targets(shape) {
                assert!(
                    tensors.insert(target.clone(), shape).is_none(),
                    "{target} twice"
                );
            }
        }
        Manifest {
            tensors,
            optional: BTreeMap::new(),
        }
    }

    pub fn of_var_store(vs: &VarStore) -> Self {
        let tensors = vs
            .variables()
            .into_iter()
            .map(|(name, tensor)| (name, tensor.size()))
            .collect();
        Manifest {
            tensors,
            optional: BTreeMap::new(),
        }
    }

    /// Compares `actual` against `self`. Names in `self.optional` may be
    /// present in `actual` or not.
    pub fn diff(&self, actual: &Manifest) -> ManifestDiff {
        let mut diff = ManifestDiff::default();
        for (name, shape) in &self.tensors {
            match actual.tensors.get(name) {
                None => diff.only_in_expected.push(name.clone()),
                Some(other) if other != shape => {
                    diff.shape_differs
                        .push((name.clone(), shape.clone(), other.clone()))
                }
                Some(_) => {}
            }
        }
        for (name, shape) in &actual.tensors {
            if self.tensors.contains_key(name) {
                continue;
            }
            match self.optional.get(name) {
                Some(optional) if optional == shape => {}
                _ => diff.only_in_actual.push(name.clone()),
            }
        }
        diff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(entries: &[(&str, &[i64])]) -> Manifest {
        Manifest {
            tensors: entries
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_vec()))
                .collect(),
            optional: BTreeMap::new(),
        }
    }

    #[test]
    fn diff_names_every_difference() {
        let mut expected = manifest(&[("a.weight", &[2, 3]), ("b.weight", &[4]), ("c", &[1])]);
        expected.optional.insert("pos".to_string(), vec![1, 77]);
        let actual = manifest(&[
            ("a.weight", &[3, 2]),
            ("c", &[1]),
            ("d", &[5]),
            ("pos", &[1, 77]),
        ]);
        let diff = expected.diff(&actual);
        assert_eq!(diff.only_in_expected, vec!["b.weight".to_string()]);
        assert_eq!(diff.only_in_actual, vec!["d".to_string()]);
        assert_eq!(
            diff.shape_differs,
            vec![("a.weight".to_string(), vec![2, 3], vec![3, 2])]
        );
        assert!(!diff.is_empty());
        assert!(expected.diff(&expected.clone()).is_empty());
    }
}
