//! `ddpm data`: inspect datasets. `show` writes a grid of the first images in file order with
//! their labels (the notebook's first figure); `stats` prints the count, the shape, per-channel
//! mean and standard deviation, and the label histogram; `export` writes the images as the
//! trainer sees them before flips to an `.npz`. LMDB and TFRecord datasets stream: `stats`
//! decodes them a chunk at a time, `show` and `export` only the images they write.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use data::cifar::{Cifar100Label, Split};
use data::folder::{Fit, FolderConfig, FolderReport, OnError};
use data::images::{make_grid, nchw_to_nhwc, save_png, write_npz, GridSpec, NpyArray, NpyData};
use data::{Dataset, DatasetSpec, Stats, StreamConfig};
use plotters::prelude::*;

/// Subcommands of `ddpm data`.
#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Write a PNG grid of the first images, in file order, labelled with their classes.
    Show(ShowArgs),
    /// Print the count, shape, per-channel mean and std (0..255) and the label histogram.
    Stats(StatsArgs),
    /// Write the first images as the trainer sees them before flips: u8 NHWC `arr_0` (and
    /// `labels`) in an .npz.
    Export(ExportArgs),
}

/// Runs `ddpm data …`.
pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Show(args) => show(&args),
        DataCommand::Stats(args) => stats(&args),
        DataCommand::Export(args) => export(&args),
    }
}

/// Dataset kinds on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetKind {
    /// CIFAR-10, binary version (a folder, or one .bin file).
    Cifar10,
    /// CIFAR-100, binary version (a folder, or one .bin file).
    Cifar100,
    /// MNIST, IDX files (.gz or raw).
    Mnist,
    /// Fashion-MNIST, IDX files (.gz or raw).
    FashionMnist,
    /// A folder of images (PNG, JPEG, WebP, GIF, BMP), class sub-folders as labels.
    Folder,
    /// An LMDB of encoded images in LSUN's layout (the folder holding data.mdb), streamed.
    Lmdb,
    /// ProgressiveGAN TFRecords (a folder of *-rNN.tfrecords, or one file), streamed.
    Tfrecord,
}

impl DatasetKind {
    /// The kind as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Folder => "folder",
            DatasetKind::Lmdb => "lmdb",
            DatasetKind::Tfrecord => "tfrecord",
        }
    }

    fn has_split(self) -> bool {
        !matches!(
            self,
            DatasetKind::Folder | DatasetKind::Lmdb | DatasetKind::Tfrecord
        )
    }
}

/// How images of another size fit `--size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FitArg {
    /// Stretch to the size (bilinear, as tf.image.resize).
    Resize,
    /// Keep the aspect ratio: crop the centre, then resize.
    CenterCrop,
}

/// CIFAR-100 labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabelArg {
    /// The 100 classes.
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// Which dataset to read.
#[derive(Debug, clap::Args)]
pub struct DatasetArgs {
    /// The dataset's format.
    #[arg(long, value_enum)]
    pub dataset: DatasetKind,
    /// The dataset's folder (for CIFAR, one binary file works too).
    #[arg(long)]
    pub path: PathBuf,
    /// train, test or train+test (default train); not for a single file or an image folder.
    #[arg(long)]
    pub split: Option<Split>,
    /// CIFAR-100: which label to show and count.
    #[arg(long, value_enum, default_value = "fine")]
    pub label: LabelArg,
    /// Image folder, LMDB, TFRecord: the side of the stored square images, in pixels.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Image folder, LMDB, TFRecord: how images of another size fit (bilinear for a folder,
    /// Pillow's antialiased Lanczos for LMDB and TFRecord, as ProgressiveGAN's create_lsun).
    #[arg(long, value_enum, default_value = "center-crop")]
    pub fit: FitArg,
    /// Image folder, LMDB, TFRecord: read images as grayscale.
    #[arg(long)]
    pub gray: bool,
    /// Image folder: decode on demand, a chunk at a time, instead of all at start (the same
    /// images; `stats` then keeps memory flat).
    #[arg(long)]
    pub stream: bool,
    /// Image folder: no class sub-folders; take every image under the path, unlabelled.
    #[arg(long)]
    pub no_classes: bool,
    /// Image folder, LMDB, TFRecord: skip images that do not decode (listed on stderr) instead
    /// of stopping.
    #[arg(long)]
    pub skip_unreadable: bool,
}

