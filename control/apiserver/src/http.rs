//! The Kubernetes REST edge: discovery, and get/list/watch/create/update/patch/delete on every
//! built-in resource, over [`Storage`].
//!
//! Paths are parsed by hand (one fallback handler) because Kubernetes' URL grammar is
//! ambiguous for a router: `/api/v1/namespaces/x/pods` is a collection, `/api/v1/namespaces/x/
//! status` a subresource.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use crate::managed;
use crate::objects;
use crate::resources::{self, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::storage::{resource_version, Backend, Change, Storage};
use crate::table;

/// Largest request body accepted (DESIGN.md: API 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The Kubernetes version discovery reports.
pub const KUBE_VERSION: (&str, &str) = ("1", "33");

/// Who sent a request, from its client certificate (CN = user, O = groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The groups.
    pub groups: Vec<String>,
}

/// Shared state of the API server.
#[derive(Debug)]
pub struct Api<B> {
    storage: Storage<B>,
    caches: crate::cache::Caches<B>,
    tokens: Option<crate::tokens::TokenSigner>,
    nodes: Option<crate::node_proxy::NodeClient>,
    /// The process's metrics in Prometheus text form, for `/metrics` (set once by the
    /// server; without it `/metrics` is 404).
    metrics: std::sync::OnceLock<MetricsText>,
}

/// Renders a process's metrics in Prometheus text form.
#[derive(Clone)]
pub struct MetricsText(pub Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for MetricsText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsText")
    }
}

impl<B: Backend> Api<B> {
    /// Serves the objects in `backend`.
    pub fn new(backend: B) -> Arc<Api<B>> {
        Api::with_tokens(backend, None)
    }

    /// Serves the objects in `backend`, issuing and accepting service-account tokens signed by
    /// `tokens` (without one, bearer tokens are refused).
    pub fn with_tokens(backend: B, tokens: Option<crate::tokens::TokenSigner>) -> Arc<Api<B>> {
        Api::serving(backend, tokens, None)
    }

    /// Serves the objects in `backend` with `tokens` (as [`Api::with_tokens`]), proxying
    /// logs and exec to node agents with `nodes` (without it, those requests get 503).
    pub fn serving(
        backend: B,
        tokens: Option<crate::tokens::TokenSigner>,
        nodes: Option<crate::node_proxy::NodeClient>,
    ) -> Arc<Api<B>> {
        let storage = Storage::new(backend);
        Arc::new(Api {
            caches: crate::cache::Caches::new(storage.clone()),
            storage,
            tokens,
            nodes,
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Serves `text` at `/metrics` (as Kubernetes' API servers do, to users RBAC lets `get`
    /// that path). Only the first call counts.
    pub fn serve_metrics(&self, text: MetricsText) {
        let _ = self.metrics.set(text);
    }

    pub(crate) fn node_client(&self) -> Option<&crate::node_proxy::NodeClient> {
        self.nodes.as_ref()
    }

    /// Starts the watch cache of every resource (servers call this once at start).
    pub fn start_caches(&self) {
        self.caches.start_all();
    }

    /// The storage layer.
    pub fn storage(&self) -> &Storage<B> {
        &self.storage
    }
}

/// The API as an axum router. Requests must carry a [`User`] extension (the TLS layer adds
/// it); without one they get 401.
pub fn router<B: Backend>(api: Arc<Api<B>>) -> Router {
    Router::new()
        .fallback(handle::<B>)
        .with_state(api)
        .layer(axum::middleware::from_fn(crate::unread::finish_unread))
}

pub(crate) fn error_response(e: &ApiError) -> Response {
    let (code, _) = e.code_and_reason();
    let body = serde_json::to_vec(&e.to_status()).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `/api` (`core`) or `/apis`: aggregated discovery when `Accept` asks for it first, the plain
/// list otherwise; with an `ETag`, answered by 304 when the client has the same already.
fn discovery_response(headers: &HeaderMap, core: bool) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = match crate::discovery::negotiate(accept) {
        Some(v) => (
            crate::discovery::aggregated_content_type(v),
            crate::discovery::aggregated(core, v),
        ),
        None if core => (
            "application/json".to_string(),
            crate::discovery::api_versions(),
        ),
        None => (
            "application/json".to_string(),
            crate::discovery::api_groups(),
        ),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let etag = format!("\"{:016x}\"", fnv1a(&body));
    let vary = (header::VARY, "Accept".to_string());
    let tag = (header::ETAG, etag.clone());
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, [vary, tag]).into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type), vary, tag],
        body,
    )
        .into_response()
}

/// FNV-1a over `bytes`: the same on every master and every run, unlike the std hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The query parameters the API understands.
#[derive(Debug, Default)]
pub(crate) struct Query {
    watch: bool,
    resource_version: String,
    label_selector: Option<LabelSelector>,
    field_selector: Option<FieldSelector>,
    timeout_seconds: Option<u64>,
    dry_run: bool,
    /// Who makes the change (`fieldManager`); server-side apply requires it.
    field_manager: Option<String>,
    /// Whether a server-side apply takes over fields other managers own (`force`).
    force: bool,
    /// What to do with fields the object's type does not know (`fieldValidation`).
    field_validation: crate::validation::Mode,
    limit: u64,
    continue_token: Option<String>,
    bookmarks: bool,
    /// `sendInitialEvents` (a streaming list): whether a watch begins with the current
    /// objects as ADDED and a bookmark marking their end; unset, only a watch from no
    /// resourceVersion (or "0") begins with them, without that bookmark.
    send_initial_events: Option<bool>,
    /// `resourceVersionMatch=Exact`: a list at exactly `resourceVersion`, not a newer one.
    exact: bool,
    /// Whether `resourceVersionMatch` was given at all.
    version_match: bool,
    /// What the rows of a Table answer carry (`includeObject`).
    include_object: table::Include,
}

pub(crate) fn parse_query(q: Option<&str>) -> Result<Query, ApiError> {
    let mut out = Query::default();
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "watch" => out.watch = v == "true" || v == "1",
            "resourceVersion" => out.resource_version = v.into_owned(),
            "labelSelector" => out.label_selector = Some(LabelSelector::parse(&v)?),
            "fieldSelector" => out.field_selector = Some(FieldSelector::parse(&v)?),
            "timeoutSeconds" => {
                out.timeout_seconds = Some(v.parse().map_err(|_| {
                    ApiError::BadRequest(format!("timeoutSeconds {v:?} is not a number"))
                })?)
            }
            "limit" => {
                out.limit = v
                    .parse()
                    .map_err(|_| ApiError::BadRequest(format!("limit {v:?} is not a number")))?
            }
            "continue" if !v.is_empty() => out.continue_token = Some(v.into_owned()),
            "dryRun" => out.dry_run = v == "All",
            "fieldManager" => out.field_manager = Some(v.to_string()),
            "force" => out.force = v == "true" || v == "1",
            "allowWatchBookmarks" => out.bookmarks = v == "true" || v == "1",
            "sendInitialEvents" => out.send_initial_events = Some(v == "true" || v == "1"),
            "includeObject" => {
                out.include_object = table::Include::parse(&v).map_err(ApiError::BadRequest)?
            }
            "resourceVersionMatch" => match v.as_ref() {
                "Exact" => (out.exact, out.version_match) = (true, true),
                "NotOlderThan" => out.version_match = true,
                "" => {}
                other => {
                    return Err(list_options_invalid(format!(
                    "Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                )))
                }
            },
            "fieldValidation" => out.field_validation = crate::validation::Mode::parse(&v)?,
            _ => {}
        }
    }
    // Kubernetes' ListOptions validation.
    if out.watch {
        if out.send_initial_events.is_some() && (!out.version_match || out.exact) {
            return Err(list_options_invalid(
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to \
                 NotOlderThan"
                    .into(),
            ));
        }
        if out.version_match && out.send_initial_events.is_none() {
            return Err(list_options_invalid(
                "Forbidden: resourceVersionMatch is forbidden for watch unless \
                 sendInitialEvents is provided"
                    .into(),
            ));
        }
        if out.send_initial_events == Some(true) && !out.bookmarks {
            return Err(list_option_invalid(
                "allowWatchBookmarks",
                "Forbidden: sendInitialEvents requires allowWatchBookmarks to be true",
            ));
        }
    } else if out.send_initial_events.is_some() {
        return Err(list_option_invalid(
            "sendInitialEvents",
            "Forbidden: sendInitialEvents is forbidden for list",
        ));
    }
    if out.version_match && !out.watch {
        if out.resource_version.is_empty() {
            return Err(list_options_invalid(
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
                    .into(),
            ));
        }
        if out.exact && out.resource_version == "0" {
            return Err(list_options_invalid(
                "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""
                    .into(),
            ));
        }
        if out.continue_token.is_some() {
            return Err(list_options_invalid(
                "Forbidden: resourceVersionMatch is forbidden when continue is provided".into(),
            ));
        }
    }
    Ok(out)
}

/// A 422 about the request's `resourceVersionMatch`, as Kubernetes words it.
fn list_options_invalid(message: String) -> ApiError {
    list_option_invalid("resourceVersionMatch", &message)
}

/// A 422 about list option `field`.
fn list_option_invalid(field: &str, message: &str) -> ApiError {
    ApiError::Invalid {
        kind: "ListOptions.meta.k8s.io".into(),
        name: String::new(),
        causes: vec![(field.into(), message.into())],
    }
}

/// What a path names.
#[derive(Debug)]
pub(crate) enum Target {
    Version,
    /// `/metrics`: the process's metrics.
    Metrics,
    /// `healthz`, `livez` or `readyz`, and the one check asked for.
    Health(String, Option<String>),
    ApiVersions,
    ApiGroups,
    Resources(&'static str, &'static str),
    OpenApiV2,
    OpenApiV3Root,
    OpenApiV3(String),
    Collection(&'static Resource, Option<String>),
    Object(&'static Resource, Option<String>, String, Option<String>),
}

fn not_found_path(path: &str) -> ApiError {
    ApiError::NotFound {
        kind: "path".into(),
        name: path.into(),
    }
}

pub(crate) fn parse_path(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Target::Version),
        ["metrics"] => return Ok(Target::Metrics),
        [endpoint @ ("healthz" | "livez" | "readyz"), rest @ ..] => {
            let check = match rest {
                [] => None,
                [check] => Some(check.to_string()),
                _ => return Err(not_found_path(path)),
            };
            return Ok(Target::Health(endpoint.to_string(), check));
        }
        ["api"] => return Ok(Target::ApiVersions),
        ["openapi", "v2"] | ["swagger-2.0.0.pb-v1"] => return Ok(Target::OpenApiV2),
        ["openapi", "v3"] => return Ok(Target::OpenApiV3Root),
        ["openapi", "v3", rest @ ..] => return Ok(Target::OpenApiV3(rest.join("/"))),
        ["apis"] => return Ok(Target::ApiGroups),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path(path)),
    };
    let (group, version) = resources::group_versions()
        .into_iter()
        .chain(crate::reviews::group_versions())
        .find(|(g, v)| *g == group && *v == version)
        .ok_or_else(|| not_found_path(path))?;
    let find =
        |plural: &str| resources::find(group, version, plural).ok_or_else(|| not_found_path(path));
    Ok(match rest {
        [] => Target::Resources(group, version),
        ["namespaces", ns, plural, tail @ ..]
            if resources::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            let res = find(plural)?;
            match tail {
                [] => Target::Collection(res, Some(ns.to_string())),
                [name] => Target::Object(res, Some(ns.to_string()), name.to_string(), None),
                [name, sub] => Target::Object(
                    res,
                    Some(ns.to_string()),
                    name.to_string(),
                    Some(sub.to_string()),
                ),
                _ => return Err(not_found_path(path)),
            }
        }
        [plural] => Target::Collection(find(plural)?, None),
        [plural, name] => Target::Object(find(plural)?, None, name.to_string(), None),
        [plural, name, sub] => {
            Target::Object(find(plural)?, None, name.to_string(), Some(sub.to_string()))
        }
        _ => return Err(not_found_path(path)),
    })
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"))
}

