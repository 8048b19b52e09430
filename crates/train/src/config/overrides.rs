//! Changes between two configurations (what `--resume` may change), and deep-merging a config
//! file's JSON and `key=value` overrides into a configuration.

use serde_json::Value;

use super::TrainConfig;
use crate::TrainError;

/// The settings that `ddpm train --resume` may change, as dotted config keys (a key covers
/// everything under it). They decide how long and how fast the run goes on, how often it writes,
/// and how it reads data, but not what it learns: the model, the schedule, the objective, the
/// data, the batch size, the seed, EMA and the optimizer's other settings stay fixed for a run.
/// The device and threads are flags, not config keys, and may always change; so may the
/// data-parallel settings (`distributed`), and the number of ranks.
pub const RESUME_MUTABLE: [&str; 21] = [
    "max_steps",
    "epochs",
    "optim.lr",
    "optim.warmup_steps",
    "optim.decay",
    "optim.min_lr",
    "checkpoint_every",
    "keep_last",
    "log_every",
    // What the run reports, not what it learns.
    "tensorboard",
    "sample_every_epochs",
    "n_sample_images",
    "n_workers",
    // How many passes a step takes: the same step up to the order of the gradient sums.
    "grad_accum",
    "max_nonfinite_in_a_row",
    "distributed",
    // Activation checkpointing trades memory for time; the results are the same up to rounding.
    "model.gradient_checkpointing",
    // How often and how the samples are scored: what the run measures, not what it learns.
    "eval_every",
    "eval_samples",
    "eval_sampler",
    // Another reference is named as a change, and the best record measured against the old one
    // is then replaced by the next evaluation.
    "eval_reference",
];

/// One setting that differs between two configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigChange {
    /// The dotted key (`optim.lr`); an object's key when it changes variant (`model`).
    pub key: String,
    /// The value before, as JSON.
    pub saved: Value,
    /// The value after, as JSON.
    pub given: Value,
}

impl ConfigChange {
    /// Whether [`RESUME_MUTABLE`] lets a resume make this change.
    pub fn allowed_on_resume(&self) -> bool {
        RESUME_MUTABLE.iter().any(|k| {
            self.key == *k
                || self
                    .key
                    .strip_prefix(k)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

impl std::fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.saved, self.given)
    }
}

impl TrainConfig {
    /// Every setting that differs from `self` in `other`, in key order.
    pub fn changes(&self, other: &TrainConfig) -> Vec<ConfigChange> {
        let a = serde_json::to_value(self).expect("configs serialise");
        let b = serde_json::to_value(other).expect("configs serialise");
        let mut out = Vec::new();
        diff(&a, &b, "", &mut out);
        out
    }

    /// The changes from the saved configuration `self` to `given` when a run resumes, all of
    /// them in [`RESUME_MUTABLE`].
    ///
    /// # Errors
    /// [`TrainError::ResumeChange`] naming the first other key that changes, with both values.
    pub fn check_resume(&self, given: &TrainConfig) -> Result<Vec<ConfigChange>, TrainError> {
        let changes = self.changes(given);
        if let Some(bad) = changes.iter().find(|c| !c.allowed_on_resume()) {
            return Err(TrainError::ResumeChange {
                key: bad.key.clone(),
                saved: bad.saved.to_string(),
                given: bad.given.to_string(),
            });
        }
        Ok(changes)
    }
}

fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<ConfigChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y))
            if !TAGS.iter().any(|tag| x.get(*tag) != y.get(*tag)) =>
        {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let null = Value::Null;
                diff(
                    x.get(key).unwrap_or(&null),
                    y.get(key).unwrap_or(&null),
                    &child,
                    out,
                );
            }
        }
        _ if a == b => {}
        _ => out.push(ConfigChange {
            key: path.to_string(),
            saved: a.clone(),
            given: b.clone(),
        }),
    }
}

/// Keys that select an enum variant: when an override changes one, the object is replaced
/// instead of merged, because the other variant has other fields.
const TAGS: [&str; 2] = ["kind", "arch"];

pub(super) fn merge(base: &mut Value, over: &Value, path: &str) -> Result<(), TrainError> {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let switches_variant = TAGS.iter().any(|tag| {
                o.get(*tag)
                    .is_some_and(|v| b.get(*tag).is_some_and(|bv| bv != v))
            });
            if switches_variant {
                *b = o.clone();
                return Ok(());
            }
            for (key, v) in o {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get_mut(key) {
                    Some(slot) => merge(slot, v, &child)?,
                    None => {
                        let known: Vec<&str> = b.keys().map(String::as_str).collect();
                        return Err(TrainError::Config(format!(
                            "unknown config key `{child}` (known here: {})",
                            known.join(", ")
                        )));
                    }
                }
            }
            Ok(())
        }
        (slot, v) => {
            *slot = v.clone();
            Ok(())
        }
    }
}

