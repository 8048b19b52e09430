//! FID, KID and the per-class FID of a set of samples in one call, as `ddpm eval fid` runs
//! them: [`FidPlan::run`] reads the reference first (refusing one that does not fit before any
//! sampling), draws the samples of a checkpoint ([`CheckpointSamples`]: class-balanced for a
//! class-conditional model, shared among the ranks of a launch when [`Ranks`] holds a rank
//! group, feature `dist`) or reads a folder or `.npz`, extracts the Inception features and
//! scores them ([`crate::score`]). Progress comes out as [`FidEvent`]s; the result is a
//! [`FidReport`], which writes the JSON that `ddpm eval fid --out` saves.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sample::{BatchPlan, ClassConditioning, Pipeline, PipelineSpec, SampleRequest, SamplerConfig};
use serde_json::json;

use crate::{
    first_images, score, Classes, Features, FidError, FidScores, Images, InceptionExtractor,
    KidConfig, Source,
};

/// The ranks a checkpoint's samples are drawn on: this process alone ([`Ranks::single`]), or,
/// with feature `dist`, every rank of a launch (`Ranks::of`: rank r draws batches
/// r, r + W, …, rank 0 gathers them, so the images are those of one process).
#[derive(Clone, Copy, Default)]
pub struct Ranks<'a> {
    #[cfg(feature = "dist")]
    dist: Option<&'a torch_ext::dist::Distributed>,
    group: std::marker::PhantomData<&'a ()>,
}

impl std::fmt::Debug for Ranks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ranks({} of {})", self.rank(), self.world_size())
    }
}

impl<'a> Ranks<'a> {
    /// This process alone.
    pub fn single() -> Self {
        Self::default()
    }

    /// The ranks of `dist`, or this process alone for `None`.
    #[cfg(feature = "dist")]
    pub fn of(dist: Option<&'a torch_ext::dist::Distributed>) -> Self {
        Self {
            dist,
            group: std::marker::PhantomData,
        }
    }

    /// This process's rank (0 alone).
    pub fn rank(&self) -> usize {
        #[cfg(feature = "dist")]
        if let Some(dist) = self.dist {
            return dist.rank();
        }
        0
    }

    /// How many ranks draw samples (1 alone).
    pub fn world_size(&self) -> usize {
        #[cfg(feature = "dist")]
        if let Some(dist) = self.dist {
            return dist.world_size();
        }
        1
    }

    /// Whether this process gets the samples and scores them: alone, or rank 0.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Sums `values` element-wise across the ranks, in place (nothing alone).
    ///
    /// # Errors
    /// A rank that fails or does not answer.
    pub(crate) fn sum(&self, values: &mut [f64]) -> Result<(), FidError> {
        #[cfg(feature = "dist")]
        if let Some(dist) = self.dist {
            let mut xs = [tch::Tensor::from_slice(values)];
            dist.sum(&mut xs, "sum the per-image terms")
                .map_err(sample::SampleError::from)?;
            values.copy_from_slice(&Vec::<f64>::try_from(&xs[0]).expect("f64 values"));
        }
        let _ = values;
        Ok(())
    }

    /// `request` drawn on these ranks and collected on rank 0 (`None` on the others).
    fn sample_images(
        &self,
        pipe: &Pipeline,
        request: &SampleRequest,
        on_batch: impl FnMut(usize, usize),
    ) -> Result<Option<sample::Samples>, FidError> {
        #[cfg(feature = "dist")]
        if self.dist.is_some() {
            return Ok(sample::shard::sample_images(
                pipe,
                request,
                self.dist,
                |_, _| {},
                on_batch,
            )?);
        }
        Ok(Some(pipe.sample_images(request, |_, _| {}, on_batch)?))
    }
}

/// How to draw the samples of a checkpoint (a run, one checkpoint or a diffusers folder,
/// resolved to `spec`): the same batches, seeds and images as `ddpm sample --batch
/// batch_size --seed seed` with this sampler. A class-conditional model is sampled
/// class-balanced (image `i` of class `i mod K`, guided with `guidance`).
#[derive(Debug, Clone)]
pub struct CheckpointSamples {
    /// The resolved checkpoint ([`PipelineSpec::resolve`]).
    pub spec: PipelineSpec,
    /// The reverse process.
    pub sampler: SamplerConfig,
    /// Overrides the source's clamping of x̂_0 (`None`: its default).
    pub clip_x0: Option<bool>,
    /// The classifier-free guidance scale of a class-conditional model.
    pub guidance: f64,
    /// How many samples (at least 2).
    pub n: usize,
    /// Samples per sampler batch (at least 1).
    pub batch_size: usize,
    /// Seeds batch b with `sample::batch_seed(seed, b)`.
    pub seed: u64,
    /// Insist on a class-conditional model and `n` a multiple of its K classes, and also score
    /// each class against the reference images of that class (when the reference is labelled).
    pub class_balanced: bool,
    /// Also write the samples here (uint8 NHWC `arr_0`).
    pub save_samples: Option<PathBuf>,
}

