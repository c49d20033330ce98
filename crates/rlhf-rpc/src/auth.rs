//! Bearer tokens on write RPCs, compared in constant time so the comparison leaks no prefix.

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

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
