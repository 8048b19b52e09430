//! FID against the number of network evaluations (NFE), as `ddpm eval sweep` measures it: every
//! (sampler, NFE, seed) of a [`SweepPlan`] is one [`FidPlan`] (a checkpoint's samples, drawn
//! across the ranks of a launch like `ddpm eval fid`, scored against one reference), and the
//! results accumulate in a [`SweepTable`], saved as JSON after every pair so that a sweep that
//! stops resumes where it was: pairs already scored are kept. The full chain (DDPM over all T
//! steps) is scored too, once per seed, as the reference line of the plot.

use std::path::{Path, PathBuf};

use sample::SamplerConfig;
use serde::{Deserialize, Serialize};

use crate::{
    CheckpointSamples, FidError, FidEvent, FidPlan, InceptionExtractor, KidConfig, Ranks,
    ReferenceSet, SampleSet,
};

/// One (sampler, NFE, seed) to score.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPair {
    /// The sampler as the user named it (`dpm-solver++:3`, `ddim:quadratic`), the line it
    /// belongs to in the table and the plot.
    pub label: String,
    /// Network evaluations per image.
    pub nfe: usize,
    /// The seed of the samples (the same seeds for every sampler, so the pairs start from the
    /// same x_T).
    pub seed: u64,
    /// The sampler, with its steps set for `nfe`.
    pub sampler: SamplerConfig,
    /// Whether this is the full chain, the plot's reference line.
    pub full_chain: bool,
    /// The clamping of x̂_0 for this pair alone (`dpm-solver++:no-clip`); `None`: the sweep's.
    pub clip_x0: Option<bool>,
}

/// One scored pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepRow {
    /// [`SweepPair::label`].
    pub sampler: String,
    /// Network evaluations per image.
    pub nfe: usize,
    /// The samples' seed.
    pub seed: u64,
    /// Whether this is the full chain (the reference line).
    pub full_chain: bool,
    /// FID against the reference.
    pub fid: f64,
    /// KID (mean over subsets), when the reference has features.
    pub kid: Option<f64>,
    /// Images drawn per second (sampling only, not the features); comparable within one run.
    pub images_per_s: f64,
    /// The sampler's configuration.
    pub config: SamplerConfig,
}

/// What a sweep's pairs must share to sit in one table: a resumed sweep must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSettings {
    /// The checkpoint's directory.
    pub checkpoint: String,
    /// Its training step, when it records one.
    pub step: Option<u64>,
    /// The reference file.
    pub reference: String,
    /// Samples per pair.
    pub n: usize,
    /// Samples per sampler batch (the images depend on it).
    pub batch_size: usize,
    /// The clamping of x̂_0 requested (`None`: the checkpoint's default).
    pub clip_x0: Option<bool>,
}

/// Every pair scored so far, as the JSON file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepTable {
    /// What every row shares.
    pub settings: SweepSettings,
    /// The rows, in the order they were scored.
    pub rows: Vec<SweepRow>,
}

/// One line of the summary: a (sampler, NFE) over its seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSummary {
    /// The sampler's label.
    pub sampler: String,
    /// Network evaluations per image.
    pub nfe: usize,
    /// Whether this is the full chain.
    pub full_chain: bool,
    /// The mean FID over the seeds.
    pub fid_mean: f64,
    /// The sample standard deviation of the FIDs (0 for one seed).
    pub fid_std: f64,
    /// The seeds scored.
    pub seeds: Vec<u64>,
    /// The mean images/s over the seeds.
    pub images_per_s: f64,
}

