//! Resumable HTTP downloads: `Range` requests after a dropped connection (RFC 9110 §14),
//! restart from zero when a server ignores them, exponential backoff between attempts.

use super::{FetchError, FetchOptions, RemoteFile};
use indicatif::{ProgressBar, ProgressStyle};
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

/// A progress bar on stderr, hidden unless asked for and stderr is a terminal.
pub(super) fn progress_bar(options: &FetchOptions, file_name: &str) -> ProgressBar {
    if !options.progress || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(file_name.to_string());
    bar
}

/// Why one attempt failed, when another may succeed.
struct Retry {
    reason: String,
    /// The HTTP status when the server answered with a retryable error (5xx, 408, 429).
    status: Option<u16>,
    /// Whether the server could not be reached at all.
    unreachable: bool,
}

impl Retry {
    fn dropped(reason: String) -> Self {
        Self {
            reason,
            status: None,
            unreachable: false,
        }
    }
}

enum Failure {
    Retry(Retry),
    /// Boxed: `FetchError` is large and this travels on the error path of every attempt.
    Fatal(Box<FetchError>),
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        Failure::Fatal(Box::new(e))
    }
}

/// Downloads `file.url` into `part`, resuming what `part` already holds, until the server has
/// sent the whole file. Does not verify the checksum.
pub(super) fn download_part(
    file: &RemoteFile,
    part: &Path,
    dir: &Path,
    options: &FetchOptions,
    bar: &ProgressBar,
) -> Result<(), FetchError> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(options.connect_timeout)
        .timeout_read(options.read_timeout)
        .build();
    // The longest the partial file has been: an attempt that extends it is progress, one that
    // does not (the server dropped early, or restarted from zero) counts toward the limit.
    let mut high_water = part_len(part)?;
    let mut n_attempts = 0u32;
    let mut n_failures = 0u32;
    let mut ever_reached = false;
    loop {
        let offset = part_len(part)?;
        if let Some(size) = file.size {
            if offset == size {
                return Ok(());
            }
            if offset > size {
                truncate(part)?;
                continue;
            }
        }
        n_attempts += 1;
        let retry = match attempt(&agent, file, part, dir, offset, bar) {
            Ok(()) => return Ok(()),
            Err(Failure::Fatal(e)) => return Err(*e),
            Err(Failure::Retry(retry)) => retry,
        };
        ever_reached |= !retry.unreachable;
        let len = part_len(part)?;
        if len > high_water {
            high_water = len;
            n_failures = 0;
        }
        n_failures += 1;
        if n_failures >= options.max_attempts.max(1) {
            return Err(give_up(file, part, dir, retry, n_attempts, ever_reached));
        }
        let delay = backoff(options, n_failures);
        bar.set_message(format!(
            "{}: {}, retrying in {delay:.1?}",
            file.file_name, retry.reason
        ));
        std::thread::sleep(delay);
        bar.set_message(file.file_name.clone());
    }
}

/// The error after the last attempt: the server's status, offline, or interrupted.
fn give_up(
    file: &RemoteFile,
    part: &Path,
    dir: &Path,
    retry: Retry,
    n_attempts: u32,
    ever_reached: bool,
) -> FetchError {
    if let Some(status) = retry.status {
        FetchError::Http {
            url: file.url.clone(),
            status,
            file_name: file.file_name.clone(),
            dir: dir.to_path_buf(),
        }
    } else if !ever_reached {
        FetchError::Offline {
            url: file.url.clone(),
            reason: retry.reason,
            file_name: file.file_name.clone(),
            dir: dir.to_path_buf(),
        }
    } else {
        FetchError::Interrupted {
            url: file.url.clone(),
            attempts: n_attempts,
            reason: retry.reason,
            part: part.to_path_buf(),
            file_name: file.file_name.clone(),
            dir: dir.to_path_buf(),
        }
    }
}