tokio::task_local! {
    /// Warnings for the client about the request being served, sent as `Warning` headers.
    static WARNINGS: std::cell::RefCell<Vec<String>>;
}

/// Adds warnings to the answer of the request being served (none outside a request).
fn warn(texts: Vec<String>) {
    if !texts.is_empty() {
        let _ = WARNINGS.try_with(|w| w.borrow_mut().extend(texts));
    }
}

/// `Warning: 299 - "<text>"` headers, as Kubernetes sends them (kubectl prints each).
fn add_warnings(response: &mut Response, texts: &[String]) {
    for text in texts {
        let quoted = text.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = header::HeaderValue::from_str(&format!("299 - \"{quoted}\"")) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
}

async fn handle<B: Backend>(State(api): State<Arc<Api<B>>>, req: Request) -> Response {
    let warnings = std::cell::RefCell::new(Vec::new());
    let (mut response, warnings) = WARNINGS
        .scope(warnings, async move {
            let response = answer(api, req).await;
            let texts = WARNINGS.with(|w| w.take());
            (response, texts)
        })
        .await;
    add_warnings(&mut response, &warnings);
    response
}

async fn answer<B: Backend>(api: Arc<Api<B>>, req: Request) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let user = match (req.extensions().get::<User>().cloned(), bearer, &api.tokens) {
        (Some(u), _, _) => u,
        (None, Some(token), Some(signer)) => match signer.verify(&token) {
            Ok(u) => u,
            Err(e) => return error_response(&e),
        },
        // Health and version are public, as Kubernetes' system:public-info-viewer has them.
        _ if req.method() == Method::GET && is_public_info(req.uri().path()) => User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        },
        _ => return error_response(&ApiError::Unauthorized),
    };
    let user = match impersonated(&api.storage, user, req.headers()).await {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    let fence = req
        .headers()
        .get(crate::storage::FENCE_HEADER)
        .map(|v| crate::storage::Fence::parse(v.to_str().unwrap_or("")));
    let served = match fence {
        None => serve_versioned(api, &user, req).await,
        Some(Err(e)) => Err(e),
        Some(Ok(fence)) => {
            crate::storage::FENCE
                .scope(fence, serve_versioned(api, &user, req))
                .await
        }
    };
    match served {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

/// Paths anyone may read: `/version` and the health checks.
fn is_public_info(path: &str) -> bool {
    matches!(parse_path(path), Ok(Target::Version | Target::Health(..)))
}

/// The user a request acts as: the authenticated one, or whom its `Impersonate-User` and
/// `Impersonate-Group` headers name (`kubectl --as`, `--as-group`) if the authenticated user
/// may `impersonate` each of them, as Kubernetes decides it (a service account is
/// impersonated through `serviceaccounts` in its namespace).
async fn impersonated<B: Backend>(
    storage: &Storage<B>,
    user: User,
    headers: &HeaderMap,
) -> Result<User, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(String::from)
            .collect()
    };
    let groups = values("impersonate-group");
    let Some(name) = values("impersonate-user").into_iter().next() else {
        if groups.is_empty() {
            return Ok(user);
        }
        return Err(ApiError::BadRequest(
            "impersonating groups requires impersonating a user (Impersonate-User)".into(),
        ));
    };
    let mut as_groups = Vec::new();
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, sa)) => {
            may_impersonate(storage, &user, "serviceaccounts", Some(ns), sa).await?;
            as_groups.push("system:serviceaccounts".to_string());
            as_groups.push(format!("system:serviceaccounts:{ns}"));
        }
        None => may_impersonate(storage, &user, "users", None, &name).await?,
    }
    for g in groups {
        may_impersonate(storage, &user, "groups", None, &g).await?;
        as_groups.push(g);
    }
    as_groups.push("system:authenticated".into());
    Ok(User {
        name,
        groups: as_groups,
    })
}

/// Whether `user` may impersonate `name` (a user, group or service account): RBAC's
/// `impersonate` verb on that resource.
async fn may_impersonate<B: Backend>(
    storage: &Storage<B>,
    user: &User,
    resource: &'static str,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    let attrs = crate::rbac::Attributes {
        verb: "impersonate",
        group: "",
        resource,
        subresource: None,
        namespace,
        name: Some(name),
    };
    crate::rbac::authorize(storage, user, &attrs).await
}

/// Serves a request, converting those for a version other than the stored one (the
/// autoscaling/v1 autoscalers; see [`crate::versions`]).
async fn serve_versioned<B: Backend>(
    api: Arc<Api<B>>,
    user: &User,
    req: Request,
) -> Result<Response, ApiError> {
    if !req.uri().path().starts_with(crate::versions::V1_PREFIX) {
        return serve(api, user, req).await;
    }
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path()
        .replacen(crate::versions::V1_PREFIX, crate::versions::V2_PREFIX, 1);
    let uri = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    parts.uri = uri
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("bad path {uri:?}")))?;
    let watching = parse_query(parts.uri.query())?.watch;
    let json_type = |parts: &mut axum::http::request::Parts| {
        parts.headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
    };
    let body = match parts.method {
        Method::POST | Method::PUT => {
            let obj = parse_json(&read_body(body).await?)?;
            json_type(&mut parts);
            Body::from(serde_json::to_vec(&crate::versions::hpa_to_v2(obj)).unwrap_or_default())
        }
        Method::PATCH => {
            // The patch applies to the v1 form; the result replaces the stored object.
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/merge-patch+json")
                .to_string();
            let patch = parse_json(&read_body(body).await?)?;
            for _ in 0..5 {
                let get = Request::builder()
                    .method(Method::GET)
                    .uri(path.as_str())
                    .body(Body::empty())
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                let current = serve(api.clone(), user, get).await?;
                let current = parse_json(&read_body(current.into_body()).await?)?;
                let v1 = crate::versions::hpa_to_v1(current);
                let patched = objects::apply_patch(&content_type, &v1, &patch)?;
                let mut put = Request::builder()
                    .method(Method::PUT)
                    .uri(parts.uri.clone())
                    .body(Body::from(
                        serde_json::to_vec(&crate::versions::hpa_to_v2(patched))
                            .unwrap_or_default(),
                    ))
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                put.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                match serve(api.clone(), user, put).await {
                    Err(ApiError::Conflict { .. })
                        if resource_version(&patch_rv(&patch)).unwrap_or(0) == 0 =>
                    {
                        continue
                    }
                    other => return to_v1(other?, false).await,
                }
            }
            return Err(ApiError::Conflict {
                kind: "horizontalpodautoscalers.autoscaling".into(),
                name: path.rsplit('/').next().unwrap_or_default().into(),
            });
        }
        _ => body,
    };
    let answer = serve(api, user, Request::from_parts(parts, body)).await?;
    to_v1(answer, watching).await
}

/// A v2 autoscaler answer as v1: whole JSON bodies, or each line of a watch.
async fn to_v1(answer: Response, watching: bool) -> Result<Response, ApiError> {
    let json = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !json {
        return Ok(answer);
    }
    let (parts, body) = answer.into_parts();
    let convert = |bytes: &[u8]| -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for line in bytes.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Value>(line) {
                Ok(v) => out.extend(
                    serde_json::to_vec(&crate::versions::answer_to_v1(v)).unwrap_or_default(),
                ),
                Err(_) => out.extend_from_slice(line),
            }
            out.push(b'\n');
        }
        out
    };
    if watching {
        use tokio_stream::StreamExt;
        let stream = body
            .into_data_stream()
            .map(move |chunk| chunk.map(|b: Bytes| Bytes::from(convert(&b))));
        return Ok(Response::from_parts(parts, Body::from_stream(stream)));
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Body::from(convert(&bytes))))
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(format!("limit is {MAX_BODY_BYTES} bytes")))
}

