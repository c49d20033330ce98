//! Shutdown the way Kubernetes expects it: on SIGTERM a service reports NOT_SERVING at once,
//! refuses new calls (UNAVAILABLE, so clients go to another replica), lets the calls in flight
//! finish for at most the drain grace, then exits; whatever is still running is cancelled (work
//! from a queue stays pending for another replica).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// The default grace: below Kubernetes' 30 s `terminationGracePeriodSeconds`, so a service
/// exits on its own before it is killed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(20);

static GRACE_MS: AtomicU64 = AtomicU64::new(DEFAULT_GRACE.as_millis() as u64);

/// Sets how long this process's services drain after SIGTERM (`--drain-secs`).
pub fn set_grace(grace: Duration) {
    GRACE_MS.store(grace.as_millis() as u64, Ordering::SeqCst);
}

pub fn grace() -> Duration {
    Duration::from_millis(GRACE_MS.load(Ordering::SeqCst))
}

/// Whether a server drains, and how many calls it is answering.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl Drain {
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Refuses new calls while draining (health and reflection stay open) and counts the calls in
/// flight: until their response body has been sent or dropped, so a stream counts to its end.
#[derive(Debug, Clone)]
pub struct Admission(pub Arc<Drain>);

impl<S> tower::Layer<S> for Admission {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Admitted<S> {
        Admitted { inner, drain: self.0.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Admitted<S> {
    inner: S,
    drain: Arc<Drain>,
}

/// Decrements the count however the call ends.
struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, B> tower::Service<http::Request<B>> for Admitted<S>
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
        let path = request.uri().path();
        let always_open = path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
        if self.drain.draining.load(Ordering::SeqCst) && !always_open {
            let refused = tonic::Status::unavailable("this replica is shutting down; try another").into_http();
            return Box::pin(async move { Ok(refused) });
        }
        self.drain.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.drain.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| tonic::body::Body::new(Counted { body, _guard: guard })))
        })
    }
}

/// A response body that holds its call's place in the count until it is sent or dropped.
struct Counted {
    body: tonic::body::Body,
    _guard: InFlight,
}

impl http_body::Body for Counted {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
