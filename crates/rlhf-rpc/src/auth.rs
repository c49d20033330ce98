//! Who may call what: a bearer token per role, and per server a table of which roles may call
//! which methods, checked on the request headers before the body is read (an HTTP-level layer,
//! [`Authorize`], in front of every service). Tokens are compared in constant time so the
//! comparison leaks no prefix.
//!
//! The roles: the **learner** drives generators (weights, generation) and scorers, and writes
//! and reads the preference store in collection and reward-model training; a **scorer** fetches
//! the judges from the learner; an **annotator** lists prompts and submits rankings; an
//! **admin** may call anything. Health and reflection stay open to probes. A server where no
//! allowed role of a method has a token configured leaves that method open (loopback use).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The kinds of callers a token can stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Learner,
    Scorer,
    Annotator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Learner, Role::Scorer, Role::Annotator, Role::Admin];

    /// The environment variable that holds this role's token (on Kubernetes, from a Secret).
    pub fn env(self) -> &'static str {
        match self {
            Role::Learner => "RLHF_LEARNER_TOKEN",
            Role::Scorer => "RLHF_SCORER_TOKEN",
            Role::Annotator => "RLHF_ANNOTATOR_TOKEN",
            Role::Admin => "RLHF_ADMIN_TOKEN",
        }
    }
}

/// The token of each role that has one. Never printed.
#[derive(Clone, Default, PartialEq)]
pub struct RoleTokens {
    tokens: Vec<(Role, String)>,
}

impl std::fmt::Debug for RoleTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tokens.iter().map(|(r, _)| r)).finish()
    }
}

impl RoleTokens {
    /// Every role's token from its environment variable (`RLHF_<ROLE>_TOKEN`), empty ones ignored.
    pub fn from_env() -> Self {
        Role::ALL.iter().fold(RoleTokens::default(), |tokens, &role| match std::env::var(role.env()) {
            Ok(token) if !token.is_empty() => tokens.with(role, &token),
            _ => tokens,
        })
    }

    pub fn with(mut self, role: Role, token: &str) -> Self {
        self.tokens.retain(|(r, _)| *r != role);
        self.tokens.push((role, token.to_string()));
        self
    }

    pub fn get(&self, role: Role) -> Option<&str> {
        self.tokens.iter().find(|(r, _)| *r == role).map(|(_, t)| t.as_str())
    }

    fn role_of(&self, given: &str) -> Option<Role> {
        // Every token is compared, so the time taken does not say which one matched.
        self.tokens.iter().fold(None, |found, (role, token)| {
            if bool::from(given.as_bytes().ct_eq(token.as_bytes())) { Some(*role) } else { found }
        })
    }
}

/// Which roles may call which methods of one server: `(path prefix, roles)`, the first prefix
/// that matches a call's path deciding (so list exact methods before their service).
#[derive(Debug, Clone)]
pub struct Access {
    tokens: RoleTokens,
    rules: Vec<(&'static str, &'static [Role])>,
}

impl Access {
    pub fn new(tokens: RoleTokens, rules: &[(&'static str, &'static [Role])]) -> Self {
        Access { tokens, rules: rules.to_vec() }
    }

    /// Admits a call to `path` with `headers`, or says why not.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
            return Ok(());
        }
        let allowed: &[Role] = self.rules.iter().find(|(prefix, _)| path.starts_with(prefix)).map_or(&[], |(_, r)| r);
        let guarded = allowed.iter().any(|r| self.tokens.get(*r).is_some());
        // A method no rule names is open only while no token at all is configured.
        if !guarded && (self.tokens.tokens.is_empty() || !allowed.is_empty()) {
            return Ok(());
        }
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("this call needs `authorization: Bearer <token>`"))?;
        match self.tokens.role_of(given) {
            Some(role) if allowed.contains(&role) => Ok(()),
            Some(role) => Err(Status::permission_denied(format!("a {role:?} token may not call {path}"))),
            None => Err(Status::unauthenticated("wrong bearer token")),
        }
    }
}

/// The layer that applies an [`Access`] (none: everything open) before a call is decoded.
#[derive(Debug, Clone)]
pub struct Authorize(pub Option<Arc<Access>>);

