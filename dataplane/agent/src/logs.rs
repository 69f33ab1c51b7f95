//! Container logs kept as the CRI keeps them, and read back with the options of `pods/log`.
//!
//! Layout (kubelet's `/var/log/pods`): `<root>/<namespace>_<pod>_<uid>/<container>/<n>.log`,
//! one file per start of the container (`n` counts restarts), each line
//! `<RFC 3339 timestamp> <stdout|stderr> <F|P> <text>` (`P`: a partial line continued by the
//! next record). A container that has stopped gets `<n>.exited` beside its log, which ends a
//! follow.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// How often a follow looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The options of `GET pods/<name>/log` that the agent applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// Keep the stream open and send lines as they are written, until the container stops.
    pub follow: bool,
    /// The previous start of the container instead of the current one.
    pub previous: bool,
    /// Prefix every line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines written at or after this time (`sinceSeconds` or `sinceTime`).
    pub since: Option<Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Parses the query string of a logs request; a malformed value is an error naming it.
    pub fn from_query(query: &str) -> Result<LogOptions, String> {
        let mut opts = LogOptions::default();
        let mut since_seconds = None;
        let mut since_time = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let flag = |v: &str| match v {
                "" | "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(format!("{k}={v:?} is not a boolean")),
            };
            match &*k {
                "follow" => opts.follow = flag(&v)?,
                "previous" => opts.previous = flag(&v)?,
                "timestamps" => opts.timestamps = flag(&v)?,
                "tailLines" => opts.tail_lines = Some(at_least(&k, &v, 0)? as usize),
                "limitBytes" => opts.limit_bytes = Some(at_least(&k, &v, 1)? as u64),
                "sinceSeconds" => since_seconds = Some(at_least(&k, &v, 1)?),
                "sinceTime" => {
                    let t: Timestamp = v
                        .parse()
                        .map_err(|_| format!("sinceTime={v:?} is not an RFC 3339 time"))?;
                    since_time = Some(t);
                }
                _ => {}
            }
        }
        opts.since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err("at most one of sinceTime or sinceSeconds may be specified".into())
            }
            (Some(s), None) => Timestamp::now()
                .checked_sub(SignedDuration::from_secs(s))
                .ok(),
            (None, t) => t,
        };
        Ok(opts)
    }
}

/// A whole number parameter that must be at least `min`.
fn at_least(key: &str, value: &str, min: i64) -> Result<i64, String> {
    let n: i64 = value
        .parse()
        .map_err(|_| format!("{key}={value:?} is not a number"))?;
    if n < min {
        return Err(match min {
            0 => format!("{key} must be greater than or equal to 0"),
            _ => format!("{key} must be greater than {}", min - 1),
        });
    }
    Ok(n)
}

/// The directory of a pod's logs.
pub fn pod_dir(root: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{pod}_{uid}"))
}

/// The log file of start `n` of `container` in a pod's log directory.
pub fn container_log(pod_dir: &Path, container: &str, n: u32) -> PathBuf {
    pod_dir.join(container).join(format!("{n}.log"))
}

/// Appends `text` to a CRI log file, one full record per line, stamped now.
pub fn append(path: &Path, stream: &str, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let ts = Timestamp::now();
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(&format!("{ts} {stream} F {line}\n"));
    }
    f.write_all(out.as_bytes())
}

/// Records that the container writing `log` has stopped: a follow of it ends.
pub fn mark_exited(log: &Path) -> std::io::Result<()> {
    std::fs::write(log.with_extension("exited"), b"")
}

/// Why no log could be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LogError {
    /// The pod has no logs here (not on this node, or never started).
    #[error("no logs of pod {namespace}/{pod} on this node (it has not started here)")]
    NoPod {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
    /// The container has not started (or, for `previous`, has not restarted).
    #[error("{0}")]
    NoContainer(String),
}

/// The log file to read for `container` of `namespace/pod`: of its newest pod directory (a
/// pod recreated under the same name has a new uid), the current start or the previous one.
pub fn find(
    root: &Path,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<PathBuf, LogError> {
    let prefix = format!("{namespace}_{pod}_");
    let newest = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| LogError::NoPod {
            namespace: namespace.into(),
            pod: pod.into(),
        })?;
    let mut starts: Vec<u32> = std::fs::read_dir(newest.join(container))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    starts.sort_unstable();
    let pick = if previous {
        starts.len().checked_sub(2).map(|i| starts[i])
    } else {
        starts.last().copied()
    };
    match pick {
        Some(n) => Ok(container_log(&newest, container, n)),
        None if previous => Err(LogError::NoContainer(format!(
            "previous terminated container \"{container}\" in pod \"{pod}\" not found"
        ))),
        None => Err(LogError::NoContainer(format!(
            "container \"{container}\" in pod \"{pod}\" is waiting to start"
        ))),
    }
}

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq)]
struct Record<'a> {
    time: &'a str,
    /// The text, with its newline unless the record is partial.
    text: String,
}

fn parse(line: &str) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, ' ');
    let (time, _stream, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let text = parts.next().unwrap_or("");
    let text = if tag == "P" {
        text.to_string()
    } else {
        format!("{text}\n")
    };
    Some(Record { time, text })
}

/// What a reader has sent so far, for limits across a follow.
#[derive(Debug, Default)]
struct Sent {
    bytes: u64,
}