impl CheckpointSamples {
    /// The classes of the samples, image `i` of class `i mod K`, for a class-conditional model
    /// (`None` otherwise), after checking `n`, the batch size and the class balance.
    ///
    /// # Errors
    /// [`FidError::TooFewImages`] for `n < 2`, [`FidError::Invalid`] for a batch size of 0, or
    /// for `class_balanced` with an unconditional model or `n` not a multiple of K.
    pub fn classes(&self) -> Result<Option<Classes>, FidError> {
        let n = self.n;
        if n < 2 {
            return Err(FidError::TooFewImages {
                what: "--n".into(),
                n,
            });
        }
        if self.batch_size == 0 {
            return Err(FidError::Invalid(
                "--sample-batch-size must be at least 1".into(),
            ));
        }
        let path = self.spec.dir.display();
        Ok(match self.spec.num_classes() {
            None if self.class_balanced => {
                return Err(FidError::Invalid(format!(
                    "--class-balanced: the model of --checkpoint {path} is not class-conditional"
                )))
            }
            None => None,
            Some(k) => {
                if self.class_balanced && !n.is_multiple_of(k as usize) {
                    return Err(FidError::Invalid(format!(
                        "--class-balanced: --n {n} does not split into the model's {k} classes \
                         equally: pass a multiple of {k}"
                    )));
                }
                Some(Classes {
                    labels: ClassConditioning::balanced(k, n, self.guidance).labels,
                    names: (0..k).map(|c| self.spec.class_name(c)).collect(),
                })
            }
        })
    }