/// Arguments of `ddpm data show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// How many images, from the first.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Images per row.
    #[arg(long, default_value_t = 8)]
    pub nrow: usize,
    /// Pixels per image pixel (default: enough for tiles of at least 64 pixels).
    #[arg(long)]
    pub scale: Option<usize>,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `ddpm data export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// How many images, from the first (default: all; the .npz holds N x H x W x C bytes).
    #[arg(long)]
    pub n: Option<usize>,
    /// The .npz to write.
    #[arg(long)]
    pub npz: PathBuf,
}

/// Arguments of `ddpm data stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl DatasetArgs {
    /// The library's description of the dataset these flags name.
    fn spec(&self) -> Result<DatasetSpec> {
        let single_file = self.path.is_file();
        if let Some(split) = self.split {
            if !self.dataset.has_split() {
                bail!(
                    "--split {split} does not apply to --dataset {}",
                    self.dataset.name()
                );
            }
            if single_file {
                bail!(
                    "--split {split} applies to a dataset folder, but {} is a single file",
                    self.path.display()
                );
            }
        }
        let split = self.split.unwrap_or(Split::Train);
        let fit = match self.fit {
            FitArg::Resize => Fit::Resize,
            FitArg::CenterCrop => Fit::CenterCrop,
        };
        let on_error = if self.skip_unreadable {
            OnError::Skip
        } else {
            OnError::Fail
        };
        let stream = StreamConfig {
            size: [self.size, self.size],
            channels: if self.gray { 1 } else { 3 },
            fit,
            on_error,
        };
        Ok(match self.dataset {
            DatasetKind::Cifar10 => DatasetSpec::Cifar10 { split },
            DatasetKind::Cifar100 => DatasetSpec::Cifar100 {
                split,
                label: match self.label {
                    LabelArg::Fine => Cifar100Label::Fine,
                    LabelArg::Coarse => Cifar100Label::Coarse,
                },
            },
            DatasetKind::Mnist => DatasetSpec::Mnist { split },
            DatasetKind::FashionMnist => DatasetSpec::FashionMnist { split },
            DatasetKind::Folder => DatasetSpec::Folder {
                config: FolderConfig {
                    size: [self.size, self.size],
                    channels: if self.gray { 1 } else { 3 },
                    fit,
                    class_subfolders: !self.no_classes,
                    on_error,
                    stream: self.stream,
                },
            },
            DatasetKind::Lmdb => DatasetSpec::Lmdb { config: stream },
            DatasetKind::Tfrecord => DatasetSpec::Tfrecord { config: stream },
        })
    }

    fn context(&self) -> String {
        format!(
            "cannot load --dataset {} from {}",
            self.dataset_name(),
            self.path.display()
        )
    }

    /// Reads the dataset (of a stream, only the first `n` images) and reports skipped and
    /// ignored files on stderr.
    fn load(&self, n: Option<usize>) -> Result<(Dataset, FolderReport)> {
        let spec = self.spec()?;
        let (dataset, report) = if spec.streams() {
            let stream = spec
                .open_stream(&self.path)
                .with_context(|| self.context())?;
            let n = n.unwrap_or(stream.len());
            let bar = crate::inception::progress_bar(stream.len() as u64, "records read");
            let (dataset, skipped) = stream
                .read_first(n, &mut |done, _| bar.set_position(done as u64))
                .with_context(|| self.context())?;
            bar.finish_and_clear();
            let ignored = Vec::new();
            (dataset, FolderReport { skipped, ignored })
        } else {
            spec.load(&self.path).with_context(|| self.context())?
        };
        for skipped in &report.skipped {
            eprintln!(
                "warning: skipped {}: {}",
                skipped.path.display(),
                skipped.reason
            );
        }
        if let Some(first) = report.ignored.first() {
            eprintln!(
                "note: ignored {} file(s) that are not images in class folders, e.g. {} ({})",
                report.ignored.len(),
                first.path.display(),
                first.reason
            );
        }
        Ok((dataset, report))
    }

    fn dataset_name(&self) -> &'static str {
        self.dataset.name()
    }
}

/// Caption font size and band height, in pixels.
const FONT_PX: u32 = 12;
const CAPTION_PX: usize = 16;

fn show(args: &ShowArgs) -> Result<()> {
    if args.n == 0 || args.nrow == 0 {
        bail!("--n and --nrow must be at least 1");
    }
    let (dataset, _) = args.dataset.load(Some(args.n))?;
    let n = args.n.min(dataset.len());
    let shown = dataset.slice(0..n);
    let [_, c, h, w] = shown.shape();
    let scale = args
        .scale
        .unwrap_or_else(|| 64usize.div_ceil(w.min(h)).max(1));
    if scale == 0 {
        bail!("--scale must be at least 1");
    }
    let labelled = dataset.n_classes() > 0;
    let spec = GridSpec {
        nrow: args.nrow,
        padding: 2,
        pad_value: 255,
        scale,
        caption_height: if labelled { CAPTION_PX } else { 0 },
    };
    let grid = make_grid(shown.images(), [n, c, h, w], &spec)?;
    let mut rgb = grid.to_rgb();
    if labelled {
        let captions: Vec<String> = shown
            .labels()
            .iter()
            .map(|&label| {
                shown
                    .class_name(label)
                    .map_or_else(|| label.to_string(), str::to_string)
            })
            .collect();
        draw_captions(&mut rgb, &grid, &captions)?;
    }
    save_png(&args.out, &rgb, grid.width, grid.height, 3).context("--out")?;
    println!(
        "wrote {} ({} images of {}x{}x{}, {}x{} pixels)",
        args.out.display(),
        n,
        c,
        h,
        w,
        grid.width,
        grid.height
    );
    Ok(())
}