impl SweepTable {
    /// The table at `path`, or an empty one with `settings` when there is no file yet.
    ///
    /// # Errors
    /// [`FidError::File`] naming `path` when it cannot be read or parsed, or holds a sweep of
    /// other settings (another checkpoint, reference, `n`, batch size or clamping).
    pub fn open(path: &Path, settings: SweepSettings) -> Result<Self, FidError> {
        let fail = |message: String| FidError::File {
            path: path.to_path_buf(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    settings,
                    rows: Vec::new(),
                })
            }
            Err(e) => return Err(fail(format!("cannot read it: {e}"))),
        };
        let table: SweepTable = serde_json::from_str(&text).map_err(|e| {
            fail(format!(
                "not a sweep table ({e}): move it away to start anew"
            ))
        })?;
        if table.settings != settings {
            return Err(fail(format!(
                "holds a sweep with other settings ({:?}, now {:?}): choose another output \
                 folder, or delete it to start anew",
                table.settings, settings
            )));
        }
        Ok(table)
    }

    /// Writes the table to `path` as pretty JSON, through a temporary file and a rename, so
    /// that a sweep stopped while it writes keeps the previous table.
    ///
    /// # Errors
    /// [`FidError::File`] naming the file.
    pub fn save(&self, path: &Path) -> Result<(), FidError> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("serialisable") + "\n";
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| FidError::File {
                path: path.to_path_buf(),
                message: format!("cannot write it: {e}"),
            })
    }

    /// Whether `pair` is scored already.
    pub fn has(&self, pair: &SweepPair) -> bool {
        self.rows.iter().any(|row| {
            row.sampler == pair.label
                && row.nfe == pair.nfe
                && row.seed == pair.seed
                && row.full_chain == pair.full_chain
        })
    }

    /// One line per (sampler, NFE), in the order they first appear, over their seeds.
    pub fn summary(&self) -> Vec<SweepSummary> {
        let mut lines: Vec<SweepSummary> = Vec::new();
        let mut fids: Vec<Vec<f64>> = Vec::new();
        for row in &self.rows {
            let found = lines.iter().position(|l| {
                l.sampler == row.sampler && l.nfe == row.nfe && l.full_chain == row.full_chain
            });
            let idx = found.unwrap_or_else(|| {
                lines.push(SweepSummary {
                    sampler: row.sampler.clone(),
                    nfe: row.nfe,
                    full_chain: row.full_chain,
                    fid_mean: 0.0,
                    fid_std: 0.0,
                    seeds: Vec::new(),
                    images_per_s: 0.0,
                });
                fids.push(Vec::new());
                lines.len() - 1
            });
            let line = &mut lines[idx];
            let k = line.seeds.len() as f64;
            line.images_per_s = (line.images_per_s * k + row.images_per_s) / (k + 1.0);
            line.seeds.push(row.seed);
            fids[idx].push(row.fid);
        }
        for (line, fids) in lines.iter_mut().zip(&fids) {
            let n = fids.len() as f64;
            line.fid_mean = fids.iter().sum::<f64>() / n;
            line.fid_std = if fids.len() > 1 {
                let ss: f64 = fids.iter().map(|f| (f - line.fid_mean).powi(2)).sum();
                (ss / (n - 1.0)).sqrt()
            } else {
                0.0
            };
        }
        lines
    }

    /// The summary as a markdown table: sampler, NFE, FID (mean ± sample standard deviation
    /// over the seeds), the seeds, images/s, and the FID's ratio to the full chain's.
    pub fn to_markdown(&self) -> String {
        let summary = self.summary();
        let chain = summary.iter().find(|l| l.full_chain).map(|l| l.fid_mean);
        let s = &self.settings;
        let mut out = format!(
            "FID of {} samples of `{}`{} against `{}` (batches of {}).\n\n\
             | sampler | NFE | FID | ± sd | seeds | images/s | FID / full chain |\n\
             | --- | ---: | ---: | ---: | --- | ---: | ---: |\n",
            s.n,
            s.checkpoint,
            s.step
                .map_or(String::new(), |step| format!(" (step {step})")),
            s.reference,
            s.batch_size,
        );
        for line in &summary {
            let seeds: Vec<String> = line.seeds.iter().map(u64::to_string).collect();
            let ratio = chain.map_or("".into(), |c| format!("{:.3}", line.fid_mean / c));
            let name = if line.full_chain {
                format!("{} (full chain)", line.sampler)
            } else {
                line.sampler.clone()
            };
            out += &format!(
                "| {name} | {} | {:.2} | {:.2} | {} | {:.1} | {ratio} |\n",
                line.nfe,
                line.fid_mean,
                line.fid_std,
                seeds.join(", "),
                line.images_per_s,
            );
        }
        out
    }
}