    /// Draws the samples on `ranks` with the network on `device`: rank 0 (or this process
    /// alone) gets them, the others `None`. Every rank calls it with the same settings.
    ///
    /// # Errors
    /// Those of [`CheckpointSamples::classes`]; the checkpoint's weights that do not load;
    /// sampling errors, or a rank that fails; `save_samples` that cannot be written.
    pub fn draw(
        &self,
        device: tch::Device,
        ranks: Ranks<'_>,
        on_event: &mut dyn FnMut(FidEvent<'_>),
    ) -> Result<Option<Images>, FidError> {
        let classes = self.classes()?;
        let path = &self.spec.dir;
        let pipe = Pipeline::from_spec(self.spec.clone(), device)
            .map_err(|e| FidError::from(e).context(format!("--checkpoint {}", path.display())))?;
        let mut options = pipe.options(&self.sampler, self.clip_x0, 0);
        if let Some(classes) = &classes {
            options.class_cond = Some(ClassConditioning {
                labels: classes.labels.clone(),
                guidance: self.guidance,
            });
        }
        let request = SampleRequest {
            sampler: self.sampler.clone(),
            options,
            plan: BatchPlan {
                n_images: self.n,
                batch_size: self.batch_size.min(self.n),
                image_shape: pipe.image_shape(),
                seed: self.seed,
                n_chains: 0,
            },
        };
        let main = ranks.is_main();
        if main {
            on_event(FidEvent::Sampling { n: self.n });
        }
        let started = Instant::now();
        let on_batch = |_, done: usize| on_event(FidEvent::Sampled { done });
        let Some(samples) = ranks.sample_images(&pipe, &request, on_batch)? else {
            return Ok(None);
        };
        let images = Images::from_samples(samples)?;
        on_event(FidEvent::SamplingDone {
            n: self.n,
            checkpoint: path,
            seconds: started.elapsed().as_secs_f64(),
        });
        if let Some(out) = &self.save_samples {
            images.write_npz(out)?;
            on_event(FidEvent::SamplesSaved { path: out });
        }
        Ok(Some(images))
    }

    /// What the JSON result says of these samples, drawn on `world_size` ranks.
    fn details(&self, world_size: usize, classes: Option<&Classes>) -> serde_json::Value {
        let mut details = json!({
            "checkpoint": self.spec.dir.display().to_string(),
            "step": self.spec.step,
            "sampler": serde_json::to_value(&self.sampler).expect("serialisable"),
            "seed": self.seed,
            "ranks": world_size,
        });
        if let Some(classes) = classes {
            details["classes"] = json!(classes.names.len());
            details["class_balanced"] = json!(true);
            details["guidance"] = json!(self.guidance);
        }
        details
    }
}

/// The samples to score.
#[derive(Debug)]
pub enum SampleSet {
    /// An `.npz` of uint8 NHWC images (`arr_0` or the first array) or a folder of images.
    File(PathBuf),
    /// Images already in memory, such as a dataset split (the FID floor of real data), with
    /// what to call them.
    Images {
        /// The images.
        images: Images,
        /// Their name in messages and in the result ("cifar10 test (data/cifar10)").
        what: String,
    },
    /// Fresh samples of a checkpoint.
    Checkpoint(Box<CheckpointSamples>),
}

/// The reference to score against.
#[derive(Debug)]
pub enum ReferenceSet {
    /// An `.npz` of statistics (FID only), of features (FID and KID) or of images, or a folder
    /// of images.
    File(PathBuf),
    /// A labelled dataset: FID and KID, and with class-balanced checkpoint samples the FID of
    /// each class.
    Dataset {
        /// The images.
        images: Images,
        /// Their name in messages and in the result.
        what: String,
        /// One label per image and the class names (empty names: no labels).
        classes: Classes,
    },
}

/// FID and KID of `samples` against `reference` ([`FidPlan::run`]).
#[derive(Debug)]
pub struct FidPlan {
    /// The samples.
    pub samples: SampleSet,
    /// The reference.
    pub reference: ReferenceSet,
    /// Use the first `n` images (or feature rows) of each side; `None`: all.
    pub n: Option<usize>,
    /// KID's subsets (also seeded by it).
    pub kid: KidConfig,
    /// Whether the caller verified the Inception file's sha256 (the report records it).
    pub inception_verified: bool,
}

/// What [`FidPlan::run`] and [`CheckpointSamples::draw`] report while they work.
#[derive(Debug, Clone, Copy)]
pub enum FidEvent<'a> {
    /// Sampling of `n` images starts.
    Sampling {
        /// Images to draw.
        n: usize,
    },
    /// `done` images are collected.
    Sampled {
        /// Images so far.
        done: usize,
    },
    /// Sampling is over.
    SamplingDone {
        /// Images drawn.
        n: usize,
        /// The checkpoint's directory.
        checkpoint: &'a Path,
        /// Seconds it took.
        seconds: f64,
    },
    /// The samples are written to `path`.
    SamplesSaved {
        /// The `.npz`.
        path: &'a Path,
    },
    /// Inception features of `n` images of `what` are being extracted.
    Extracting {
        /// The set.
        what: &'a str,
        /// Its size.
        n: usize,
    },
    /// `done` images of the current set have their features.
    Extracted {
        /// Images so far.
        done: usize,
    },
    /// The features of `n` images of `what` took `seconds`.
    ExtractingDone {
        /// The set.
        what: &'a str,
        /// Its size.
        n: usize,
        /// Seconds it took.
        seconds: f64,
    },
    /// Class-balanced samples were scored against a reference without labels: no per-class FID.
    NoPerClass {
        /// The reference.
        reference: &'a str,
    },
}

/// One set of the result: what it is, how many images, and details (the checkpoint, the
/// sampler, the seed, … of drawn samples; the path of a file).
#[derive(Debug, Clone, PartialEq)]
pub struct SetReport {
    /// Its name in messages.
    pub what: String,
    /// How many images were scored.
    pub n: usize,
    /// The JSON details.
    pub details: serde_json::Value,
}

/// The feature network of the result.
#[derive(Debug, Clone, PartialEq)]
pub struct InceptionReport {
    /// Its TorchScript file.
    pub path: PathBuf,
    /// Whether the file's sha256 was verified ([`FidPlan::inception_verified`]).
    pub sha256_verified: bool,
    /// Its input height and width.
    pub input_size: i64,
    /// The resize ([`crate::Resize::name`]).
    pub resize: &'static str,
    /// The feature dimension.
    pub dim: usize,
}

/// What [`FidPlan::run`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct FidReport {
    /// FID, KID and the per-class FIDs.
    pub scores: FidScores,
    /// Whether the samples are a class-conditional checkpoint's, sampled class-balanced.
    pub class_balanced: bool,
    /// The samples.
    pub samples: SetReport,
    /// What the reference is.
    pub reference: String,
    /// The feature network.
    pub inception: InceptionReport,
    /// Seconds the call took.
    pub seconds: f64,
}