/// Writes each caption in the band under its tile, shortened with "…" to the tile's width.
fn draw_captions(rgb: &mut [u8], grid: &data::images::Grid, captions: &[String]) -> Result<()> {
    crate::plot::ensure_font();
    let size = (u32::try_from(grid.width)?, u32::try_from(grid.height)?);
    let root = BitMapBackend::with_buffer(rgb, size).into_drawing_area();
    let style = TextStyle::from(("sans-serif", FONT_PX).into_font()).color(&BLACK);
    let draw_err = |err| anyhow!("cannot draw labels: {err}");
    for (cell, caption) in grid.cells.iter().zip(captions) {
        let text = crate::plot::fit_text(caption, cell.width as u32, |t| {
            root.estimate_text_size(t, &style).map(|(w, _)| w)
        })
        .map_err(draw_err)?;
        let y = cell.y + cell.height + (CAPTION_PX - FONT_PX as usize) / 2;
        root.draw_text(&text, &style, (cell.x as i32, y as i32))
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

/// The statistics of the dataset the flags name (a stream a chunk at a time), its class names
/// and the skipped files.
fn dataset_stats(args: &DatasetArgs) -> Result<(Stats, Vec<String>, FolderReport)> {
    let spec = args.spec()?;
    if !spec.streams() {
        let (dataset, report) = args.load(None)?;
        return Ok((dataset.stats(), dataset.class_names().to_vec(), report));
    }
    let stream = spec
        .open_stream(&args.path)
        .with_context(|| args.context())?;
    let bar = crate::inception::progress_bar(stream.len() as u64, "records decoded");
    let (stats, skipped) = stream
        .stats(&mut |done, _| bar.set_position(done as u64))
        .with_context(|| args.context())?;
    bar.finish_and_clear();
    for skip in &skipped {
        eprintln!("warning: skipped {}: {}", skip.path.display(), skip.reason);
    }
    let ignored = Vec::new();
    let names = stream.class_names().to_vec();
    Ok((stats, names, FolderReport { skipped, ignored }))
}

fn stats(args: &StatsArgs) -> Result<()> {
    let (stats, class_names, report) = dataset_stats(&args.dataset)?;
    let class_name = |label: usize| class_names.get(label).map(String::as_str);
    let labels: Vec<serde_json::Value> = stats
        .label_counts
        .iter()
        .enumerate()
        .map(|(label, &count)| {
            serde_json::json!({
                "label": label,
                "name": class_name(label),
                "count": count,
            })
        })
        .collect();
    if args.json {
        let json = serde_json::json!({
            "dataset": args.dataset.dataset_name(),
            "path": args.dataset.path,
            "count": stats.count,
            "shape": [stats.channels, stats.height, stats.width],
            "mean": stats.mean,
            "std": stats.std,
            "labels": labels,
            "skipped": report.skipped.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let fmt = |xs: &[f64]| {
        xs.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "dataset  {} ({})",
        args.dataset.dataset_name(),
        args.dataset.path.display()
    );
    println!("count    {}", stats.count);
    println!(
        "shape    {}x{}x{} (C x H x W)",
        stats.channels, stats.height, stats.width
    );
    println!("mean     {} (per channel, on 0..255)", fmt(&stats.mean));
    println!("std      {}", fmt(&stats.std));
    if !report.skipped.is_empty() {
        println!("skipped  {} unreadable image(s)", report.skipped.len());
    }
    if class_names.is_empty() {
        println!("labels   none");
        return Ok(());
    }
    println!("labels");
    let name_width = class_names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0);
    for (label, &count) in stats.label_counts.iter().enumerate() {
        let name = class_name(label).unwrap_or("");
        println!("  {label:>3} {name:<name_width$} {count:>8}");
    }
    Ok(())
}

fn export(args: &ExportArgs) -> Result<()> {
    if args.n == Some(0) {
        bail!("--n must be at least 1");
    }
    let (dataset, report) = args.dataset.load(args.n)?;
    let n = args.n.unwrap_or(dataset.len()).min(dataset.len());
    let dataset = dataset.slice(0..n);
    let [_, c, h, w] = dataset.shape();
    let nhwc = nchw_to_nhwc(dataset.images(), dataset.shape());
    let images = NpyArray::new(vec![n, h, w, c], NpyData::U8(nhwc))?;
    let labels: Vec<i64> = dataset.labels().iter().map(|&l| i64::from(l)).collect();
    let labels = NpyArray::new(vec![n], NpyData::I64(labels))?;
    let mut arrays = vec![("arr_0", &images)];
    if dataset.n_classes() > 0 {
        arrays.push(("labels", &labels));
    }
    write_npz(&args.npz, &arrays).context("--npz")?;
    let skipped = match report.skipped.len() {
        0 => String::new(),
        k => format!(", {k} unreadable skipped"),
    };
    println!(
        "wrote {} ({n} images of {h}x{w}x{c}, uint8 NHWC as `arr_0`{}{skipped})",
        args.npz.display(),
        if dataset.n_classes() > 0 {
            ", labels as `labels`"
        } else {
            ""
        }
    );
    Ok(())
}
