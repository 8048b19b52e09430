//! An image folder read on demand (`FolderConfig::stream`): the index is the sorted paths and
//! their labels, as [`load_folder`](crate::folder::load_folder) finds them; each file is read
//! and decoded when the loader needs it, with the folder's own fit (TF-style bilinear), so a
//! streamed folder gives the images an in-memory one does.

use std::path::{Path, PathBuf};

use super::{Record, Records};

/// The image files of a folder, read on demand.
#[derive(Debug)]
pub struct FolderRecords {
    root: PathBuf,
    paths: Vec<PathBuf>,
}

impl FolderRecords {
    /// The files `paths` under `root` (for messages).
    pub fn new(root: &Path, paths: Vec<PathBuf>) -> Self {
        Self {
            root: root.to_path_buf(),
            paths,
        }
    }
}

impl Records for FolderRecords {
    fn path(&self) -> &Path {
        &self.root
    }

    fn len(&self) -> usize {
        self.paths.len()
    }

    fn name(&self, idx: usize) -> String {
        self.paths[idx].display().to_string()
    }

    fn read(&self, idx: usize) -> std::result::Result<Record, String> {
        std::fs::read(&self.paths[idx])
            .map(Record::Encoded)
            .map_err(|err| format!("cannot read the file: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use crate::folder::{load_folder, Fit, FolderConfig, OnError};
    use crate::{DataError, Loader, LoaderConfig, Source, StreamDataset, TransformConfig};

    /// Writes a `w` x `h` RGB PNG whose pixels depend on `seed`.
    fn write_png(path: &std::path::Path, w: u32, h: u32, seed: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                seed.wrapping_mul(31),
                (x * 7 + y) as u8,
                (y * 5) as u8 ^ seed,
            ])
        })
        .save(path)
        .unwrap();
    }

    #[test]
    fn a_streamed_folder_gives_the_in_memory_folders_images_and_batches() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..6u8 {
            let class = if i % 2 == 0 { "cat" } else { "dog" };
            write_png(
                &dir.path().join(format!("{class}/{i}.png")),
                12 + u32::from(i),
                9,
                i,
            );
        }
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let config = FolderConfig {
            fit: Fit::CenterCrop,
            ..FolderConfig::new([8, 8])
        };
        let (memory, memory_report) = load_folder(dir.path(), &config).unwrap();
        let (stream, report) = StreamDataset::open_folder(dir.path(), &config).unwrap();
        assert_eq!(report, memory_report);
        assert_eq!(stream.class_names(), memory.class_names());
        for i in 0..6 {
            assert_eq!(stream.image(i).unwrap(), memory.image(i), "image {i}");
            assert_eq!(stream.label(i), memory.label(i));
        }
        let loader_config = LoaderConfig {
            batch_size: 2,
            ..LoaderConfig::seed_cifar10(9)
        };
        let transform = TransformConfig::ho2020();
        let from_memory = Loader::new(memory, &transform, loader_config.clone()).unwrap();
        let from_stream = Loader::new(Source::from(stream), &transform, loader_config).unwrap();
        let a: Vec<_> = from_memory.epoch(1).collect();
        let b: Vec<_> = from_stream.epoch(1).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn an_unreadable_file_of_a_streamed_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a/ok.png"), 8, 8, 1);
        let broken = dir.path().join("a/broken.png");
        std::fs::write(&broken, b"\x89PNG\r\n\x1a\n but not really").unwrap();
        let config = FolderConfig {
            on_error: OnError::Fail,
            ..FolderConfig::new([8, 8])
        };
        let (stream, _) = StreamDataset::open_folder(dir.path(), &config).unwrap();
        let err = stream.image(0).unwrap_err();
        assert!(matches!(err, DataError::BadRecord { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("record {}: unreadable image", broken.display())),
            "{text}"
        );
    }
}