impl FidReport {
    /// The result as `ddpm eval fid --out` writes it: `fid`, `kid`, `samples` (`source`, `n`,
    /// `details`), `reference` (`source`, `n`), `inception`, `seconds`, and `per_class` when
    /// there are per-class FIDs.
    pub fn to_json(&self) -> serde_json::Value {
        let i = &self.inception;
        let mut result = json!({
            "fid": self.scores.fid,
            "kid": self.scores.kid,
            "samples": {
                "source": self.samples.what,
                "n": self.samples.n,
                "details": self.samples.details,
            },
            "reference": {"source": self.reference, "n": self.scores.n_reference},
            "inception": {
                "path": i.path.display().to_string(),
                "sha256_verified": i.sha256_verified,
                "input_size": i.input_size,
                "resize": i.resize,
                "dim": i.dim,
            },
            "seconds": self.seconds,
        });
        if !self.scores.per_class.is_empty() {
            let per_class: Vec<serde_json::Value> = self
                .scores
                .per_class
                .iter()
                .map(|c| {
                    json!({
                        "class": c.class,
                        "name": c.name,
                        "model_name": c.model_name,
                        "fid": c.fid,
                        "n_samples": c.n_samples,
                        "n_reference": c.n_reference,
                    })
                })
                .collect();
            result["per_class"] = json!(per_class);
        }
        result
    }
}