/// How a request body is encoded, by its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    Json,
    /// `application/yaml`, and server-side apply's `application/apply-patch+yaml`.
    Yaml,
    /// Kubernetes' protobuf envelope, for the built-in kinds.
    Protobuf,
}

impl BodyFormat {
    /// The format of `content_type` (without parameters); `None` for one the API does not
    /// take (415).
    fn of(content_type: &str) -> Option<BodyFormat> {
        match content_type {
            "" => Some(BodyFormat::Json),
            crate::protobuf::MEDIA_TYPE => Some(BodyFormat::Protobuf),
            "application/yaml" | objects::APPLY_PATCH => Some(BodyFormat::Yaml),
            ct if ct.ends_with("json") => Some(BodyFormat::Json),
            _ => None,
        }
    }
}

fn parse_body(format: BodyFormat, bytes: &[u8]) -> Result<Value, ApiError> {
    match format {
        BodyFormat::Protobuf => crate::protobuf::decode(bytes),
        BodyFormat::Json => parse_json(bytes),
        BodyFormat::Yaml => parse_yaml(bytes),
    }
}

pub(crate) fn parse_yaml(bytes: &[u8]) -> Result<Value, ApiError> {
    // JSON is YAML, and most YAML bodies are JSON (kubectl's server-side apply): the faster
    // parser first.
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return Ok(v);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::BadRequest("the request body is not valid UTF-8 YAML".into()))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| {
        // The parser's first line says what and where; the rest is a source excerpt.
        let e = e.to_string();
        let what = e
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        ApiError::BadRequest(format!("the request body is not valid YAML: {what}"))
    })
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice::<Value>(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// The RBAC attributes of a request for a resource (`None`: discovery and the like, open to
/// every authenticated user).
fn attributes<'a>(
    method: &Method,
    target: &'a Target,
    watch: bool,
) -> Option<crate::rbac::Attributes<'a>> {
    let (res, ns, name, sub, verb) = match target {
        Target::Collection(res, ns) => {
            let verb = match *method {
                Method::GET if watch => "watch",
                Method::GET => "list",
                Method::POST => "create",
                Method::DELETE => "deletecollection",
                _ => "unknown",
            };
            (*res, ns.as_deref(), None, None, verb)
        }
        Target::Object(res, ns, name, sub) => {
            let verb = match *method {
                Method::GET => "get",
                Method::POST => "create",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "unknown",
            };
            // Running a command is a create, whichever method the protocol uses (WebSocket
            // upgrades are GETs), as Kubernetes authorizes it since 1.31.
            let verb = match sub.as_deref() {
                Some("exec" | "attach") if res.kind == "Pod" => "create",
                _ => verb,
            };
            let ns = if res.kind == "Namespace" {
                Some(name.as_str())
            } else {
                ns.as_deref()
            };
            (*res, ns, Some(name.as_str()), sub.as_deref(), verb)
        }
        _ => return None,
    };
    Some(crate::rbac::Attributes {
        verb,
        group: res.group,
        resource: res.plural,
        subresource: sub,
        namespace: ns,
        name,
    })
}

