//! API errors as Kubernetes `Status` objects.
//!
//! Clients branch on `reason` and `code` (kubectl prints `message`; client libraries raise
//! typed errors such as "conflict" from them), so each error kind maps to exactly the pair
//! Kubernetes uses.

use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

/// An API error, convertible to a `Status` body and an HTTP status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404: the object does not exist.
    #[error("{kind} \"{name}\" not found")]
    NotFound {
        /// The resource, e.g. `pods`.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// 409: create of an object that exists.
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists {
        /// The resource.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// 409: update with a stale resourceVersion.
    #[error("Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")]
    Conflict {
        /// The resource.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// 409: the request carried a fencing token of a Lease whose holder has changed since.
    #[error("fenced: the Lease {lease} changed hands after revision {token}; this client no longer holds it and may not write (acquire the Lease again)")]
    Fenced {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The token the request carried.
        token: u64,
    },
    /// 409: binding a pod that is bound already.
    #[error("Operation cannot be fulfilled on pods/binding \"{pod}\": pod {pod} is already assigned to node \"{node}\"")]
    AlreadyBound {
        /// The pod.
        pod: String,
        /// The node it is bound to.
        node: String,
    },
    /// 409: a server-side apply would change fields other field managers own.
    #[error("{}", apply_conflict_message(.0))]
    ApplyConflict(Vec<crate::managed::FieldConflict>),
    /// 422: the object is invalid; one cause per bad field.
    #[error("{kind} \"{name}\" is invalid: {}", causes.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join(", "))]
    Invalid {
        /// The resource.
        kind: String,
        /// The object's name.
        name: String,
        /// (field path, message) per problem.
        causes: Vec<(String, String)>,
    },
    /// 410: the requested history was compacted.
    #[error("too old resource version: {requested} ({compacted})")]
    Gone {
        /// The resourceVersion asked for.
        requested: u64,
        /// The oldest still available.
        compacted: u64,
    },
    /// 400: the request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credentials.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 413: the body is larger than the API accepts.
    #[error("the request is too large: {0}")]
    TooLarge(String),
    /// 405: the resource does not support the verb.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 415: a patch type or body format the server does not accept.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: an eviction a PodDisruptionBudget does not allow now (clients retry it).
    #[error("Cannot evict pod as it would violate the pod's disruption budget.")]
    DisruptionBudget {
        /// Why, as the cause's message.
        why: String,
    },
    /// 500: the server failed.
    #[error("{0}")]
    Internal(String),
    /// 503: something the request needs (a node's agent) cannot be reached.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// 504: a read at a revision the store has not reached (Kubernetes answers a
    /// `ResourceVersionTooLarge` this way, and clients retry it).
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion {
        /// The revision asked for.
        requested: u64,
        /// The store's revision.
        current: u64,
    },
}

/// What Kubernetes says of a refused apply: `Apply failed with 1 conflict: conflict with
/// "kubectl-edit" using apps/v1: .spec.replicas`, conflicts grouped by manager when more.
fn apply_conflict_message(conflicts: &[crate::managed::FieldConflict]) -> String {
    let n = conflicts.len();
    let body = match conflicts {
        [one] => format!(
            "conflict with {:?} using {}: {}",
            one.manager, one.api_version, one.field
        ),
        _ => {
            let mut groups: Vec<(&str, &str, Vec<&str>)> = Vec::new();
            for c in conflicts {
                match groups
                    .iter_mut()
                    .find(|(m, v, _)| *m == c.manager && *v == c.api_version)
                {
                    Some(g) => g.2.push(&c.field),
                    None => groups.push((&c.manager, &c.api_version, vec![&c.field])),
                }
            }
            groups
                .iter()
                .map(|(m, v, fields)| {
                    let list: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
                    format!("conflicts with {m:?} using {v}:\n{}", list.join("\n"))
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let plural = if n == 1 { "" } else { "s" };
    format!("Apply failed with {n} conflict{plural}: {body}")
}

impl ApiError {
    /// The HTTP status code and the `reason` clients branch on.
    pub fn code_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            ApiError::Conflict { .. }
            | ApiError::Fenced { .. }
            | ApiError::AlreadyBound { .. }
            | ApiError::ApplyConflict(_) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ApiError::Gone { .. } => (StatusCode::GONE, "Expired"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            ApiError::DisruptionBudget { .. } => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            ApiError::ServiceUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            ApiError::TooLargeResourceVersion { .. } => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        }
    }

    /// The `Status` object Kubernetes clients expect as the response body.
    pub fn to_status(&self) -> Status {
        let (code, reason) = self.code_and_reason();
        let details = match self {
            ApiError::NotFound { kind, name }
            | ApiError::AlreadyExists { kind, name }
            | ApiError::Conflict { kind, name } => Some(StatusDetails {
                kind: Some(kind.clone()),
                name: Some(name.clone()),
                ..Default::default()
            }),
            ApiError::Invalid { kind, name, causes } => Some(StatusDetails {
                kind: Some(kind.clone()),
                name: Some(name.clone()),
                causes: Some(
                    causes
                        .iter()
                        .map(|(field, message)| StatusCause {
                            field: Some(field.clone()),
                            message: Some(message.clone()),
                            reason: Some("FieldValueInvalid".into()),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ApiError::ApplyConflict(conflicts) => Some(StatusDetails {
                causes: Some(
                    conflicts
                        .iter()
                        .map(|c| StatusCause {
                            field: Some(c.field.clone()),
                            message: Some(format!(
                                "conflict with {:?} using {}",
                                c.manager, c.api_version
                            )),
                            reason: Some("FieldManagerConflict".into()),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ApiError::DisruptionBudget { why } => Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("DisruptionBudget".into()),
                    message: Some(why.clone()),
                    field: None,
                }]),
                ..Default::default()
            }),
            ApiError::TooLargeResourceVersion { .. } => Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ResourceVersionTooLarge".into()),
                    message: Some("Too large resource version".into()),
                    field: None,
                }]),
                retry_after_seconds: Some(1),
                ..Default::default()
            }),
            _ => None,
        };
        Status {
            status: Some("Failure".into()),
            message: Some(self.to_string()),
            reason: Some(reason.into()),
            code: Some(i32::from(code.as_u16())),
            details,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_is_409_with_the_message_kubectl_prints() {
        let e = ApiError::Conflict {
            kind: "deployments".into(),
            name: "web".into(),
        };
        let s = e.to_status();
        assert_eq!(s.code, Some(409));
        assert_eq!(s.reason.as_deref(), Some("Conflict"));
        assert!(s.message.unwrap().contains("the object has been modified"));
    }

    #[test]
    fn invalid_carries_field_causes_and_gone_is_expired() {
        let e = ApiError::Invalid {
            kind: "pods".into(),
            name: "Bad_Name".into(),
            causes: vec![(
                "metadata.name".into(),
                "must be a DNS-1123 subdomain".into(),
            )],
        };
        let s = e.to_status();
        assert_eq!(s.code, Some(422));
        let causes = s.details.unwrap().causes.unwrap();
        assert_eq!(causes[0].field.as_deref(), Some("metadata.name"));
        let gone = ApiError::Gone {
            requested: 3,
            compacted: 10,
        }
        .to_status();
        assert_eq!(
            (gone.code, gone.reason.as_deref()),
            (Some(410), Some("Expired"))
        );
    }
}