/// The features of `images` (called `what`), with events.
fn extract(
    extractor: &InceptionExtractor,
    images: &Images,
    what: &str,
    on_event: &mut dyn FnMut(FidEvent<'_>),
) -> Result<Features, FidError> {
    on_event(FidEvent::Extracting {
        what,
        n: images.len(),
    });
    let started = Instant::now();
    let features = extractor
        .extract(images, |done, _| on_event(FidEvent::Extracted { done }))
        .map_err(|e| e.context(format!("features of {what}")))?;
    on_event(FidEvent::ExtractingDone {
        what,
        n: images.len(),
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(features)
}

/// The reference, read, cut to its first `n` and checked against the network's dimension.
struct ReadReference {
    source: Source,
    what: String,
    classes: Option<Classes>,
}

impl FidPlan {
    /// Scores the samples against the reference with `extractor`'s features: the reference is
    /// read first (statistics or features of another dimension are refused before sampling),
    /// then a checkpoint's samples are drawn on `ranks` (the other ranks call
    /// [`CheckpointSamples::draw`] with the same settings), both sets are cut to their first
    /// [`FidPlan::n`] and scored. With class-balanced samples and a labelled reference, the
    /// class counts are checked before sampling, and each class is scored too.
    ///
    /// # Errors
    /// Unreadable or unfit sets, naming them; those of [`CheckpointSamples::draw`], of the
    /// extractor and of [`crate::score`].
    ///
    /// # Panics
    /// When called on a rank other than 0 of `ranks`.
    pub fn run(
        self,
        extractor: &InceptionExtractor,
        ranks: Ranks<'_>,
        on_event: &mut dyn FnMut(FidEvent<'_>),
    ) -> Result<FidReport, FidError> {
        assert!(ranks.is_main(), "FidPlan::run on rank {}", ranks.rank());
        let started = Instant::now();
        let reference = read_reference(self.reference, self.n, extractor)?;
        let (sampled, class_balanced) = match &self.samples {
            SampleSet::Checkpoint(checkpoint) => (checkpoint.classes()?, checkpoint.class_balanced),
            _ => (None, false),
        };
        let pairs = match (class_balanced, &sampled) {
            (true, Some(ours)) => class_pairs(ours, &reference)?,
            _ => None,
        };
        let (samples, samples_what, details) =
            read_samples(self.samples, extractor, ranks, on_event)?;
        let samples = first_images(samples, self.n, &samples_what)?;
        let samples_features = extract(extractor, &samples, &samples_what, on_event)?;
        let ref_what = reference.what;
        let scores = score(
            &samples_features,
            reference.source,
            |images| extract(extractor, images, &ref_what, on_event),
            &self.kid,
            pairs.as_ref().map(|(ours, theirs)| (ours, theirs)),
        )?;
        if class_balanced && sampled.is_some() && pairs.is_none() {
            on_event(FidEvent::NoPerClass {
                reference: &ref_what,
            });
        }
        Ok(FidReport {
            scores,
            class_balanced: sampled.is_some(),
            samples: SetReport {
                what: samples_what,
                n: samples.len(),
                details,
            },
            reference: ref_what,
            inception: InceptionReport {
                path: extractor.path().to_path_buf(),
                sha256_verified: self.inception_verified,
                input_size: extractor.input_size(),
                resize: extractor.resize().name(),
                dim: samples_features.dim(),
            },
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// The reference: read, its first `n` kept, statistics and features of another dimension than
/// the network's refused.
fn read_reference(
    reference: ReferenceSet,
    n: Option<usize>,
    extractor: &InceptionExtractor,
) -> Result<ReadReference, FidError> {
    let (source, what, classes) = match reference {
        ReferenceSet::File(path) => (Source::read(&path, true)?, path.display().to_string(), None),
        ReferenceSet::Dataset {
            images,
            what,
            classes,
        } => (Source::Images(images), what, Some(classes)),
    };
    let dim_of = |kind: &str, dim: usize, how: &str| -> Result<(), FidError> {
        let d = extractor.feature_dim()?;
        if dim != d {
            return Err(FidError::Invalid(format!(
                "{what}: {kind} of dimension {dim} cannot be compared with the \
                 {d}-dimensional features of {}: make them with this network (`{how}`)",
                extractor.path().display()
            )));
        }
        Ok(())
    };
    let source = match source {
        Source::Statistics(stats) => {
            dim_of("statistics", stats.dim(), "ddpm eval stats")?;
            Source::Statistics(stats)
        }
        Source::Features(features) => {
            dim_of("features", features.dim(), "ddpm eval stats --features")?;
            Source::Features(crate::first_features(features, n, &what)?)
        }
        Source::Reference(reference) => {
            dim_of("statistics", reference.statistics.dim(), "ddpm eval stats")?;
            Source::Reference(reference)
        }
        Source::Images(images) => Source::Images(first_images(images, n, &what)?),
    };
    Ok(ReadReference {
        source,
        what,
        classes,
    })
}

/// The samples, what to call them, and what the result says of them.
fn read_samples(
    samples: SampleSet,
    extractor: &InceptionExtractor,
    ranks: Ranks<'_>,
    on_event: &mut dyn FnMut(FidEvent<'_>),
) -> Result<(Images, String, serde_json::Value), FidError> {
    Ok(match samples {
        SampleSet::File(path) => match Source::read(&path, false)? {
            Source::Images(images) => (
                images,
                path.display().to_string(),
                json!({"path": path.display().to_string()}),
            ),
            Source::Statistics(_) | Source::Features(_) | Source::Reference(_) => {
                unreachable!("refused by Source::read")
            }
        },
        SampleSet::Images { images, what } => {
            let details = json!({ "dataset": what });
            (images, what, details)
        }
        SampleSet::Checkpoint(checkpoint) => {
            let images = checkpoint
                .draw(extractor.device(), ranks, on_event)?
                .expect("rank 0 gathers the samples");
            let classes = checkpoint.classes()?;
            (
                images,
                format!("samples of {}", checkpoint.spec.dir.display()),
                checkpoint.details(ranks.world_size(), classes.as_ref()),
            )
        }
    })
}

/// The classes of the samples and of the reference for the FID of each class: a labelled
/// reference of as many classes as the model, each class with at least 2 of the samples and
/// of the reference images. `Ok(None)` when the reference has no labels.
fn class_pairs(
    ours: &Classes,
    reference: &ReadReference,
) -> Result<Option<(Classes, Classes)>, FidError> {
    let (Some(theirs), Source::Images(images)) = (&reference.classes, &reference.source) else {
        return Ok(None);
    };
    if theirs.names.is_empty() {
        return Ok(None);
    }
    let k = ours.names.len();
    if theirs.names.len() != k {
        return Err(FidError::Invalid(format!(
            "--class-balanced: {} has {} classes but the model {k}: per-class FID needs the \
             dataset the model was trained on",
            reference.what,
            theirs.names.len(),
        )));
    }
    let count = |labels: &[i64], n: usize, class: i64| {
        labels[..n.min(labels.len())]
            .iter()
            .filter(|&&l| l == class)
            .count()
    };
    for class in 0..k as i64 {
        let (n_ours, n_theirs) = (
            count(&ours.labels, ours.labels.len(), class),
            count(&theirs.labels, images.len(), class),
        );
        if n_ours < 2 || n_theirs < 2 {
            return Err(FidError::Invalid(format!(
                "--class-balanced: class {class} ({}) has {n_ours} samples and {n_theirs} \
                 reference images: FID needs at least 2 of each (raise --n)",
                theirs.names[class as usize]
            )));
        }
    }
    Ok(Some((ours.clone(), theirs.clone())))
}