/// Sets `a.b.c` to `value`, failing on unknown keys.
pub(super) fn set_path(root: &mut Value, dotted: &str, value: Value) -> Result<(), TrainError> {
    let mut over = value;
    for key in dotted.rsplit('.') {
        let mut map = serde_json::Map::new();
        map.insert(key.to_string(), over);
        over = Value::Object(map);
    }
    merge(root, &over, "")
}

/// Parses `key=value` where value is JSON, or a bare string when it is not valid JSON.
///
/// # Errors
/// [`TrainError::Config`] when there is no `=`.
pub fn parse_set(text: &str) -> Result<(String, Value), TrainError> {
    let (key, raw) = text.split_once('=').ok_or_else(|| {
        TrainError::Config(format!(
            "--set {text}: expected key=value, e.g. optim.lr=2e-4"
        ))
    })?;
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    Ok((key.trim().to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use data::{DatasetSpec, Split};

    #[test]
    fn overrides_merge_and_unknown_keys_are_named() {
        let file = serde_json::json!({"optim": {"lr": 2e-4}, "epochs": 3});
        let sets = vec![
            parse_set("batch_size=16").unwrap(),
            parse_set("optim.grad_clip=0.5").unwrap(),
        ];
        let c = TrainConfig::resolve(Preset::Seed, Some(&file), &sets).unwrap();
        assert_eq!(
            (c.optim.lr, c.epochs, c.batch_size, c.optim.grad_clip),
            (2e-4, Some(3), 16, Some(0.5))
        );

        let err = TrainConfig::resolve(Preset::Seed, None, &[parse_set("optim.lrr=1").unwrap()])
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown config key `optim.lrr`"),
            "{err}"
        );
        let err = TrainConfig::resolve(Preset::Seed, None, &[parse_set("optim.lr=-1").unwrap()])
            .unwrap_err();
        assert!(err.to_string().contains("optim.lr = -1"), "{err}");
        let err = TrainConfig::resolve(
            Preset::Seed,
            None,
            &[parse_set("batch_size=\"x\"").unwrap()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert!(parse_set("novalue").is_err());
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let err = TrainConfig::resolve(Preset::Seed, None, &[parse_set("optim.lr=abc").unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`optim.lr`") && err.contains("invalid type: string \"abc\""),
            "{err}"
        );
    }

    #[test]
    fn resume_accepts_only_the_listed_changes() {
        let saved = Preset::Seed.config();
        let given = saved
            .with_overrides(
                None,
                &[
                    parse_set("optim.lr=5e-4").unwrap(),
                    parse_set("max_steps=10").unwrap(),
                    parse_set("optim.decay=\"cosine\"").unwrap(),
                ],
            )
            .unwrap();
        let keys: Vec<String> = saved
            .check_resume(&given)
            .unwrap()
            .into_iter()
            .map(|c| c.key)
            .collect();
        assert_eq!(keys, ["max_steps", "optim.decay", "optim.lr"]);
        for (set, key) in [
            ("schedule.n_steps=1000", "schedule.n_steps"),
            ("batch_size=64", "batch_size"),
            ("seed=1", "seed"),
            ("optim.grad_clip=0.5", "optim.grad_clip"),
            (
                r#"dataset={"kind":"fashion-mnist","split":"test"}"#,
                "dataset",
            ),
        ] {
            let given = saved
                .with_overrides(None, &[parse_set(set).unwrap()])
                .unwrap();
            let err = saved.check_resume(&given).unwrap_err();
            match &err {
                TrainError::ResumeChange { key: k, .. } => assert_eq!(k, key, "{set}"),
                other => panic!("{set}: {other}"),
            }
        }
        let ddpm = Preset::DdpmCifar10.config();
        let err = saved.check_resume(&ddpm).unwrap_err().to_string();
        assert!(err.contains("--resume cannot change `"), "{err}");
    }

    #[test]
    fn switching_a_variant_replaces_the_object() {
        let sets = vec![parse_set(r#"dataset={"kind":"fashion-mnist","split":"test"}"#).unwrap()];
        let c = TrainConfig::resolve(Preset::Seed, None, &sets).unwrap();
        assert_eq!(c.dataset, DatasetSpec::FashionMnist { split: Split::Test });
    }
}