/// What [`SweepPlan::run`] reports while it works.
#[derive(Debug)]
pub enum SweepEvent<'a> {
    /// Pair `index` of `of` to score (pairs scored before are not counted) starts.
    Pair {
        /// Its position, from 0.
        index: usize,
        /// How many pairs this call scores.
        of: usize,
        /// The pair.
        pair: &'a SweepPair,
    },
    /// An event of the pair's [`FidPlan::run`].
    Fid(FidEvent<'a>),
    /// A pair was scored and the table saved.
    Scored {
        /// The new row.
        row: &'a SweepRow,
        /// The table with it.
        table: &'a SweepTable,
    },
}

/// A sweep: the checkpoint's samples for each pair, scored against one reference file.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    /// How to draw the samples; each pair sets its sampler and seed.
    pub samples: CheckpointSamples,
    /// The reference: statistics (FID), features (FID and KID) or images.
    pub reference: PathBuf,
    /// The pairs, in the order to score them.
    pub pairs: Vec<SweepPair>,
    /// The JSON table: read to resume, rewritten after every pair.
    pub table: PathBuf,
    /// KID's subsets, when the reference has features.
    pub kid: KidConfig,
    /// Whether the caller verified the Inception file's sha256.
    pub inception_verified: bool,
}

impl SweepPlan {
    /// What every row of this sweep shares.
    pub fn settings(&self) -> SweepSettings {
        let s = &self.samples;
        SweepSettings {
            checkpoint: s.spec.dir.display().to_string(),
            step: s.spec.step,
            reference: self.reference.display().to_string(),
            n: s.n,
            batch_size: s.batch_size,
            clip_x0: s.clip_x0,
        }
    }

    /// The pairs the table at [`SweepPlan::table`] does not hold yet.
    ///
    /// # Errors
    /// As [`SweepTable::open`].
    pub fn todo(&self) -> Result<Vec<SweepPair>, FidError> {
        let table = SweepTable::open(&self.table, self.settings())?;
        Ok(self
            .pairs
            .iter()
            .filter(|p| !table.has(p))
            .cloned()
            .collect())
    }

    /// The samples of one pair.
    fn samples_of(&self, pair: &SweepPair) -> CheckpointSamples {
        CheckpointSamples {
            sampler: pair.sampler.clone(),
            seed: pair.seed,
            save_samples: None,
            clip_x0: pair.clip_x0.or(self.samples.clip_x0),
            ..self.samples.clone()
        }
    }