/// `backoff · 2^(n_failures − 1)`, at most `max_backoff`.
fn backoff(options: &FetchOptions, n_failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(n_failures.saturating_sub(1));
    options
        .backoff
        .saturating_mul(factor)
        .min(options.max_backoff)
}

/// One request: resumes at `offset` when it is not zero, appends the body to `part`.
fn attempt(
    agent: &ureq::Agent,
    file: &RemoteFile,
    part: &Path,
    dir: &Path,
    offset: u64,
    bar: &ProgressBar,
) -> Result<(), Failure> {
    let Some(response) = request(agent, file, part, dir, offset)? else {
        return Ok(());
    };
    let (start, total) = body_range(&response, file, part, dir, offset)?;
    // Without a length from the server (chunked transfer), the published size tells whether
    // the body was cut short.
    receive(response, part, start, total.or(file.size), bar)
}

/// Sends the request and sorts the server's errors; `None` when the range starts at the end of
/// a partial file that is already whole.
fn request(
    agent: &ureq::Agent,
    file: &RemoteFile,
    part: &Path,
    dir: &Path,
    offset: u64,
) -> Result<Option<ureq::Response>, Failure> {
    // `identity`: the bytes on disk must be the bytes published, and a `Range` must count them.
    let mut request = agent.get(&file.url).set("Accept-Encoding", "identity");
    if offset > 0 {
        request = request.set("Range", &format!("bytes={offset}-"));
    }
    match request.call() {
        Ok(response) => Ok(Some(response)),
        Err(ureq::Error::Status(416, response)) => {
            // The range starts at or past the end: the partial file may already be whole.
            let total = response
                .header("Content-Range")
                .and_then(parse_content_range)
                .and_then(|range| range.total);
            if offset > 0 && total == Some(offset) {
                return Ok(None);
            }
            truncate(part)?;
            Err(Failure::Retry(Retry::dropped(
                "the server refused to resume, restarting".into(),
            )))
        }
        Err(ureq::Error::Status(status, _)) if matches!(status, 408 | 429 | 500..=599) => {
            Err(Failure::Retry(Retry {
                reason: format!("HTTP {status}"),
                status: Some(status),
                unreachable: false,
            }))
        }
        Err(ureq::Error::Status(status, _)) => Err(http_error(file, dir, status)),
        Err(ureq::Error::Transport(transport)) => Err(transport_failure(file, dir, &transport)),
    }
}

/// Where the body starts in the file and the file's whole length, if the server says: 200 sends
/// it all, 206 the range asked for (anything else restarts from zero).
fn body_range(
    response: &ureq::Response,
    file: &RemoteFile,
    part: &Path,
    dir: &Path,
    offset: u64,
) -> Result<(u64, Option<u64>), Failure> {
    match response.status() {
        200 => Ok((
            0,
            response
                .header("Content-Length")
                .and_then(|v| v.trim().parse().ok()),
        )),
        206 => {
            let range = response
                .header("Content-Range")
                .and_then(parse_content_range);
            match range {
                Some(range) if range.start == offset => Ok((offset, range.total)),
                _ => {
                    truncate(part)?;
                    Err(Failure::Retry(Retry::dropped(
                        "the server resumed at another offset, restarting".into(),
                    )))
                }
            }
        }
        status => Err(http_error(file, dir, status)),
    }
}

/// A status that another attempt will not change.
fn http_error(file: &RemoteFile, dir: &Path, status: u16) -> Failure {
    Failure::from(FetchError::Http {
        url: file.url.clone(),
        status,
        file_name: file.file_name.clone(),
        dir: dir.to_path_buf(),
    })
}