async fn serve<B: Backend>(
    api: Arc<Api<B>>,
    user: &User,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    // Bodies are JSON, YAML, or Kubernetes protobuf for the built-in kinds.
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| ct.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let Some(format) = BodyFormat::of(&content_type) else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types \
             include: application/json, application/yaml, application/vnd.kubernetes.protobuf, \
             application/json-patch+json, application/merge-patch+json, \
             application/strategic-merge-patch+json, application/apply-patch+yaml \
             (got {content_type})"
        )));
    };
    let path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query())?;
    if let Some((review, ns)) = crate::reviews::find(&path) {
        if parts.method != Method::POST {
            return Err(ApiError::MethodNotAllowed(format!(
                "{} may only be created",
                review.plural
            )));
        }
        // Asking about oneself is open to every authenticated user (Kubernetes'
        // system:basic-user); asking about others needs RBAC's leave.
        if !review.kind.starts_with("Self") {
            let attrs = crate::rbac::Attributes {
                verb: "create",
                group: review.group,
                resource: review.plural,
                subresource: None,
                namespace: ns.as_deref(),
                name: None,
            };
            crate::rbac::authorize(&api.storage, user, &attrs).await?;
        }
        let asked = parse_body(format, &read_body(body).await?)?;
        let answer =
            crate::reviews::create(&api.storage, user, review, ns.as_deref(), asked).await?;
        return Ok(json_response(StatusCode::CREATED, &answer));
    }
    let table = wants_table(&parts.headers);
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    // Who the change is recorded for in managedFields.
    let change_by = |res: &Resource, sub: Option<&str>| {
        managed::Change::new(
            query.field_manager.as_deref(),
            user_agent,
            &res.api_version(),
            sub,
        )
    };
    let target = parse_path(&path)?;
    let method = parts.method.clone();
    if let Some(attrs) = attributes(&method, &target, query.watch) {
        crate::rbac::authorize(&api.storage, user, &attrs).await?;
    }
    match (method, target) {
        (Method::GET, Target::Version) => {
            Ok(json_response(StatusCode::OK, &crate::discovery::version()))
        }
        (Method::GET, Target::Metrics) => {
            let Some(text) = api.metrics.get() else {
                return Err(not_found_path(&path));
            };
            if !crate::rbac::allows_path(&api.storage, user, "get", "/metrics").await? {
                return Err(ApiError::Forbidden(format!(
                    "forbidden: User \"{}\" cannot get path \"/metrics\"",
                    user.name
                )));
            }
            Ok((
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                (text.0)(),
            )
                .into_response())
        }
        (_, Target::Health(endpoint, check)) => {
            Ok(crate::health::answer(&api, &endpoint, check.as_deref(), parts.uri.query()).await)
        }
        (Method::GET, Target::ApiVersions) => Ok(discovery_response(&parts.headers, true)),
        (Method::GET, Target::ApiGroups) => Ok(discovery_response(&parts.headers, false)),
        (Method::GET, Target::OpenApiV2) => Ok((
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                // What Kubernetes answers: the requested type is not valid MIME.
                "application/octet-stream",
            )],
            crate::openapi::v2_protobuf(),
        )
            .into_response()),
        (Method::GET, Target::OpenApiV3Root) => {
            Ok(json_response(StatusCode::OK, &crate::openapi::v3_root()))
        }
        (Method::GET, Target::OpenApiV3(gv)) => match crate::openapi::v3_group_version(&gv) {
            Some(doc) => Ok(json_response(StatusCode::OK, &doc)),
            None => Err(not_found_path(&path)),
        },
        (Method::GET, Target::Resources(g, v)) => Ok(json_response(
            StatusCode::OK,
            &crate::discovery::resource_list(g, v),
        )),
        (Method::GET, Target::Collection(res, ns)) if query.watch => {
            watch(&api, res, ns.as_deref(), &query, table).await
        }
        (Method::GET, Target::Collection(res, ns)) => {
            // A list at exactly one revision is the store's to serve (the cache only holds
            // the present); one compacted away is 410 Expired.
            let at = if query.exact {
                crate::registry::parse_resource_version(&query.resource_version)
                    .map_err(ApiError::BadRequest)?
            } else {
                0
            };
            if at == 0 {
                if let Some(r) = cached_list(&api, res, ns.as_deref(), &query, table).await? {
                    return Ok(r);
                }
            }
            // The store serves pages, all at the first page's revision; without a limit the
            // first page is everything.
            let (items, rv, next, remaining) = api
                .storage
                .list_page(
                    res,
                    ns.as_deref(),
                    query.limit,
                    query.continue_token.as_deref(),
                    at,
                )
                .await?;
            let items: Vec<Value> = items.into_iter().filter(|o| selected(&query, o)).collect();
            let mut list = if table {
                table::table(res.kind, &items, Some(rv), query.include_object)
            } else {
                json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                       "metadata": {"resourceVersion": rv.to_string()}, "items": items})
            };
            if let Some(next) = next {
                list["metadata"]["continue"] = json!(next);
                list["metadata"]["remainingItemCount"] = json!(remaining.unwrap_or(0));
            }
            Ok(json_response(StatusCode::OK, &list))
        }
        (Method::POST, Target::Collection(res, ns)) => {
            let obj = parse_body(format, &read_body(body).await?)?;
            let change = change_by(res, None)?;
            let created =
                create_object(&api, res, ns.as_deref(), obj, &query, Some(&change)).await?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::GET, Target::Object(res, Some(ns), name, Some(sub)))
            if res.kind == "Pod" && sub == "log" =>
        {
            crate::node_proxy::log(&api, &ns, &name, parts.uri.query()).await
        }
        (Method::GET | Method::POST, Target::Object(res, Some(ns), name, Some(sub)))
            if res.kind == "Pod" && (sub == "exec" || sub == "attach") =>
        {
            let req = Request::from_parts(parts, body);
            crate::node_proxy::stream(&api, &ns, &name, &sub, req).await
        }
        (Method::POST, Target::Object(res, Some(ns), name, Some(sub)))
            if res.kind == "Pod" && sub == "eviction" =>
        {
            evict(
                &api,
                res,
                &ns,
                &name,
                parse_body(format, &read_body(body).await?)?,
                parts.uri.query(),
            )
            .await
        }
        (Method::GET, Target::Object(res, ns, name, Some(sub)))
            if sub == "scale" && res.has_scale() =>
        {
            let obj = api.storage.get(res, ns.as_deref(), &name).await?;
            let scale = scale_of(&obj);
            if table {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table("Scale", &[scale], None, query.include_object),
                ));
            }
            Ok(json_response(StatusCode::OK, &scale))
        }
        (m @ (Method::PUT | Method::PATCH), Target::Object(res, ns, name, Some(sub)))
            if sub == "scale" && res.has_scale() =>
        {
            let body = parse_json(&read_body(body).await?)?;
            for _ in 0..5 {
                let current = api.storage.get(res, ns.as_deref(), &name).await?;
                let scale = if m == Method::PUT {
                    body.clone()
                } else {
                    objects::apply_patch(&content_type, &scale_of(&current), &body)?
                };
                let replicas = scale
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| ApiError::Invalid {
                        kind: "Scale".into(),
                        name: name.clone(),
                        causes: vec![("spec.replicas".into(), "Required value: an integer".into())],
                    })?;
                if replicas < 0 {
                    return Err(ApiError::Invalid {
                        kind: "Scale".into(),
                        name: name.clone(),
                        causes: vec![(
                            "spec.replicas".into(),
                            format!(
                                "Invalid value: {replicas}: must be greater than or equal to 0"
                            ),
                        )],
                    });
                }
                let mut next = current.clone();
                next["spec"]["replicas"] = json!(replicas);
                if let Some(rv) = scale
                    .pointer("/metadata/resourceVersion")
                    .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
                {
                    next["metadata"]["resourceVersion"] = rv.clone();
                }
                let mut next =
                    objects::prepare_update(res, ns.as_deref(), &name, None, &current, next)?;
                managed::record_update(Some(&current), &mut next, &change_by(res, Some("scale"))?)?;
                match api.storage.update(res, ns.as_deref(), &next).await {
                    Err(ApiError::Conflict { .. }) if m == Method::PATCH => continue,
                    other => return Ok(json_response(StatusCode::OK, &scale_of(&other?))),
                }
            }
            Err(ApiError::Conflict {
                kind: res.plural.into(),
                name,
            })
        }
        (Method::POST, Target::Object(res, Some(ns), name, Some(sub)))
            if sub == "binding" && res.kind == "Pod" =>
        {
            let binding = parse_body(format, &read_body(body).await?)?;
            bind_pod(&api, res, &ns, &name, &binding).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success", "code": 201}),
            ))
        }
        (Method::POST, Target::Object(res, Some(ns), name, Some(sub)))
            if sub == "token" && res.kind == "ServiceAccount" =>
        {
            let signer = api.tokens.as_ref().ok_or_else(|| {
                ApiError::Forbidden("this API server has no service-account signing key".into())
            })?;
            let req = parse_body(format, &read_body(body).await?)?;
            let sa = api.storage.get(res, Some(&ns), &name).await?;
            let uid = sa
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            let audiences: Vec<String> = req
                .pointer("/spec/audiences")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let ttl = req
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_i64);
            let (token, exp) = signer.issue(&ns, &name, uid, ttl, &audiences);
            let expiry = jiff::Timestamp::from_second(exp)
                .map(|t| t.to_string())
                .unwrap_or_default();
            Ok(json_response(
                StatusCode::CREATED,
                &json!({
                    "kind": "TokenRequest",
                    "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
                    "spec": {"audiences": audiences, "expirationSeconds": ttl.unwrap_or(3600), "boundObjectRef": null},
                    "status": {"token": token, "expirationTimestamp": expiry},
                }),
            ))
        }
        // The status and ephemeralcontainers subresources read the whole object, as
        // Kubernetes' do.
        (Method::GET, Target::Object(res, ns, name, sub))
            if sub.is_none()
                || sub.as_deref() == Some("status")
                || (sub.as_deref() == Some("ephemeralcontainers") && res.kind == "Pod") =>
        {
            let obj = api.storage.get(res, ns.as_deref(), &name).await?;
            if table {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(res.kind, &[obj], None, query.include_object),
                ));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::PUT, Target::Object(res, ns, name, sub)) => {
            let obj = parse_body(format, &read_body(body).await?)?;
            let current = api.storage.get(res, ns.as_deref(), &name).await?;
            let mut obj =
                objects::prepare_update(res, ns.as_deref(), &name, sub.as_deref(), &current, obj)?;
            warn(crate::validation::check(
                res.kind,
                &mut obj,
                query.field_validation,
            )?);
            managed::record_update(Some(&current), &mut obj, &change_by(res, sub.as_deref())?)?;
            if unchanged(&current, &obj) {
                let current = finish_deletion(&api, res, ns.as_deref(), current).await?;
                return Ok(json_response(StatusCode::OK, &current));
            }
            if let Some(dry) = admit_update(&api, res, &ns, &sub, &current, &obj, &query).await? {
                return Ok(dry);
            }
            let updated = api.storage.update(res, ns.as_deref(), &obj).await?;
            let updated = finish_deletion(&api, res, ns.as_deref(), updated).await?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        (Method::PATCH, Target::Object(res, ns, name, sub)) => {
            let patch = parse_body(format, &read_body(body).await?)?;
            let apply = content_type == objects::APPLY_PATCH;
            if apply && query.field_manager.as_deref().unwrap_or("").is_empty() {
                return Err(ApiError::BadRequest(
                    "PATCH with application/apply-patch+yaml requires the fieldManager parameter"
                        .into(),
                ));
            }
            if query.force && !apply {
                return Err(ApiError::BadRequest(
                    "force is only valid for server-side apply (application/apply-patch+yaml)"
                        .into(),
                ));
            }
            let change = change_by(res, sub.as_deref())?;
            // Retry on conflicts: a patch applies to whatever is current.
            for _ in 0..5 {
                let current = match api.storage.get(res, ns.as_deref(), &name).await {
                    // Server-side apply creates what is not there yet.
                    Err(ApiError::NotFound { .. }) if apply && sub.is_none() => {
                        let config = applied_object(&name, &patch)?;
                        let obj = managed::apply(&Value::Null, &config, &change, query.force)?;
                        match create_object(&api, res, ns.as_deref(), obj, &query, None).await {
                            Err(ApiError::AlreadyExists { .. }) => continue,
                            other => return Ok(json_response(StatusCode::CREATED, &other?)),
                        }
                    }
                    other => other?,
                };
                let patched = if apply {
                    managed::apply(&current, &patch, &change, query.force)?
                } else {
                    objects::apply_patch(&content_type, &current, &patch)?
                };
                let mut obj = objects::prepare_update(
                    res,
                    ns.as_deref(),
                    &name,
                    sub.as_deref(),
                    &current,
                    patched,
                )?;
                warn(crate::validation::check(
                    res.kind,
                    &mut obj,
                    query.field_validation,
                )?);
                if !apply {
                    managed::record_update(Some(&current), &mut obj, &change)?;
                }
                if unchanged(&current, &obj) {
                    let current = finish_deletion(&api, res, ns.as_deref(), current).await?;
                    return Ok(json_response(StatusCode::OK, &current));
                }
                let admitted = admit_update(&api, res, &ns, &sub, &current, &obj, &query).await?;
                if let Some(dry) = admitted {
                    return Ok(dry);
                }
                match api.storage.update(res, ns.as_deref(), &obj).await {
                    Err(ApiError::Conflict { .. })
                        if resource_version(&patch_rv(&patch)).unwrap_or(0) == 0 =>
                    {
                        continue
                    }
                    other => {
                        let updated = finish_deletion(&api, res, ns.as_deref(), other?).await?;
                        return Ok(json_response(StatusCode::OK, &updated));
                    }
                }
            }
            Err(ApiError::Conflict {
                kind: res.plural.into(),
                name,
            })
        }
        (Method::DELETE, Target::Object(res, ns, name, None)) => {
            let opts = delete_options(body, parts.uri.query()).await?;
            if res.kind == "Namespace" {
                if matches!(name.as_str(), "default" | "kube-system" | "kube-public") {
                    return Err(ApiError::Forbidden(format!(
                        "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
                    )));
                }
                if opts.dry_run {
                    let current = api.storage.get(res, None, &name).await?;
                    return Ok(json_response(StatusCode::OK, &current));
                }
                // The namespace controller empties it and removes the `kubernetes` finalizer.
                let marked = mark_terminating(&api, res, &name).await?;
                if has_spec_finalizers(&marked) {
                    return Ok(json_response(StatusCode::OK, &marked));
                }
            }
            let gone = delete_object(&api, res, ns.as_deref(), &name, &opts).await?;
            Ok(json_response(StatusCode::OK, &gone))
        }
        (Method::DELETE, Target::Collection(res, ns)) => {
            if res.kind == "Namespace" {
                return Err(ApiError::MethodNotAllowed(
                    "namespaces are deleted one by one (deletecollection is not served for them)"
                        .into(),
                ));
            }
            let opts = delete_options(body, parts.uri.query()).await?;
            let (items, _) = list(&api, res, ns.as_deref(), &query).await?;
            let mut deleted = Vec::new();
            // Each object goes as a delete of it would: finalizers, graceful pod deletion,
            // propagation policy and dry run included.
            for item in items {
                let item_ns = item.pointer("/metadata/namespace").and_then(Value::as_str);
                match delete_object(&api, res, item_ns, object_name(&item), &opts).await {
                    Ok(o) => deleted.push(o),
                    Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                        "metadata": {}, "items": deleted}),
            ))
        }
        (m, _) => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow method {m} on {path}"
        ))),
    }
}

/// The admission of an update (or patch) that passed validation: ResourceQuota charges what
/// the main resource's change adds. On a dry run this is the end: the answer is the object as
/// it would be stored, and nothing is written.
async fn admit_update<B: Backend>(
    api: &Api<B>,
    res: &'static Resource,
    ns: &Option<String>,
    sub: &Option<String>,
    current: &Value,
    obj: &Value,
    query: &Query,
) -> Result<Option<Response>, ApiError> {
    if let (Some(ns), None) = (ns.as_deref(), sub.as_deref()) {
        admit_quota(api, res, ns, Some(current), obj, query.dry_run).await?;
    }
    Ok(query.dry_run.then(|| json_response(StatusCode::OK, obj)))
}