/// Renders complete lines of a CRI log (`data`), applying `since`, `timestamps` and
/// `limitBytes`; returns the bytes and whether the byte limit was reached.
fn render(data: &str, opts: &LogOptions, sent: &mut Sent, tail: Option<usize>) -> (Vec<u8>, bool) {
    let records: Vec<Record> = data
        .lines()
        .filter_map(parse)
        .filter(|r| match (&opts.since, r.time.parse::<Timestamp>()) {
            (Some(since), Ok(t)) => t >= *since,
            _ => true,
        })
        .collect();
    // A line is the records up to one that is not partial.
    let mut lines: Vec<Vec<&Record>> = vec![Vec::new()];
    for r in &records {
        lines.last_mut().expect("never empty").push(r);
        if r.text.ends_with('\n') {
            lines.push(Vec::new());
        }
    }
    if lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
    let mut out = Vec::new();
    for line in &lines[skip..] {
        for (i, r) in line.iter().enumerate() {
            if opts.timestamps && i == 0 {
                out.extend_from_slice(r.time.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(r.text.as_bytes());
        }
    }
    if let Some(limit) = opts.limit_bytes {
        let room = limit.saturating_sub(sent.bytes) as usize;
        if out.len() >= room {
            out.truncate(room);
            sent.bytes = limit;
            return (out, true);
        }
    }
    sent.bytes += out.len() as u64;
    (out, false)
}

/// Sends the log at `path` to `tx` as `opts` ask, following it while the container runs if
/// `opts.follow`. Ends when done, or when the receiver is gone. The file is read through one
/// handle, so a log removed with its pod is still read to its end.
pub async fn stream(path: PathBuf, opts: LogOptions, tx: tokio::sync::mpsc::Sender<Vec<u8>>) {
    use tokio::io::AsyncReadExt;
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return;
    };
    let mut sent = Sent::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut tail = opts.tail_lines;
    loop {
        // The container has stopped (or its logs were removed): what is in the file is all.
        let exited = path.with_extension("exited").exists() || !path.exists();
        if file.read_to_end(&mut pending).await.is_err() {
            return;
        }
        // Only whole lines: a line being written is taken next time.
        if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
            let rest = pending.split_off(end + 1);
            let text = String::from_utf8_lossy(&pending).into_owned();
            pending = rest;
            let (out, full) = render(&text, &opts, &mut sent, tail.take());
            if !out.is_empty() && tx.send(out).await.is_err() {
                return;
            }
            if full {
                return;
            }
        }
        tail = None;
        if !opts.follow || exited {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-12-04T10:00:00Z stdout F one\n\
                       2026-12-04T10:00:01Z stderr P tw\n\
                       2026-12-04T10:00:01.5Z stderr F o\n\
                       2026-12-04T10:00:02Z stdout F three\n";

    fn all(opts: &LogOptions, tail: Option<usize>) -> String {
        String::from_utf8(render(LOG, opts, &mut Sent::default(), tail).0).unwrap()
    }

    #[test]
    fn partial_records_join_and_tail_counts_whole_lines() {
        let plain = LogOptions::default();
        assert_eq!(all(&plain, None), "one\ntwo\nthree\n");
        assert_eq!(all(&plain, Some(2)), "two\nthree\n");
        assert_eq!(all(&plain, Some(0)), "");
        let stamped = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            all(&stamped, Some(1)),
            "2026-12-04T10:00:02Z three\n",
            "one timestamp per line"
        );
    }

    #[test]
    fn since_and_limit_bytes_cut_the_output() {
        let since = LogOptions {
            since: Some("2026-12-04T10:00:01.2Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(all(&since, None), "o\nthree\n");
        let limit = LogOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        let (out, full) = render(LOG, &limit, &mut Sent::default(), None);
        assert_eq!((out.as_slice(), full), (&b"one\ntw"[..], true));
    }

    #[test]
    fn query_options_parse_and_bad_values_are_named() {
        let o =
            LogOptions::from_query("follow=true&tailLines=5&timestamps=1&limitBytes=10").unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(5), Some(10)));
        let t = LogOptions::from_query("sinceTime=2026-12-04T10%3A00%3A01Z").unwrap();
        assert_eq!(t.since, Some("2026-12-04T10:00:01Z".parse().unwrap()));
        assert!(LogOptions::from_query("sinceSeconds=10")
            .unwrap()
            .since
            .is_some());
        for bad in [
            "tailLines=x",
            "tailLines=-1",
            "limitBytes=0",
            "sinceSeconds=0",
            "follow=maybe",
            "sinceTime=yesterday",
            "sinceSeconds=5&sinceTime=2026-12-04T10:00:01Z",
        ] {
            assert!(LogOptions::from_query(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn files_are_found_per_start_and_followed_until_the_container_exits() {
        let root = std::env::temp_dir().join(format!("flotilla-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = pod_dir(&root, "ns", "web", "u1");
        let first = container_log(&dir, "app", 0);
        append(&first, "stdout", "first start").unwrap();
        mark_exited(&first).unwrap();
        let second = container_log(&dir, "app", 1);
        append(&second, "stdout", "second start").unwrap();
        assert_eq!(find(&root, "ns", "web", "app", false).unwrap(), second);
        assert_eq!(find(&root, "ns", "web", "app", true).unwrap(), first);
        assert!(matches!(
            find(&root, "ns", "web", "db", false),
            Err(LogError::NoContainer(_))
        ));
        assert!(matches!(
            find(&root, "ns", "other", "app", false),
            Err(LogError::NoPod { .. })
        ));

        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let follow = LogOptions {
            follow: true,
            ..Default::default()
        };
        let reader = tokio::spawn(stream(second.clone(), follow, tx));
        assert_eq!(rx.recv().await.unwrap(), b"second start\n");
        append(&second, "stdout", "later").unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"later\n");
        // The last line and the removal of the pod's logs come at once: the line is read.
        append(&second, "stdout", "last").unwrap();
        mark_exited(&second).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"last\n");
        let end = rx.recv().await;
        assert_eq!(end, None, "the follow ends when the container exits");
        reader.await.unwrap();
    }
}
