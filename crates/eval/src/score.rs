//! FID and KID of a set of samples against a reference in one call ([`score`]), the way
//! `ddpm eval fid` scores them: the reference is statistics (FID only), features or images
//! ([`Source`]); with the samples' classes and a labelled reference, also one FID per class.

use crate::{
    frechet_distance, kid, Features, FidError, Images, Kid, KidConfig, Source, Statistics,
};

/// The class of each image of a set, and the names of the classes (label `k` is `names[k]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classes {
    /// One label per image, in order.
    pub labels: Vec<i64>,
    /// The class names.
    pub names: Vec<String>,
}

impl Classes {
    /// The rows of `features` whose label is `class`.
    ///
    /// # Errors
    /// None in practice (the rows come from `features`); [`FidError::Invalid`] for an empty
    /// dimension.
    pub fn features_of(&self, features: &Features, class: i64) -> Result<Features, FidError> {
        let rows: Vec<usize> = (0..features.len().min(self.labels.len()))
            .filter(|&i| self.labels[i] == class)
            .collect();
        let data: Vec<f32> = rows
            .iter()
            .flat_map(|&i| features.row(i).iter().copied())
            .collect();
        Features::new(data, rows.len(), features.dim())
    }
}

/// The FID of one class: the samples of that class against the reference images of that class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassFid {
    /// The label.
    pub class: i64,
    /// The reference's name of the class.
    pub name: String,
    /// The samples' (the model's) name of the class.
    pub model_name: String,
    /// The FID.
    pub fid: f64,
    /// Samples of the class.
    pub n_samples: usize,
    /// Reference images of the class.
    pub n_reference: usize,
}

/// What [`score`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct FidScores {
    /// The FID of all samples against the whole reference.
    pub fid: f64,
    /// KID, when the reference has features (images or saved features).
    pub kid: Option<Kid>,
    /// The reference's size, when it has features.
    pub n_reference: Option<usize>,
    /// One FID per class ([`score`]'s `classes`), in label order; empty without classes.
    pub per_class: Vec<ClassFid>,
}

/// The FID (and, when the reference has features, KID with `kid_config`) of the features
/// `samples` against `reference`, whose features, when it is images, come from `features_of`
/// (an [`crate::InceptionExtractor::extract`] with a progress bar, say). With `classes`, the
/// samples' classes and the reference's (a labelled dataset), also the FID of each class.
///
/// # Errors
/// Those of `features_of`; [`FidError::Invalid`] when the dimensions differ, the two sets of
/// classes do not match, or a class has fewer than 2 samples or reference images; those of the
/// statistics, FID and KID.
pub fn score<E: From<FidError>>(
    samples: &Features,
    reference: Source,
    features_of: impl FnOnce(&Images) -> Result<Features, E>,
    kid_config: &KidConfig,
    classes: Option<(&Classes, &Classes)>,
) -> Result<FidScores, E> {
    let samples_stats = Statistics::from_features(samples)?;
    // The reference's features (all of them), and a cached reference's KID subset.
    let (ref_stats, ref_features, kid_subset) = match reference {
        Source::Statistics(stats) => (stats, None, None),
        Source::Reference(reference) => (reference.statistics, None, Some(reference.kid_features)),
        Source::Features(features) => (Statistics::from_features(&features)?, Some(features), None),
        Source::Images(images) => {
            let features = features_of(&images)?;
            (Statistics::from_features(&features)?, Some(features), None)
        }
    };
    let fid = frechet_distance(&samples_stats, &ref_stats)?;
    let kid = match kid_subset.as_ref().or(ref_features.as_ref()) {
        Some(ref_features) => Some(kid(samples, ref_features, kid_config)?),
        None => None,
    };
    let per_class = match (classes, &ref_features) {
        (Some((ours, theirs)), Some(ref_features)) => {
            per_class_fid(samples, ours, ref_features, theirs)?
        }
        _ => Vec::new(),
    };
    Ok(FidScores {
        fid,
        kid,
        n_reference: ref_features.as_ref().map(Features::len),
        per_class,
    })
}

/// The FID of each class of `ours` (the samples' classes) against the reference rows of the
/// same class in `theirs`.
fn per_class_fid(
    samples: &Features,
    ours: &Classes,
    reference: &Features,
    theirs: &Classes,
) -> Result<Vec<ClassFid>, FidError> {
    let k = ours.names.len();
    if theirs.names.len() != k {
        return Err(FidError::Invalid(format!(
            "the reference has {} classes but the model {k}: per-class FID needs the dataset \
             the model was trained on",
            theirs.names.len()
        )));
    }
    let mut per_class = Vec::with_capacity(k);
    for class in 0..k as i64 {
        let ours_k = ours.features_of(samples, class)?;
        let theirs_k = theirs.features_of(reference, class)?;
        let name = theirs.names[class as usize].clone();
        if ours_k.len() < 2 || theirs_k.len() < 2 {
            return Err(FidError::Invalid(format!(
                "class {class} ({name}) has {} samples and {} reference images: FID needs at \
                 least 2 of each (raise --n)",
                ours_k.len(),
                theirs_k.len()
            )));
        }
        let fid = frechet_distance(
            &Statistics::from_features(&ours_k)?,
            &Statistics::from_features(&theirs_k)?,
        )?;
        per_class.push(ClassFid {
            class,
            name,
            model_name: ours.names[class as usize].clone(),
            fid,
            n_samples: ours_k.len(),
            n_reference: theirs_k.len(),
        });
    }
    Ok(per_class)
}