    /// Scores every pair the table lacks, in order, saving the table after each; returns the
    /// table. Other ranks of `ranks` call [`SweepPlan::draw_on_rank`] with the same plan.
    ///
    /// # Errors
    /// Those of [`SweepTable::open`], [`FidPlan::run`] and [`SweepTable::save`]; the pairs
    /// scored before the error stay in the table.
    ///
    /// # Panics
    /// When called on a rank other than 0 of `ranks`.
    pub fn run(
        &self,
        extractor: &InceptionExtractor,
        ranks: Ranks<'_>,
        on_event: &mut dyn FnMut(SweepEvent<'_>),
    ) -> Result<SweepTable, FidError> {
        let mut table = SweepTable::open(&self.table, self.settings())?;
        let todo = self.todo()?;
        for (index, pair) in todo.iter().enumerate() {
            on_event(SweepEvent::Pair {
                index,
                of: todo.len(),
                pair,
            });
            let plan = FidPlan {
                samples: SampleSet::Checkpoint(Box::new(self.samples_of(pair))),
                reference: ReferenceSet::File(self.reference.clone()),
                n: Some(self.samples.n),
                kid: self.kid.clone(),
                inception_verified: self.inception_verified,
            };
            let mut sampling_seconds = f64::NAN;
            let report = plan.run(extractor, ranks, &mut |event| {
                if let FidEvent::SamplingDone { seconds, .. } = event {
                    sampling_seconds = seconds;
                }
                on_event(SweepEvent::Fid(event));
            })?;
            table.rows.push(SweepRow {
                sampler: pair.label.clone(),
                nfe: pair.nfe,
                seed: pair.seed,
                full_chain: pair.full_chain,
                fid: report.scores.fid,
                kid: report.scores.kid.as_ref().map(|k| k.mean),
                images_per_s: self.samples.n as f64 / sampling_seconds.max(1e-9),
                config: pair.sampler.clone(),
            });
            table.save(&self.table)?;
            on_event(SweepEvent::Scored {
                row: table.rows.last().expect("just pushed"),
                table: &table,
            });
        }
        Ok(table)
    }

    /// A rank other than 0: draws its share of every pair [`SweepPlan::run`] scores on rank 0,
    /// on `device`.
    ///
    /// # Errors
    /// As [`SweepPlan::todo`] and [`CheckpointSamples::draw`].
    pub fn draw_on_rank(&self, device: tch::Device, ranks: Ranks<'_>) -> Result<(), FidError> {
        for pair in self.todo()? {
            self.samples_of(&pair).draw(device, ranks, &mut |_| {})?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sampler: &str, nfe: usize, seed: u64, fid: f64) -> SweepRow {
        SweepRow {
            sampler: sampler.into(),
            nfe,
            seed,
            full_chain: sampler == "ddpm",
            fid,
            kid: None,
            images_per_s: 10.0 * seed as f64,
            config: SamplerConfig::seed_notebook(),
        }
    }

    fn settings() -> SweepSettings {
        SweepSettings {
            checkpoint: "runs/x".into(),
            step: Some(5),
            reference: "ref.npz".into(),
            n: 100,
            batch_size: 50,
            clip_x0: None,
        }
    }

    #[test]
    fn the_summary_averages_over_seeds_and_the_markdown_shows_the_ratio() {
        let table = SweepTable {
            settings: settings(),
            rows: vec![
                row("ddim", 10, 0, 30.0),
                row("ddpm", 300, 0, 20.0),
                row("ddim", 10, 1, 34.0),
            ],
        };
        let summary = table.summary();
        assert_eq!(summary.len(), 2);
        assert_eq!(
            (summary[0].fid_mean, summary[0].seeds.clone()),
            (32.0, vec![0, 1])
        );
        assert!((summary[0].fid_std - 8f64.sqrt()).abs() < 1e-12);
        assert_eq!(summary[0].images_per_s, 5.0);
        let md = table.to_markdown();
        assert!(
            md.contains("| ddim | 10 | 32.00 | 2.83 | 0, 1 | 5.0 | 1.600 |"),
            "{md}"
        );
        assert!(md.contains("| ddpm (full chain) | 300 | 20.00 |"), "{md}");
    }

    #[test]
    fn a_saved_table_resumes_and_other_settings_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.json");
        let mut table = SweepTable::open(&path, settings()).unwrap();
        assert!(table.rows.is_empty());
        table.rows.push(row("ddim", 10, 0, 30.0));
        table.save(&path).unwrap();
        let again = SweepTable::open(&path, settings()).unwrap();
        assert_eq!(again, table);
        let pair = |nfe| SweepPair {
            label: "ddim".into(),
            nfe,
            seed: 0,
            sampler: SamplerConfig::seed_notebook(),
            full_chain: false,
            clip_x0: None,
        };
        assert!(again.has(&pair(10)) && !again.has(&pair(20)));
        let other = SweepSettings {
            n: 200,
            ..settings()
        };
        let err = SweepTable::open(&path, other).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains("other settings"), "{err}");
    }
}
