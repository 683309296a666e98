//! Access control on the HTTP API: the permission each route needs, and the credentials a
//! request carries (`Authorization: Bearer <password>` for the default user, or basic auth);
//! the users themselves are [`crate::auth`]'s. Without credentials a request gets 401 with a
//! JSON error and `WWW-Authenticate`; with a user that lacks the permission, 403.
//!
//! `GET /api/v1/health` needs none (load balancers probe it). The routes cluster members call
//! on a shard (a move's transfer and ownership routes, a replica's `/api/v1/admin/replicas` to
//! which coordinators and replicas forward membership changes) are not checked here: they are
//! for the cluster secret to protect (ARCHITECTURE.md, *Security and backups*; not built yet),
//! and until it exists protected mode keeps shards on loopback unless `--insecure`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::auth::{Permission, DEFAULT_USER};
use crate::error::ApiError;
use crate::node::KvNode;

/// What a request to a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Nothing (the health probe).
    Nothing,
    /// Cluster-internal traffic (see the module documentation).
    Cluster,
    /// A user with this permission.
    User(Permission),
}

/// What a request with `method` to `path` needs.
pub fn needs(method: &Method, path: &str) -> Needs {
    let internal = path.starts_with("/api/v1/admin/transfer/")
        || path == "/api/v1/admin/ownership"
        || path == "/api/v1/admin/replicas"
        || path.starts_with("/api/v1/admin/replicas/");
    if internal {
        return Needs::Cluster;
    }
    if path == "/api/v1/health" && (method == Method::GET || method == Method::HEAD) {
        return Needs::Nothing;
    }
    // The cluster map (kept by the map group, whose replicas ask for no credentials) is an
    // administrator's business on any other node.
    if path.starts_with("/api/v1/admin/") || path == "/api/v1/meta/map" {
        return Needs::User(Permission::Admin);
    }
    if method == Method::GET || method == Method::HEAD {
        Needs::User(Permission::Read)
    } else {
        Needs::User(Permission::ReadWrite)
    }
}

/// The layer in front of every route of a node's HTTP API.
pub async fn check<N: KvNode>(State(node): State<N>, request: Request, next: Next) -> Response {
    let users = node.users();
    if !users.required() {
        return next.run(request).await;
    }
    let needed = match needs(request.method(), request.uri().path()) {
        Needs::Nothing | Needs::Cluster => return next.run(request).await,
        Needs::User(permission) => permission,
    };
    let (user, password) = match credentials(request.headers()) {
        Ok(Some(pair)) => pair,
        Ok(None) => {
            return unauthorized(
                "this node asks for credentials: send Authorization: Bearer <password> (the default user) or basic auth",
            )
        }
        Err(e) => return unauthorized(&e),
    };
    let identity = match users.authenticate(&user, &password).await {
        Ok(identity) => identity,
        Err(_) => return unauthorized("invalid username-password pair or user is disabled"),
    };
    if identity.permission < needed {
        return ApiError::Forbidden(format!(
            "user {} has the {} permission; {} {} needs {}",
            identity.user,
            identity.permission.name(),
            request.method(),
            request.uri().path(),
            needed.name()
        ))
        .into_response();
    }
    next.run(request).await
}

/// The user and password of an `Authorization` header: `Bearer <password>` is the default
/// user's; `Basic <base64 of user:password>`. `Ok(None)`: no header.
pub fn credentials(headers: &HeaderMap) -> Result<Option<(String, Vec<u8>)>, String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.as_bytes();
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
        None => (value, &b""[..]),
    };
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return Ok(Some((DEFAULT_USER.to_string(), rest.to_vec())));
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| "the basic credentials are not valid base64".to_string())?;
        let colon = decoded
            .iter()
            .position(|&b| b == b':')
            .ok_or("the basic credentials hold no ':' between user and password")?;
        let user = String::from_utf8(decoded[..colon].to_vec())
            .map_err(|_| "the basic credentials' user is not UTF-8".to_string())?;
        return Ok(Some((user, decoded[colon + 1..].to_vec())));
    }
    Err("the Authorization header is neither Bearer nor Basic".into())
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::Unauthorized(message.to_string()).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"limedb\", charset=\"UTF-8\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_they_do() {
        let get = Method::GET;
        assert_eq!(needs(&get, "/api/v1/health"), Needs::Nothing);
        assert_eq!(needs(&Method::HEAD, "/api/v1/health"), Needs::Nothing);
        assert_eq!(
            needs(&get, "/api/v1/meta/map"),
            Needs::User(Permission::Admin)
        );
        assert_eq!(needs(&get, "/api/v1/get/k"), Needs::User(Permission::Read));
        assert_eq!(needs(&get, "/metrics"), Needs::User(Permission::Read));
        assert_eq!(
            needs(&Method::POST, "/api/v1/set"),
            Needs::User(Permission::ReadWrite)
        );
        assert_eq!(
            needs(&Method::DELETE, "/api/v1/kv/k"),
            Needs::User(Permission::ReadWrite)
        );
        assert_eq!(
            needs(&get, "/api/v1/admin/moves"),
            Needs::User(Permission::Admin)
        );
        assert_eq!(
            needs(&Method::POST, "/api/v1/admin/shards"),
            Needs::User(Permission::Admin)
        );
        assert_eq!(
            needs(&Method::POST, "/api/v1/admin/transfer/import"),
            Needs::Cluster
        );
        assert_eq!(
            needs(&Method::DELETE, "/api/v1/admin/replicas/3"),
            Needs::Cluster
        );
        assert_eq!(
            needs(&Method::POST, "/api/v1/admin/shards/1/replicas"),
            Needs::User(Permission::Admin)
        );
        // A key named like a route is still a key.
        assert_eq!(
            needs(&get, "/api/v1/get/api/v1/health"),
            Needs::User(Permission::Read)
        );
    }

    #[test]
    fn credentials_are_read_from_bearer_and_basic_headers() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header"),
            );
            credentials(&h)
        };
        assert_eq!(credentials(&HeaderMap::new()), Ok(None));
        assert_eq!(
            with("Bearer s3cret"),
            Ok(Some(("default".into(), b"s3cret".to_vec())))
        );
        // "app:p:w" — the password may hold colons.
        assert_eq!(
            with("Basic YXBwOnA6dw=="),
            Ok(Some(("app".into(), b"p:w".to_vec())))
        );
        assert!(with("Basic !!!").is_err());
        assert!(with("Basic YXBw").is_err(), "no colon");
        assert!(with("Digest x").is_err());
    }
}