/// Writes the body into `part` from byte `start` (truncating it when `start` is 0); a body that
/// ends before `total` is a dropped connection.
fn receive(
    response: ureq::Response,
    part: &Path,
    start: u64,
    total: Option<u64>,
    bar: &ProgressBar,
) -> Result<(), Failure> {
    let mut out = if start == 0 {
        fs::File::create(part)
    } else {
        fs::OpenOptions::new().append(true).open(part)
    }
    .map_err(|e| FetchError::io("write", part, e))?;
    if let Some(total) = total {
        bar.set_length(total);
    }
    bar.set_position(start);

    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.write_all(&buf[..n])
                    .map_err(|e| FetchError::io("write", part, e))?;
                received += n as u64;
                bar.inc(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.flush().map_err(|e| FetchError::io("write", part, e))?;
                return Err(Failure::Retry(Retry::dropped(format!(
                    "connection dropped at byte {}: {e}",
                    start + received
                ))));
            }
        }
    }
    out.flush().map_err(|e| FetchError::io("write", part, e))?;
    if let Some(total) = total {
        if start + received < total {
            return Err(Failure::Retry(Retry::dropped(format!(
                "connection closed at byte {} of {total}",
                start + received
            ))));
        }
    }
    Ok(())
}

/// Sorts a transport error into a bad address (fatal), an unreachable host (fatal without
/// DNS, retried otherwise) and a dropped connection (retried).
fn transport_failure(file: &RemoteFile, dir: &Path, transport: &ureq::Transport) -> Failure {
    use ureq::ErrorKind;
    // The message says which step failed ("tls connection init failed"), the source chain
    // says why ("invalid peer certificate: UnknownIssuer").
    let mut parts: Vec<String> = transport
        .message()
        .map(str::to_string)
        .into_iter()
        .collect();
    let mut source = std::error::Error::source(transport);
    while let Some(error) = source {
        parts.push(error.to_string());
        source = error.source();
    }
    let detail = (!parts.is_empty()).then(|| parts.join(": "));
    let reason = |what: &str| match &detail {
        Some(detail) => format!("{what}: {detail}"),
        None => what.to_string(),
    };
    match transport.kind() {
        ErrorKind::InvalidUrl | ErrorKind::UnknownScheme | ErrorKind::InsecureRequestHttpsOnly => {
            Failure::from(FetchError::InvalidUrl {
                url: file.url.clone(),
                reason: reason("invalid address"),
            })
        }
        // No name resolution: the machine is offline, and retrying will not change that.
        ErrorKind::Dns => Failure::from(FetchError::Offline {
            url: file.url.clone(),
            reason: reason("host name not resolved"),
            file_name: file.file_name.clone(),
            dir: dir.to_path_buf(),
        }),
        ErrorKind::ConnectionFailed | ErrorKind::ProxyConnect => Failure::Retry(Retry {
            reason: reason("connection failed"),
            status: None,
            unreachable: true,
        }),
        _ => Failure::Retry(Retry::dropped(reason("connection error"))),
    }
}

/// `Content-Range: bytes START-END/TOTAL` (or `bytes */TOTAL` on a 416).
#[derive(Debug, PartialEq)]
struct ContentRange {
    start: u64,
    total: Option<u64>,
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    let start = match range.trim() {
        "*" => 0,
        range => range.split_once('-')?.0.trim().parse().ok()?,
    };
    Some(ContentRange { start, total })
}

fn part_len(part: &Path) -> Result<u64, FetchError> {
    match fs::metadata(part) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(FetchError::io("read", part, e)),
    }
}

fn truncate(part: &Path) -> Result<(), FetchError> {
    fs::File::create(part)
        .map(drop)
        .map_err(|e| FetchError::io("write", part, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some(ContentRange {
                start: 100,
                total: Some(200)
            })
        );
        assert_eq!(
            parse_content_range("bytes */200"),
            Some(ContentRange {
                start: 0,
                total: Some(200)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some(ContentRange {
                start: 5,
                total: None
            })
        );
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let options = FetchOptions {
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            ..FetchOptions::default()
        };
        let delays: Vec<u64> = (1..=5).map(|n| backoff(&options, n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
    }
}