/// The autoscaling/v1 Scale of a scalable object.
fn scale_of(obj: &Value) -> Value {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let labels = crate::selectors::spec_selector(obj, kind)
        .map(|s| crate::selectors::selector_string(&s))
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj.pointer("/metadata/name"),
            "namespace": obj.pointer("/metadata/namespace"),
            "uid": obj.pointer("/metadata/uid"),
            "resourceVersion": obj.pointer("/metadata/resourceVersion"),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": labels,
        },
    })
}

/// Whether `next` would store nothing new over `current` (and names no other
/// resourceVersion): such an update is answered without a write, so the object keeps its
/// resourceVersion and watchers see no event — as Kubernetes does, and what keeps
/// level-triggered controllers that write the same status from waking themselves up.
fn unchanged(current: &Value, next: &Value) -> bool {
    let rv = |v: &Value| {
        v.pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let wanted = rv(next);
    if !wanted.is_empty() && wanted != rv(current) {
        return false;
    }
    let without_rv = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    without_rv(current) == without_rv(next)
}

fn patch_rv(patch: &Value) -> Value {
    json!({"metadata": {"resourceVersion": patch.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))}})
}

/// What a delete asks for (DeleteOptions in the body, or query parameters).
#[derive(Debug, Default)]
struct DeleteOptions {
    /// `preconditions.resourceVersion`.
    resource_version: Option<u64>,
    /// `preconditions.uid`.
    uid: Option<String>,
    /// `gracePeriodSeconds`.
    grace_period: Option<i64>,
    /// `propagationPolicy` (or the older `orphanDependents`): Orphan, Background or Foreground.
    propagation: Option<String>,
    /// `dryRun: [All]` (body) or `dryRun=All` (query): check everything, write nothing.
    dry_run: bool,
}

/// The finalizer through which the garbage collector carries out a propagation policy, if the
/// policy needs one (Background needs none: the object goes and the collector follows).
fn propagation_finalizer(policy: Option<&str>) -> Option<&'static str> {
    match policy {
        Some("Orphan") => Some("orphan"),
        Some("Foreground") => Some("foregroundDeletion"),
        _ => None,
    }
}

fn check_propagation(policy: &str) -> Result<(), ApiError> {
    if matches!(policy, "Orphan" | "Background" | "Foreground") {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "propagationPolicy: Unsupported value: {policy:?}: supported values: \"Orphan\", \"Background\", \"Foreground\""
        )))
    }
}

async fn delete_options(body: Body, query: Option<&str>) -> Result<DeleteOptions, ApiError> {
    let bytes = read_body(body).await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        parse_json(&bytes)?
    };
    delete_options_of(&body, query)
}

/// The DeleteOptions in `body` (JSON; null: none), with the query's parameters over them.
fn delete_options_of(body: &Value, query: Option<&str>) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions {
        resource_version: match body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv) => {
                Some(crate::registry::parse_resource_version(rv).map_err(ApiError::BadRequest)?)
            }
            None => None,
        },
        uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        grace_period: body.get("gracePeriodSeconds").and_then(Value::as_i64),
        propagation: match (
            body.get("propagationPolicy").and_then(Value::as_str),
            body.get("orphanDependents").and_then(Value::as_bool),
        ) {
            (Some(p), _) => Some(p.to_string()),
            (None, Some(true)) => Some("Orphan".into()),
            (None, Some(false)) => Some("Background".into()),
            (None, None) => None,
        },
        dry_run: dry_run_of(body.get("dryRun"))?,
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "gracePeriodSeconds" => {
                opts.grace_period = Some(v.parse().map_err(|_| {
                    ApiError::BadRequest(format!("gracePeriodSeconds {v:?} is not a number"))
                })?);
            }
            "propagationPolicy" => opts.propagation = Some(v.to_string()),
            "orphanDependents" if v == "true" => opts.propagation = Some("Orphan".into()),
            "dryRun" => opts.dry_run |= dry_run_of(Some(&json!([v])))?,
            _ => {}
        }
    }
    if let Some(p) = &opts.propagation {
        check_propagation(p)?;
    }
    Ok(opts)
}

/// `DeleteOptions.dryRun`: absent or empty is a real delete, `["All"]` a dry run; any other
/// value is refused, as Kubernetes refuses it.
fn dry_run_of(v: Option<&Value>) -> Result<bool, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(false);
    };
    let values = v
        .as_array()
        .ok_or_else(|| ApiError::BadRequest("dryRun must be a list such as [\"All\"]".into()))?;
    let mut dry = false;
    for d in values {
        match d.as_str() {
            Some("All") => dry = true,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unsupported dryRun value {d}: the only supported value is \"All\""
                )))
            }
        }
    }
    Ok(dry)
}

/// Deletes an object as Kubernetes does: an object with finalizers only gets a
/// `deletionTimestamp` (it goes when its finalizers are removed); a pod bound to a node is
/// deleted gracefully (`deletionTimestamp` = now + grace period, for its node agent to stop
/// it) unless the grace period is 0; anything else goes at once. Propagation policies
/// Orphan and Foreground add the `orphan` or `foregroundDeletion` finalizer, which the
/// garbage collector removes once it has released or deleted the dependents. A dry run
/// checks the same and returns what the delete would, writing nothing.
async fn delete_object<B: Backend>(
    api: &Api<B>,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    for _ in 0..5 {
        let current = api.storage.get(res, ns, name).await?;
        let rv = resource_version(&current)?;
        let conflict = || ApiError::Conflict {
            kind: res.plural.into(),
            name: name.into(),
        };
        if opts.resource_version.is_some_and(|want| want != rv) {
            return Err(conflict());
        }
        if let Some(uid) = &opts.uid {
            if current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                return Err(conflict());
            }
        }
        let mut finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let mut current = current;
        // Pods own nothing here: their policy is moot.
        let propagate = propagation_finalizer(opts.propagation.as_deref()).filter(|_| {
            res.kind != "Pod" && current.pointer("/metadata/deletionTimestamp").is_none()
        });
        if let Some(f) = propagate {
            let list = current["metadata"]
                .as_object_mut()
                .map(|m| m.entry("finalizers").or_insert_with(|| json!([])));
            if let Some(Value::Array(list)) = list {
                if !list.iter().any(|x| x == f) {
                    list.push(json!(f));
                }
            }
            finalizers = true;
        }
        let grace = opts.grace_period.unwrap_or_else(|| {
            current
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        let graceful = res.kind == "Pod"
            && grace > 0
            && current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
        if finalizers || graceful {
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(current);
            }
            let mut marked = current.clone();
            let wait = if graceful { grace } else { 0 };
            let at = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(wait))
                .unwrap_or_else(|_| jiff::Timestamp::now());
            marked["metadata"]["deletionTimestamp"] =
                json!(at.round(jiff::Unit::Second).unwrap_or(at).to_string());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(wait);
            if opts.dry_run {
                return Ok(marked);
            }
            match api.storage.update(res, ns, &marked).await {
                Err(ApiError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        if opts.dry_run {
            return Ok(current);
        }
        match api.storage.delete(res, ns, name, Some(rv)).await {
            Err(ApiError::Conflict { .. }) => continue,
            Ok(gone) if res.kind == "Service" => {
                api.storage
                    .release(&crate::allocate::claims_of(&gone))
                    .await?;
                return Ok(gone);
            }
            other => return other,
        }
    }
    Err(ApiError::Conflict {
        kind: res.plural.into(),
        name: name.into(),
    })
}

/// `POST pods/<name>/eviction`: an Eviction (policy/v1 or v1beta1) deletes the pod with its
/// `deleteOptions`, as `kubectl drain` asks. There are no PodDisruptionBudgets to consult.
async fn evict<B: Backend>(
    api: &Api<B>,
    res: &'static Resource,
    ns: &str,
    name: &str,
    eviction: Value,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let invalid = |field: &str, msg: String| ApiError::Invalid {
        kind: "Eviction".into(),
        name: name.into(),
        causes: vec![(field.into(), msg)],
    };
    if eviction["kind"] != "Eviction"
        || !matches!(
            eviction["apiVersion"].as_str(),
            Some("policy/v1" | "policy/v1beta1")
        )
    {
        return Err(ApiError::BadRequest(format!(
            "the body of pods/eviction must be a policy/v1 Eviction, not {} {}",
            eviction["apiVersion"], eviction["kind"]
        )));
    }
    match eviction.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n == name => {}
        other => {
            return Err(invalid(
                "metadata.name",
                format!("Invalid value: {other:?}: name in URL does not match name in Eviction"),
            ))
        }
    }
    let opts = delete_options_of(eviction.get("deleteOptions").unwrap_or(&Value::Null), query)?;
    let pod = api.storage.get(res, Some(ns), name).await?;
    take_disruption(api, ns, &pod).await?;
    delete_object(api, res, Some(ns), name, &opts).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "code": 201}),
    ))
}

