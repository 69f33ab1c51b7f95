//! `/healthz`, `/livez` and `/readyz` as kube-apiserver answers them: `ok` when every check
//! passes (one line per check with `?verbose`), else 500 listing them with the failed ones
//! marked `[-]`, so that a load balancer in front of the masters stops sending requests to one
//! that has lost the store's quorum. `/readyz/<check>` runs one check; `?exclude=<check>`
//! leaves one out. Like Kubernetes' `system:public-info-viewer`, they need no credentials.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::Api;
use crate::storage::Backend;

/// How long the store check waits for a linearizable read (a quorum's answer).
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The checks of each endpoint: `livez` is the process itself (restarting a member without
/// quorum does not help it); `readyz` and `healthz` also need the store.
fn checks(endpoint: &str) -> &'static [&'static str] {
    match endpoint {
        "livez" => &["ping"],
        _ => &["ping", "etcd"],
    }
}

/// Answers `endpoint` (`healthz`, `livez`, `readyz`), or only its check `only`.
pub(crate) async fn answer<B: Backend>(
    api: &Api<B>,
    endpoint: &str,
    only: Option<&str>,
    query: Option<&str>,
) -> Response {
    let mut verbose = false;
    let mut excluded = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "verbose" => verbose = true,
            "exclude" => excluded.push(v.into_owned()),
            _ => {}
        }
    }
    let names: Vec<&str> = match only {
        Some(one) => match checks(endpoint).iter().find(|c| **c == one) {
            Some(c) => vec![*c],
            None => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("404 page not found: {one}\n"),
                )
            }
        },
        None => checks(endpoint)
            .iter()
            .copied()
            .filter(|c| !excluded.iter().any(|e| e == c))
            .collect(),
    };
    let mut results = Vec::new();
    for name in names {
        results.push((name, run(api, name).await));
    }
    let (code, body) = report(endpoint, &results, verbose);
    text(code, body)
}

/// Runs one check: `Err` says why it failed (logged; the answer withholds it, as Kubernetes').
async fn run<B: Backend>(api: &Api<B>, name: &str) -> Result<(), String> {
    match name {
        "etcd" => match tokio::time::timeout(STORE_CHECK_TIMEOUT, api.storage().revision()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no linearizable read within {STORE_CHECK_TIMEOUT:?} (no quorum?)"
            )),
        },
        _ => Ok(()),
    }
}

/// The answer's status and text for the checks' results.
fn report(
    endpoint: &str,
    results: &[(&str, Result<(), String>)],
    verbose: bool,
) -> (StatusCode, String) {
    let failed = results.iter().any(|(_, r)| r.is_err());
    if !failed && !verbose {
        return (StatusCode::OK, "ok".into());
    }
    let mut out = String::new();
    for (name, result) in results {
        match result {
            Ok(()) => out.push_str(&format!("[+]{name} ok\n")),
            Err(why) => {
                tracing::warn!(check = %name, %endpoint, reason = %why, "health check failed");
                out.push_str(&format!("[-]{name} failed: reason withheld\n"));
            }
        }
    }
    if failed {
        out.push_str(&format!("{endpoint} check failed\n"));
        (StatusCode::INTERNAL_SERVER_ERROR, out)
    } else {
        out.push_str(&format!("{endpoint} check passed\n"));
        (StatusCode::OK, out)
    }
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_kube_apiservers() {
        let ok = [("ping", Ok(())), ("etcd", Ok(()))];
        assert_eq!(report("readyz", &ok, false), (StatusCode::OK, "ok".into()));
        assert_eq!(
            report("readyz", &ok, true),
            (
                StatusCode::OK,
                "[+]ping ok\n[+]etcd ok\nreadyz check passed\n".into()
            )
        );
        let lost = [("ping", Ok(())), ("etcd", Err("no quorum".to_string()))];
        let (code, body) = report("readyz", &lost, false);
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n"
        );
        assert_eq!(checks("livez"), ["ping"]);
    }
}
