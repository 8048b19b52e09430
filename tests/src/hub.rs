//! A stand-in for the Hugging Face Hub on 127.0.0.1: it speaks the `resolve` endpoint
//! (`GET /{owner}/{name}/resolve/{revision}/{path}`) as the Hub does for the clients that read it
//! (`huggingface_hub`, the `hf-hub` crate): `ETag` and `X-Repo-Commit` on every file, `Range`
//! requests answered with 206 and `Content-Range`, and the Hub's error codes in `X-Error-Code`
//! (`RepositoryNotFound`, `RevisionNotFound`, `EntryNotFound`; 401 for a private repository
//! without its token). Every request is logged, so tests can check what was (not) downloaded.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One repository the server holds.
#[derive(Debug, Clone)]
pub struct HubRepo {
    /// `owner/name`.
    pub id: String,
    /// Its files, by path, at revision `main`.
    pub files: Vec<(String, Vec<u8>)>,
    /// The token a request must carry (`Authorization: Bearer TOKEN`), for a private one.
    pub token: Option<String>,
}

/// The commit every repository of the server is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A running server; it lives as long as the test process.
#[derive(Debug, Clone)]
pub struct HubServer {
    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub endpoint: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl HubServer {
    /// Starts serving `repos` on a free port.
    pub fn start(repos: Vec<HubRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let server_log = Arc::clone(&log);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &repos, &server_log);
            }
        });
        Self { endpoint, log }
    }

    /// The paths requested so far (`/owner/name/resolve/main/file`).
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, repos: &[HubRepo], log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut auth) = (None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.trim().split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "range" => range = Some(value.trim().to_string()),
                "authorization" => auth = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    log.lock().unwrap().push(path.clone());
    respond(
        stream,
        answer(&path, range.as_deref(), auth.as_deref(), repos),
    )
}

/// Status, extra headers and body.
type Answer = (u16, Vec<(&'static str, String)>, Vec<u8>);

fn error(status: u16, code: &str) -> Answer {
    (status, vec![("X-Error-Code", code.to_string())], Vec::new())
}

fn answer(path: &str, range: Option<&str>, auth: Option<&str>, repos: &[HubRepo]) -> Answer {
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let [owner, name, "resolve", revision, file] = parts[..] else {
        return error(404, "EntryNotFound");
    };
    let id = format!("{owner}/{name}");
    let Some(repo) = repos.iter().find(|r| r.id == id) else {
        return error(404, "RepositoryNotFound");
    };
    if let Some(token) = &repo.token {
        if auth != Some(&format!("Bearer {token}")) {
            return (401, Vec::new(), Vec::new());
        }
    }
    if revision != "main" && revision != COMMIT {
        return error(404, "RevisionNotFound");
    }
    let Some((_, body)) = repo.files.iter().find(|(p, _)| p == file) else {
        return error(404, "EntryNotFound");
    };
    let etag = format!("\"{:016x}{:08x}\"", fnv1a(body), body.len());
    let mut headers = vec![("ETag", etag), ("X-Repo-Commit", COMMIT.to_string())];
    let size = body.len();
    let Some(start_end) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return (200, headers, body.clone());
    };
    let (start, end) = start_end.split_once('-').unwrap_or((start_end, ""));
    let start: usize = start.parse().unwrap_or(0).min(size);
    let end: usize = end
        .parse()
        .map_or(size.saturating_sub(1), |e: usize| e.min(size - 1));
    headers.push(("Content-Range", format!("bytes {start}-{end}/{size}")));
    let slice = if size == 0 {
        &[][..]
    } else {
        &body[start..=end]
    };
    (206, headers, slice.to_vec())
}

fn respond(mut stream: TcpStream, (status, headers, body): Answer) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    stream.write_all(head.as_bytes())?;
    stream.write_all(b"\r\n")?;
    stream.write_all(&body)?;
    stream.flush()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