/// Before an eviction: the pod's PodDisruptionBudget, if it has one, must allow a disruption
/// now; the eviction takes it (`disruptionsAllowed` one less, the pod listed in
/// `disruptedPods` until it is gone), as Kubernetes' eviction does. Pods that are not running
/// (pending, finished) or already terminating go without asking.
async fn take_disruption<B: Backend>(api: &Api<B>, ns: &str, pod: &Value) -> Result<(), ApiError> {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    if pod.pointer("/metadata/deletionTimestamp").is_some()
        || matches!(phase, Some("Pending" | "Succeeded" | "Failed"))
    {
        return Ok(());
    }
    let pdbs = crate::resources::find("policy", "v1", "poddisruptionbudgets")
        .expect("PodDisruptionBudgets are served");
    let labels = pod
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    for _ in 0..5 {
        let (items, _) = api.storage.list(pdbs, Some(ns)).await?;
        let mine: Vec<&Value> = items
            .iter()
            .filter(|b| {
                // policy/v1: no selector selects nothing, an empty one every pod.
                b.pointer("/spec/selector")
                    .is_some_and(|s| s.is_object() && crate::specs::selects_labels(s, &labels))
            })
            .collect();
        let budget = match mine.as_slice() {
            [] => return Ok(()),
            [one] => (*one).clone(),
            _ => {
                return Err(ApiError::Internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction \
                     subresource does not support."
                        .into(),
                ))
            }
        };
        let budget_name = budget["metadata"]["name"].as_str().unwrap_or_default();
        let generation = budget
            .pointer("/metadata/generation")
            .and_then(Value::as_i64);
        let observed = budget
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64);
        if observed.is_none() || observed < generation {
            return Err(ApiError::DisruptionBudget {
                why: format!(
                    "the disruption budget {budget_name} is still being processed by the server"
                ),
            });
        }
        let allowed = budget
            .pointer("/status/disruptionsAllowed")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if allowed < 1 {
            let n = |p: &str| budget.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            return Err(ApiError::DisruptionBudget {
                why: format!(
                    "The disruption budget {budget_name} needs {} healthy pods and has {} \
                     currently",
                    n("/status/desiredHealthy"),
                    n("/status/currentHealthy")
                ),
            });
        }
        let mut next = budget.clone();
        next["status"]["disruptionsAllowed"] = json!(allowed - 1);
        next["status"]["disruptedPods"][name] = json!(jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string());
        match api.storage.update(pdbs, Some(ns), &next).await {
            Err(ApiError::Conflict { .. }) => continue,
            other => return other.map(|_| ()),
        }
    }
    Err(ApiError::DisruptionBudget {
        why: "the disruption budget kept changing; try again".into(),
    })
}

/// After an update: an object marked for deletion whose finalizers are all gone is deleted.
async fn finish_deletion<B: Backend>(
    api: &Api<B>,
    res: &Resource,
    ns: Option<&str>,
    updated: Value,
) -> Result<Value, ApiError> {
    let marked = updated.pointer("/metadata/deletionTimestamp").is_some();
    let finalizers = updated
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let namespace_held = res.kind == "Namespace" && has_spec_finalizers(&updated);
    if !marked || finalizers || namespace_held || res.kind == "Pod" {
        return Ok(updated);
    }
    let name = updated
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match api
        .storage
        .delete(res, ns, name, Some(resource_version(&updated)?))
        .await
    {
        Ok(_) | Err(ApiError::NotFound { .. }) => Ok(updated),
        Err(e) => Err(e),
    }
}

async fn require_namespace<B: Backend>(api: &Api<B>, ns: &str) -> Result<(), ApiError> {
    let res = resources::find("", "v1", "namespaces").expect("namespaces are served");
    // A namespace the cache knows and that is not terminating exists (namespaces are
    // deleted through a Terminating phase); anything else is checked in the store.
    let cached = api.caches.current(res).and_then(|c| c.get(None, ns));
    if cached.is_some_and(|n| {
        n.value.pointer("/status/phase").and_then(Value::as_str) != Some("Terminating")
    }) {
        return Ok(());
    }
    match api.storage.get(res, None, ns).await {
        Ok(n) if n.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") => {
            Err(ApiError::Forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )))
        }
        Ok(_) => Ok(()),
        Err(ApiError::NotFound { .. }) => Err(ApiError::NotFound {
            kind: "namespaces".into(),
            name: ns.into(),
        }),
        Err(e) => Err(e),
    }
}

/// `pods/<name>/binding`: assigns the pod to the node the Binding names (what schedulers do).
/// A pod bound already is 409 with Kubernetes' message; the pod gets its PodScheduled
/// condition.
async fn bind_pod<B: Backend>(
    api: &Api<B>,
    res: &Resource,
    ns: &str,
    name: &str,
    binding: &Value,
) -> Result<(), ApiError> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::Invalid {
            kind: "Binding".into(),
            name: name.into(),
            causes: vec![("target.name".into(), "Required value".into())],
        })?
        .to_string();
    let want_uid = binding.pointer("/metadata/uid").and_then(Value::as_str);
    // The first read may come from this master's applied state (the write below compares the
    // resourceVersion, so a stale read only costs a retry); a retry reads through the leader.
    let mut fresh = false;
    loop {
        let mut pod = if fresh {
            api.storage.get(res, Some(ns), name).await?
        } else {
            match api.storage.get_local(res, Some(ns), name).await {
                Ok(p) => p,
                // Maybe not applied here yet: ask the leader.
                Err(ApiError::NotFound { .. }) => api.storage.get(res, Some(ns), name).await?,
                Err(e) => return Err(e),
            }
        };
        let was_fresh = std::mem::replace(&mut fresh, true);
        if want_uid
            .is_some_and(|uid| pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid))
        {
            if !was_fresh {
                continue;
            }
            return Err(ApiError::Conflict {
                kind: "pods".into(),
                name: name.into(),
            });
        }
        match pod.pointer("/spec/nodeName").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => {
                return Err(ApiError::AlreadyBound {
                    pod: name.into(),
                    node: n.into(),
                })
            }
            _ => {}
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::Conflict {
                kind: "pods".into(),
                name: name.into(),
            });
        }
        pod["spec"]["nodeName"] = json!(node);
        let now = jiff::Timestamp::now();
        let now = now.round(jiff::Unit::Second).unwrap_or(now).to_string();
        let conditions = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .chain([
                json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                           "lastTransitionTime": now}),
            ])
            .collect::<Vec<_>>();
        pod["status"]["conditions"] = json!(conditions);
        match api.storage.update(res, Some(ns), &pod).await {
            Err(ApiError::Conflict { .. }) => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// Puts namespace `name` in the Terminating phase (with its deletion timestamp), so that no
/// master accepts new content in it while the namespace controller deletes what is there;
/// returns it as stored.
async fn mark_terminating<B: Backend>(
    api: &Api<B>,
    res: &Resource,
    name: &str,
) -> Result<Value, ApiError> {
    loop {
        let mut ns = api.storage.get(res, None, name).await?;
        if ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
            return Ok(ns);
        }
        let now = jiff::Timestamp::now();
        ns["metadata"]["deletionTimestamp"] =
            json!(now.round(jiff::Unit::Second).unwrap_or(now).to_string());
        ns["status"]["phase"] = json!("Terminating");
        match api.storage.update(res, None, &ns).await {
            Err(ApiError::Conflict { .. }) => continue,
            other => return other,
        }
    }
}

/// The Priority admission: a pod's `priorityClassName` (else the global default class, if
/// any) sets `spec.priority` and `spec.preemptionPolicy`; an unknown class is 403, a
/// priority set by hand that differs from the class's is 403, as in Kubernetes.
async fn admit_priority<B: Backend>(api: &Api<B>, pod: &mut Value) -> Result<(), ApiError> {
    let res = resources::find("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses are served");
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let forbidden =
        |why: String| ApiError::Forbidden(format!("pods \"{name}\" is forbidden: {why}"));
    let wanted = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(String::from);
    let class = match &wanted {
        Some(c) => match api.storage.get(res, None, c).await {
            Ok(pc) => Some(pc),
            Err(ApiError::NotFound { .. }) => {
                return Err(forbidden(format!(
                    "no PriorityClass with name {c} was found"
                )))
            }
            Err(e) => return Err(e),
        },
        None => {
            let cached = api.caches.current(res).map(|c| c.list(None).0);
            let classes: Vec<Value> = match cached {
                Some(items) => items.into_iter().map(|o| o.value.clone()).collect(),
                None => api.storage.list(res, None).await?.0,
            };
            classes
                .into_iter()
                .find(|pc| pc.get("globalDefault") == Some(&json!(true)))
        }
    };
    let (value, policy) = match &class {
        Some(pc) => (
            pc.get("value").and_then(Value::as_i64).unwrap_or(0),
            pc.get("preemptionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
        ),
        None => (0, "PreemptLowerPriority".to_string()),
    };
    if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64) {
        if given != value {
            return Err(forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
    }
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("priority".into(), json!(value));
        spec.entry("preemptionPolicy").or_insert(json!(policy));
        if let (Some(pc), None) = (&class, &wanted) {
            spec.insert("priorityClassName".into(), pc["metadata"]["name"].clone());
        }
    }
    Ok(())
}

/// Creates `obj` as a new `res` in `ns` through admission (defaults, priority, limit ranges,
/// validation, quota, Service addresses); a dry run stops before the write. `change` is the
/// create's field manager; `None` when `obj` carries its managedFields already (an apply).
async fn create_object<B: Backend>(
    api: &Api<B>,
    res: &'static Resource,
    ns: Option<&str>,
    obj: Value,
    query: &Query,
    change: Option<&managed::Change>,
) -> Result<Value, ApiError> {
    if let Some(ns) = ns {
        require_namespace(api, ns).await?;
    }
    let mut obj = objects::prepare_create(res, ns, obj)?;
    if let Some(change) = change {
        managed::record_update(None, &mut obj, change)?;
    }
    if res.kind == "Pod" {
        admit_priority(api, &mut obj).await?;
        if let Some(ns) = ns {
            admit_limit_ranges(api, ns, &mut obj).await?;
        }
    }
    warn(crate::validation::check(
        res.kind,
        &mut obj,
        query.field_validation,
    )?);
    if let Some(ns) = ns {
        admit_quota(api, res, ns, None, &obj, query.dry_run).await?;
    }
    if query.dry_run {
        return Ok(obj);
    }
    if res.kind == "Service" {
        crate::allocate::create_service(&api.storage, res, ns, obj).await
    } else {
        api.storage.create(res, ns, &obj).await
    }
}

/// The object a server-side apply creates when there is none yet: the applied configuration,
/// which must name the kind and be the object the URL names.
fn applied_object(name: &str, patch: &Value) -> Result<Value, ApiError> {
    if patch.get("apiVersion").is_none() || patch.get("kind").is_none() {
        return Err(ApiError::BadRequest(
            "an applied configuration must set apiVersion and kind".into(),
        ));
    }
    let mut obj = patch.clone();
    match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n != name => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )))
        }
        Some(_) => {}
        None => {
            if !obj.get("metadata").is_some_and(Value::is_object) {
                obj["metadata"] = json!({});
            }
            obj["metadata"]["name"] = json!(name);
        }
    }
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    Ok(obj)
}