impl<S> tower::Layer<S> for Authorize {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized { inner, access: self.0.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Authorized<S> {
    inner: S,
    access: Option<Arc<Access>>,
}

impl<S, B> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(Err(status)) = self.access.as_ref().map(|a| a.check(request.uri().path(), request.headers())) {
            crate::metrics::refused_calls().inc();
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

/// Refuses `request` unless it carries `authorization: Bearer <expected>`; no token configured
/// means open access.
pub fn check_bearer<T>(request: &Request<T>, expected: Option<&str>) -> Result<(), Status> {
    let Some(expected) = expected else { return Ok(()) };
    let given = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("this call needs `authorization: Bearer <token>`"))?;
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(Status::unauthenticated("wrong bearer token"))
    }
}

/// Adds `authorization: Bearer <token>` to an outgoing request.
pub fn with_bearer<T>(mut request: Request<T>, token: Option<&str>) -> Request<T> {
    if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token {
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        h
    }

    const RULES: &[(&str, &[Role])] = &[
        ("/rlhf.v1.PolicyGenerator/UpdateWeights", &[Role::Learner]),
        ("/rlhf.v1.PolicyGenerator/", &[Role::Learner, Role::Admin]),
    ];

    #[test]
    fn each_method_admits_its_roles_only() {
        let tokens = RoleTokens::default().with(Role::Learner, "l-token").with(Role::Admin, "a-token");
        let access = Access::new(tokens.with(Role::Scorer, "s-token"), RULES);
        let code = |path: &str, token: Option<&str>| access.check(path, &headers(token)).err().map(|s| s.code());
        let push = "/rlhf.v1.PolicyGenerator/UpdateWeights";
        let generate = "/rlhf.v1.PolicyGenerator/Generate";
        assert_eq!(code(push, Some("l-token")), None);
        assert_eq!(code(push, Some("a-token")), Some(tonic::Code::PermissionDenied), "only the learner pushes weights");
        assert_eq!(code(push, Some("s-token")), Some(tonic::Code::PermissionDenied));
        assert_eq!(code(push, None), Some(tonic::Code::Unauthenticated));
        assert_eq!(code(push, Some("l-tokenx")), Some(tonic::Code::Unauthenticated));
        assert_eq!(code(generate, Some("a-token")), None);
        assert_eq!(code(generate, Some("s-token")), Some(tonic::Code::PermissionDenied));
        // Probes stay open; a method no rule names is closed once tokens exist.
        assert_eq!(code("/grpc.health.v1.Health/Check", None), None);
        assert_eq!(code("/rlhf.v1.Other/Call", Some("a-token")), Some(tonic::Code::PermissionDenied));
    }

    #[test]
    fn without_tokens_for_its_roles_a_method_is_open() {
        let open = Access::new(RoleTokens::default(), RULES);
        assert!(open.check("/rlhf.v1.PolicyGenerator/UpdateWeights", &headers(None)).is_ok());
        assert!(open.check("/rlhf.v1.Other/Call", &headers(None)).is_ok());
        // An annotator token configured does not guard methods annotators may not call anyway.
        let partly = Access::new(RoleTokens::default().with(Role::Annotator, "n"), RULES);
        assert!(partly.check("/rlhf.v1.PolicyGenerator/Generate", &headers(None)).is_ok());
        assert!(format!("{:?}", RoleTokens::default().with(Role::Admin, "secret")).contains("Admin"));
        assert!(!format!("{:?}", RoleTokens::default().with(Role::Admin, "secret")).contains("secret"));
    }

    #[test]
    fn only_the_configured_token_passes() {
        let open = Request::new(());
        assert!(check_bearer(&open, None).is_ok());
        assert_eq!(check_bearer(&open, Some("s3cret")).unwrap_err().code(), tonic::Code::Unauthenticated);
        let right = with_bearer(Request::new(()), Some("s3cret"));
        assert!(check_bearer(&right, Some("s3cret")).is_ok());
        for wrong in ["s3cre", "s3cret!", "S3cret", ""] {
            let req = with_bearer(Request::new(()), Some(wrong));
            assert!(check_bearer(&req, Some("s3cret")).is_err(), "{wrong:?} passed");
        }
    }
}
