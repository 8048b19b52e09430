//! The event-file writer against TensorBoard's own writer (the golden bytes of
//! `scripts/golden/tensorboard_events.py`), and its resume and crash rules.

use std::path::Path;

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tensorboard");

fn fixture(name: &str) -> Vec<u8> {
    fs::read(Path::new(FIXTURES).join(name)).unwrap()
}

fn summary_event(wall_time: f64, step: i64, value: Vec<Value>) -> Event {
    Event {
        wall_time,
        step,
        what: Some(What::Summary(Summary { value })),
    }
}

#[test]
fn the_framing_matches_tensorboards_record_writer() {
    let payloads: [&[u8]; 3] = [b"", b"abc", &(0..=255).collect::<Vec<u8>>()];
    let ours: Vec<u8> = payloads.iter().flat_map(|p| record::frame(p)).collect();
    assert_eq!(ours, fixture("records.bin"));
    let golden = fixture("records.bin");
    let (records, used) = record::unframe(&golden);
    assert_eq!(records, payloads);
    assert_eq!(used, golden.len());
}

#[test]
fn the_encoding_matches_tensorboards_writer() {
    let config = "```json\n{\n  \"batch_size\": 4\n}\n```";
    let events = [
        Event {
            wall_time: 1_700_000_000.25,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        },
        summary_event(
            1_700_000_001.5,
            10,
            vec![
                scalar_value("train/loss", 0.125),
                scalar_value("train/lr", 2e-4),
            ],
        ),
        summary_event(
            1_700_000_002.75,
            10,
            vec![png_value("samples/grid", fixture("tiny.png")).expect("a PNG")],
        ),
        summary_event(1_700_000_003.0, 10, vec![text_value("config", config)]),
    ];
    let ours: Vec<u8> = events.iter().flat_map(event_record).collect();
    assert_eq!(ours, fixture("events.bin"));
    // And back: the golden file decodes to the same events.
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join(format!("{PREFIX}1.host.1.0")),
        fixture("events.bin"),
    )
    .unwrap();
    assert_eq!(read_events(dir.path()).unwrap(), events);
}

/// (tag, step) of every summary value in `dir`, in file order.
fn tag_steps(dir: &Path) -> Vec<(String, i64)> {
    read_events(dir)
        .unwrap()
        .iter()
        .flat_map(|e| summary_values(e).iter().map(|v| (v.tag.clone(), e.step)))
        .collect()
}

#[test]
fn a_resume_cuts_the_steps_it_trains_again_and_writes_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = EventWriter::open(dir.path(), 0).unwrap();
    first.text("config", 0, "a").unwrap();
    for step in 1..=5 {
        first.scalars(step, &[("loss", step as f64)]).unwrap();
    }
    first.flush().unwrap();
    // A crash (no drop), then a resume from the checkpoint of step 3.
    std::mem::forget(first);
    let mut second = EventWriter::open(dir.path(), 3).unwrap();
    // Already written at step 3: not again.
    second.scalars(3, &[("loss", 30.0)]).unwrap();
    second.text("config", 3, "b").unwrap();
    second.scalars(4, &[("loss", 40.0)]).unwrap();
    second.flush().unwrap();
    assert_eq!(event_files(dir.path()).unwrap().len(), 2);
    let want: Vec<(String, i64)> = [("config", 0), ("loss", 1), ("loss", 2), ("loss", 3)]
        .into_iter()
        .chain([("config", 3), ("loss", 4)])
        .map(|(t, s)| (t.to_string(), s))
        .collect();
    assert_eq!(tag_steps(dir.path()), want);
    let losses: Vec<f32> = read_events(dir.path())
        .unwrap()
        .iter()
        .flat_map(|e| summary_values(e).to_vec())
        .filter_map(|v| match v.kind {
            Some(Kind::SimpleValue(x)) => Some(x),
            _ => None,
        })
        .collect();
    assert_eq!(losses, [1.0, 2.0, 3.0, 40.0]);
    // The new file's name sorts after the old one's, as TensorBoard reads them in name order.
    let files = event_files(dir.path()).unwrap();
    assert_eq!(files[1], *second.path());
}

#[test]
fn a_torn_last_record_is_skipped_and_cut_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = EventWriter::open(dir.path(), 0).unwrap();
    writer.scalars(1, &[("loss", 1.0)]).unwrap();
    writer.scalars(2, &[("loss", 2.0)]).unwrap();
    writer.flush().unwrap();
    let path = writer.path().to_path_buf();
    drop(writer);
    let mut bytes = fs::read(&path).unwrap();
    let whole = bytes.len();
    bytes.truncate(whole - 5);
    fs::write(&path, &bytes).unwrap();
    assert_eq!(tag_steps(dir.path()), [("loss".to_string(), 1)]);
    let _resumed = EventWriter::open(dir.path(), 1).unwrap();
    // The torn record is gone from the old file, which now ends at a whole record.
    let cut = fs::read(&path).unwrap();
    assert_eq!(record::unframe(&cut).1, cut.len());
    assert_eq!(record::unframe(&cut).0.len(), 2);
}

#[test]
fn images_take_their_size_and_channels_from_the_png() {
    let value = png_value("g", fixture("tiny.png")).unwrap();
    let Some(Kind::Image(image)) = value.kind else {
        panic!("an image")
    };
    assert_eq!((image.width, image.height, image.colorspace), (3, 2, 3));
    assert!(png_value("g", b"GIF89a not a png at all, no".to_vec()).is_none());
}