/// Every object of `res` in `ns`: from this master's cache once it has loaded (it may trail
/// the store by moments, as an informer does), else from the store.
async fn objects_in<B: Backend>(
    api: &Api<B>,
    res: &'static Resource,
    ns: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    match api.caches.current(res) {
        Some(cache) => Ok(cache
            .list(ns)
            .0
            .into_iter()
            .map(|e| e.value.clone())
            .collect()),
        None => Ok(api.storage.list(res, ns).await?.0),
    }
}

fn object_name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The LimitRanger admission: containers get the requests and limits the namespace's
/// LimitRanges default to, and a pod outside their bounds is 403, as in Kubernetes.
async fn admit_limit_ranges<B: Backend>(
    api: &Api<B>,
    ns: &str,
    pod: &mut Value,
) -> Result<(), ApiError> {
    let res = resources::find("", "v1", "limitranges").expect("limitranges are served");
    let ranges = objects_in(api, res, Some(ns)).await?;
    if ranges.is_empty() {
        return Ok(());
    }
    flotilla_quota::limits::apply_defaults(pod, &ranges);
    let errors = flotilla_quota::limits::violations(pod, &ranges);
    if !errors.is_empty() {
        let why = match errors.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        return Err(ApiError::Forbidden(format!(
            "pods \"{}\" is forbidden: {why}",
            object_name(pod)
        )));
    }
    pod["status"]["qosClass"] = json!(flotilla_quota::qos_class(pod));
    Ok(())
}

/// What the objects of `ns` use of `quota`, counted from the store.
async fn quota_usage<B: Backend>(
    api: &Api<B>,
    ns: &str,
    quota: &Value,
) -> Result<flotilla_quota::usage::Amounts, ApiError> {
    let hard = flotilla_quota::usage::hard(quota);
    let mut objects: Vec<(&'static Resource, Vec<Value>)> = Vec::new();
    for (plural, group) in flotilla_quota::usage::counted_kinds(hard.keys()) {
        // Kinds not served here (persistent volume claims, …) have no objects.
        if let Some(r) = resources::RESOURCES
            .iter()
            .find(|r| r.plural == plural && r.group == group)
        {
            objects.push((r, api.storage.list(r, Some(ns)).await?.0));
        }
    }
    Ok(flotilla_quota::usage::used(
        quota,
        objects
            .iter()
            .flat_map(|(r, objs)| objs.iter().map(|o| (r.plural, r.group, o))),
    ))
}

/// The ResourceQuota admission: object `obj` (a new `res` in `ns`, or with `old` an updated
/// one, charged for what grew) is charged to every quota of the namespace that limits what it
/// uses. Each charge is a compare-and-swap of the quota's
/// `status.used` in the store (retried on conflict), so masters admitting at once cannot
/// together exceed a quota; a quota whose usage is not yet known (new, or changed limits) is
/// counted first. Over the limit → 403 with what was requested, used and limited. A charge
/// whose object is then not created (a later refusal) is given back when the quota controller
/// counts again.
async fn admit_quota<B: Backend>(
    api: &Api<B>,
    res: &'static Resource,
    ns: &str,
    old: Option<&Value>,
    obj: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    use flotilla_quota::usage;
    let quotas = resources::find("", "v1", "resourcequotas").expect("resourcequotas are served");
    let kind = (res.plural.to_string(), res.group.to_string());
    for cached in objects_in(api, quotas, Some(ns)).await? {
        if !usage::counted_kinds(usage::hard(&cached).keys()).contains(&kind) {
            continue;
        }
        let qname = object_name(&cached).to_string();
        let mut attempts = 0;
        loop {
            let current = match api.storage.get(quotas, Some(ns), &qname).await {
                Ok(q) => q,
                Err(ApiError::NotFound { .. }) => break,
                Err(e) => return Err(e),
            };
            let hard = current.pointer("/spec/hard").cloned().unwrap_or(json!({}));
            let known = current.pointer("/status/hard") == Some(&hard)
                && current.pointer("/status/used").is_some();
            let used = if known {
                usage::amounts(current.pointer("/status/used"))
            } else {
                quota_usage(api, ns, &current).await?
            };
            let next = match old {
                None => usage::admit(&current, &qname, &used, res.plural, res.group, obj),
                Some(old) => {
                    usage::admit_change(&current, &qname, &used, res.plural, res.group, old, obj)
                }
            }
            .map_err(|why| {
                ApiError::Forbidden(format!(
                    "{} \"{}\" is forbidden: {why}",
                    res.plural,
                    object_name(obj)
                ))
            })?;
            if dry_run {
                break;
            }
            let mut updated = current.clone();
            updated["status"] = json!({"hard": hard, "used": usage::to_json(&next)});
            if updated == current {
                break;
            }
            match api.storage.update(quotas, Some(ns), &updated).await {
                Ok(_) => break,
                Err(ApiError::Conflict { .. }) if attempts < 20 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Whether a namespace still has `spec.finalizers` (only `finalize` removes them).
fn has_spec_finalizers(ns: &Value) -> bool {
    ns.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn selected(q: &Query, obj: &Value) -> bool {
    q.label_selector
        .as_ref()
        .is_none_or(|s| s.matches(obj.pointer("/metadata/labels")))
        && q.field_selector.as_ref().is_none_or(|s| s.matches(obj))
}

async fn list<B: Backend>(
    api: &Api<B>,
    res: &Resource,
    ns: Option<&str>,
    q: &Query,
) -> Result<(Vec<Value>, u64), ApiError> {
    let (items, rv) = api.storage.list(res, ns).await?;
    Ok((items.into_iter().filter(|o| selected(q, o)).collect(), rv))
}

/// The revision a read must reflect: the store's current one (read through Raft) when the
/// request names no resourceVersion, else the one it names ("0": any).
async fn min_revision<B: Backend>(api: &Api<B>, q: &Query) -> Result<u64, ApiError> {
    if q.resource_version.is_empty() {
        api.storage.revision().await
    } else {
        crate::registry::parse_resource_version(&q.resource_version).map_err(ApiError::BadRequest)
    }
}

/// A list served by the watch cache (`None`: the store must serve it). A list with a `limit`
/// below its size is paginated from one snapshot of the cache, which is kept a while for the
/// next pages; the continue tokens are the store's (revision and last key), so a page whose
/// snapshot this master no longer holds — or another master — is read from the store at the
/// same revision, and the pages still add up to one consistent list.
async fn cached_list<B: Backend>(
    api: &Api<B>,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    table: bool,
) -> Result<Option<Response>, ApiError> {
    let (entries, rv, after) = match q.continue_token.as_deref() {
        Some(token) => {
            let (revision, after) = crate::storage::decode_continue(token)?;
            let prefix =
                crate::registry::list_range(res.store_plural(), crate::registry::Scope::All);
            let Some(after) = after
                .strip_prefix(prefix.start())
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(String::from)
            else {
                return Ok(None);
            };
            let kept = api
                .caches
                .current(res)
                .and_then(|c| c.pages_at(revision, ns));
            match kept {
                Some(entries) => (entries, revision, Some(after)),
                None => return Ok(None),
            }
        }
        None => {
            let min = min_revision(api, q).await?;
            let Some(cache) = api.caches.fresh(res, min).await else {
                return Ok(None);
            };
            let (entries, rv) = cache.list(ns);
            let entries = Arc::new(entries);
            if q.limit > 0 && entries.len() as u64 > q.limit {
                cache.keep_for_pages(rv, ns, entries.clone());
            }
            (entries, rv, None)
        }
    };
    // The snapshot is in key order: the page starts after the last key of the previous one.
    let start = after.map_or(0, |a| entries.partition_point(|e| e.key() <= a));
    let mut selected = entries[start..].iter().filter(|e| selected(q, &e.value));
    let limit = if q.limit > 0 {
        q.limit as usize
    } else {
        usize::MAX
    };
    let items: Vec<&Arc<crate::cache::Entry>> = selected.by_ref().take(limit).collect();
    let remaining = selected.count();
    let next = match items.last() {
        Some(last) if remaining > 0 => {
            let name = last
                .value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let key =
                crate::registry::object_key(res.store_plural(), last.namespace.as_deref(), name);
            Some(crate::storage::encode_continue(rv, key.as_bytes()))
        }
        _ => None,
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(next) = next {
        metadata["continue"] = json!(next);
        // Kubernetes counts what is left only when nothing filters the list.
        if q.label_selector.is_none() && q.field_selector.is_none() {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    if table {
        let values: Vec<Value> = items.iter().map(|e| e.value.clone()).collect();
        let mut list = table::table(res.kind, &values, Some(rv), q.include_object);
        list["metadata"] = metadata;
        return Ok(Some(json_response(StatusCode::OK, &list)));
    }
    // The objects are JSON already: the list is their concatenation.
    let head = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                      "metadata": metadata});
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    body.pop(); // the closing brace
    body.extend_from_slice(b",\"items\":[");
    body.reserve(items.iter().map(|e| e.json.len() + 1).sum());
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.json);
    }
    body.extend_from_slice(b"]}");
    Ok(Some(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
    ))
}

/// A watch's ERROR event carrying `e` as a Status.
fn error_event(e: &ApiError) -> Bytes {
    let status = serde_json::to_value(e.to_status()).unwrap_or_default();
    let mut line =
        serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A watch's response: `stream`'s event lines as they come.
fn watch_response(
    stream: impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    (
        StatusCode::OK,
        // HTTP/1.1 sends the body chunked (its length is unknown); HTTP/2 has no such header.
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Batches of watch events joined into one write when they queue up for a client.
const WATCH_CHUNK_BATCHES: usize = 16;

/// A watch: newline-delimited JSON events, first the current objects as ADDED when no
/// resourceVersion (or "0") is given, then every change. Served by the watch cache; the store
/// serves watches from a revision older than the cache's history.
async fn watch<B: Backend>(
    api: &Api<B>,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    table: bool,
) -> Result<Response, ApiError> {
    let from = crate::registry::parse_resource_version(&q.resource_version)
        .map_err(ApiError::BadRequest)?;
    // History before the store's compaction is gone on every master, whatever a watch
    // cache still holds: such a watch is 410 Expired, and the client relists.
    // As in Kubernetes, that is the watch's one event (an ERROR), not the response's status.
    // A streaming list from an old revision is a list not older than it: no history needed.
    let compacted = api.storage.compacted_revision();
    if from > 0 && from < compacted && q.send_initial_events != Some(true) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let gone = ApiError::Gone {
            requested: from,
            compacted,
        };
        let _ = tx.try_send(Ok(error_event(&gone)));
        return Ok(watch_response(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )));
    }
    let initial = q.send_initial_events.unwrap_or(from == 0);
    let min = min_revision(api, q).await?;
    let sub = match api.caches.fresh(res, min).await {
        // With the initial objects, the watch starts from a snapshot at least as new as
        // `min`; without, from `from` (a watch from none starts now: an empty snapshot).
        Some(cache) => cache.subscribe(ns, (!initial && from > 0).then_some(from)),
        None => None,
    };
    let Some(sub) = sub else {
        return watch_store(api, res, ns, q, table).await;
    };
    let deadline = q
        .timeout_seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let filter = Query {
        label_selector: q.label_selector.clone(),
        field_selector: q.field_selector.clone(),
        ..Default::default()
    };
    let (ns, bookmarks) = (ns.map(String::from), q.bookmarks && !table);
    let include = q.include_object;
    let line = move |kind: &'static str, entry: &crate::cache::Entry, shared: Option<&Bytes>| {
        if !entry.in_namespace(ns.as_deref()) || !selected(&filter, &entry.value) {
            return None;
        }
        if table {
            let t = table::table(res.kind, std::slice::from_ref(&entry.value), None, include);
            let mut line =
                serde_json::to_vec(&json!({"type": kind, "object": t})).unwrap_or_default();
            line.push(b'\n');
            return Some(Bytes::from(line));
        }
        Some(match shared {
            Some(l) => l.clone(),
            None => crate::cache::event_line(kind, &entry.json),
        })
    };
    let crate::cache::Subscription {
        snapshot,
        replay,
        rx,
        revision,
    } = sub;
    let line = std::sync::Arc::new(line);
    let event_line = {
        let line = line.clone();
        move |e: &crate::cache::Event| match &e.entry {
            Some(entry) => line(e.kind, entry, Some(&e.line)),
            None => bookmarks.then(|| e.line.clone()),
        }
    };
    let snapshot = if initial { snapshot } else { Vec::new() };
    let mut first: Vec<Bytes> = snapshot
        .iter()
        .filter_map(|e| line("ADDED", e, None))
        .chain(replay.iter().filter_map(|e| event_line(e)))
        .collect();
    if q.send_initial_events == Some(true) && bookmarks {
        first.push(initial_events_end(res, revision));
    }
    // The response body polls the cache's channel itself: a change wakes the connection's
    // stream task directly, with no task or queue of its own per watcher in between.
    let later = futures::stream::unfold((rx, event_line), move |(mut rx, event_line)| async move {
        loop {
            let next = match deadline {
                Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok()?,
                None => rx.recv().await,
            };
            // A watcher too slow for the cache's buffer ends; the client resumes from its
            // last resourceVersion (as Kubernetes does).
            let batch = next.ok()?;
            let mut lines: Vec<Bytes> = Vec::new();
            let mut add = |batch: &crate::cache::Batch| {
                // Bookmarks may repeat the revision the watch started at.
                lines.extend(
                    batch
                        .iter()
                        .filter(|e| e.revision > revision || e.entry.is_none())
                        .filter_map(|e| event_line(e)),
                );
            };
            add(&batch);
            // Batches that queued up meanwhile go in the same write.
            for _ in 1..WATCH_CHUNK_BATCHES {
                match rx.try_recv() {
                    Ok(b) => add(&b),
                    Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
                    Err(_) => return None,
                }
            }
            // One line is the shared encoding itself (no copy); several become one write.
            let chunk = match lines.len() {
                0 => continue,
                1 => lines.pop().unwrap_or_default(),
                _ => Bytes::from(lines.concat()),
            };
            return Some((Ok::<_, std::io::Error>(chunk), (rx, event_line)));
        }
    });
    Ok(watch_response(futures::StreamExt::chain(
        futures::stream::iter(first.into_iter().map(Ok::<_, std::io::Error>)),
        later,
    )))
}

/// The bookmark that ends a streaming list's initial objects (`sendInitialEvents`), at the
/// revision they are the state of.
fn initial_events_end(res: &Resource, revision: u64) -> Bytes {
    let meta = json!({
        "kind": res.kind,
        "apiVersion": res.api_version(),
        "metadata": {
            "resourceVersion": revision.to_string(),
            "annotations": {"k8s.io/initial-events-end": "true"},
        },
    });
    crate::cache::event_line("BOOKMARK", &serde_json::to_vec(&meta).unwrap_or_default())
}

/// A watch served by the store's own watch (from any revision it still holds).
async fn watch_store<B: Backend>(
    api: &Api<B>,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    table: bool,
) -> Result<Response, ApiError> {
    let from = crate::registry::parse_resource_version(&q.resource_version)
        .map_err(ApiError::BadRequest)?;
    let mut initial = Vec::new();
    let after = if q.send_initial_events.unwrap_or(from == 0) {
        let (items, rv) = list(api, res, ns, q).await?;
        initial = items;
        rv
    } else if from == 0 {
        api.storage.revision().await?
    } else {
        from
    };
    let end_of_initial =
        (q.send_initial_events == Some(true) && q.bookmarks && !table).then_some(after);
    let mut changes = api.storage.watch(res, ns, after);
    let deadline = q
        .timeout_seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let filter = Query {
        label_selector: q.label_selector.clone(),
        field_selector: q.field_selector.clone(),
        ..Default::default()
    };
    let include = q.include_object;
    let encode = move |kind: &str, obj: &Value| -> Bytes {
        let object = if table {
            table::table(res.kind, std::slice::from_ref(obj), None, include)
        } else {
            obj.clone()
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        for obj in &initial {
            if tx.send(Ok(encode("ADDED", obj))).await.is_err() {
                return;
            }
        }
        if let Some(rv) = end_of_initial {
            if tx.send(Ok(initial_events_end(res, rv))).await.is_err() {
                return;
            }
        }
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, changes.recv()).await {
                    Ok(c) => c,
                    Err(_) => return,
                },
                None => changes.recv().await,
            };
            let Some(change) = next else { return };
            let line = match change {
                Change::Object(kind, obj, _) if selected(&filter, &obj) => encode(kind, &obj),
                Change::Object(..) | Change::Progress(_) => continue,
                Change::Expired(e) => {
                    let _ = tx.send(Ok(error_event(&e))).await;
                    return;
                }
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    Ok(watch_response(tokio_stream::wrappers::ReceiverStream::new(
        rx,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_lists_follow_kubernetes_list_option_rules() {
        let q = |s: &str| parse_query(Some(s)).map_err(|e| e.to_string());
        let ok = q(
            "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan\
                    &allowWatchBookmarks=true",
        )
        .unwrap();
        assert_eq!(ok.send_initial_events, Some(true));
        assert!(q("watch=true&sendInitialEvents=false&resourceVersionMatch=NotOlderThan").is_ok());
        for (query, says) in [
            ("watch=true&sendInitialEvents=true", "NotOlderThan"),
            (
                "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
                "allowWatchBookmarks",
            ),
            (
                "watch=true&resourceVersionMatch=NotOlderThan",
                "unless sendInitialEvents",
            ),
            ("sendInitialEvents=true", "forbidden for list"),
        ] {
            let err = q(query).unwrap_err();
            assert!(err.contains(says), "{query}: {err}");
        }
    }

    #[test]
    fn paths_name_collections_objects_and_subresources() {
        assert!(
            matches!(parse_path("/api/v1/pods"), Ok(Target::Collection(r, None)) if r.plural == "pods")
        );
        assert!(matches!(
            parse_path("/api/v1/namespaces/default/pods"),
            Ok(Target::Collection(r, Some(ns))) if r.plural == "pods" && ns == "default"
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/default"),
            Ok(Target::Object(r, None, n, None)) if r.plural == "namespaces" && n == "default"
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/x/finalize"),
            Ok(Target::Object(r, None, n, Some(s))) if r.plural == "namespaces" && n == "x" && s == "finalize"
        ));
        assert!(matches!(
            parse_path("/apis/apps/v1/namespaces/d/deployments/web/scale"),
            Ok(Target::Object(r, Some(_), n, Some(s))) if r.kind == "Deployment" && n == "web" && s == "scale"
        ));
        assert!(matches!(
            parse_path("/apis/apps/v1"),
            Ok(Target::Resources("apps", "v1"))
        ));
        assert!(parse_path("/apis/nope/v1/things").is_err());
        assert!(parse_path("/api/v1/widgets").is_err());
    }
}
