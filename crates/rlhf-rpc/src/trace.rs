//! W3C trace context (`traceparent: 00-<trace id>-<span id>-<flags>`), carried in gRPC metadata
//! and in a field of each queue entry, so that one rollout is one trace from the learner through
//! a generator and the scorer back to the learner.
//!
//! A [`Hop`] is one step of that trace: a `tracing` span, made the child of the incoming context,
//! and the `traceparent` naming it for the next hop. With the OpenTelemetry layer installed
//! ([`crate::telemetry`]) the ids are the exported span's own; without it they are generated
//! here, so the context still travels and the logs still carry the trace id.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use rand::Rng;
use tonic::Request;
use tonic::metadata::MetadataMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const HEADER: &str = "traceparent";

/// A parsed W3C trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace (a root span).
    pub fn root() -> Self {
        let mut rng = rand::rng();
        TraceContext {
            trace_id: format!("{:032x}", rng.random::<u128>() | 1),
            span_id: format!("{:016x}", rng.random::<u64>() | 1),
            sampled: true,
        }
    }

    /// A child span in the same trace.
    pub fn child(&self) -> Self {
        TraceContext { span_id: format!("{:016x}", rand::rng().random::<u64>() | 1), ..self.clone() }
    }

    /// Parses a `traceparent` value; anything malformed starts no trace rather than failing.
    pub fn parse(value: &str) -> Option<Self> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace_id, span_id, flags] = parts[..] else { return None };
        let hex =
            |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if version != "00" || !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
            return None;
        }
        if trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0') {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceContext { trace_id: trace_id.into(), span_id: span_id.into(), sampled: flags & 1 == 1 })
    }

    pub fn header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }

    /// This context as an OpenTelemetry remote parent.
    fn otel(&self) -> Option<opentelemetry::Context> {
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let span = SpanContext::new(
            TraceId::from_hex(&self.trace_id).ok()?,
            SpanId::from_hex(&self.span_id).ok()?,
            flags,
            true,
            TraceState::default(),
        );
        Some(opentelemetry::Context::new().with_remote_span_context(span))
    }
}

/// One hop of a trace: its span and the context that names it.
#[derive(Debug)]
pub struct Hop {
    pub span: tracing::Span,
    context: TraceContext,
}

impl Hop {
    /// Starts a hop named `name` as the child of `parent` (a `traceparent` value); with no
    /// parent, or a malformed one, it starts a new trace.
    pub fn start(name: &'static str, parent: Option<&str>) -> Hop {
        let parent = parent.and_then(TraceContext::parse);
        let span = tracing::info_span!("hop", otel.name = name, trace_id = tracing::field::Empty);
        if let Some(cx) = parent.as_ref().and_then(TraceContext::otel) {
            let _ = span.set_parent(cx);
        }
        let exported = span.context().span().span_context().clone();
        let context = if exported.is_valid() {
            TraceContext {
                trace_id: format!("{:032x}", exported.trace_id()),
                span_id: format!("{:016x}", exported.span_id()),
                sampled: exported.is_sampled(),
            }
        } else {
            parent.map(|p| p.child()).unwrap_or_else(TraceContext::root)
        };
        span.record("trace_id", context.trace_id.as_str());
        Hop { span, context }
    }

    /// The server side of an RPC: the child of the caller's context.
    pub fn from_metadata(name: &'static str, metadata: &MetadataMap) -> Hop {
        Hop::start(name, metadata.get(HEADER).and_then(|v| v.to_str().ok()))
    }

    /// The `traceparent` of this hop, for the next one.
    pub fn header(&self) -> String {
        self.context.header()
    }

    pub fn trace_id(&self) -> &str {
        &self.context.trace_id
    }
}

/// Puts `traceparent` into an outgoing request's metadata.
pub fn inject<T>(mut request: Request<T>, traceparent: &str) -> Request<T> {
    if let Ok(value) = traceparent.parse() {
        request.metadata_mut().insert(HEADER, value);
    }
    request
}

/// Puts `traceparent` into a response's metadata, so the caller can continue the trace from
/// the server's span.
pub fn inject_response<T>(mut response: tonic::Response<T>, traceparent: &str) -> tonic::Response<T> {
    if let Ok(value) = traceparent.parse() {
        response.metadata_mut().insert(HEADER, value);
    }
    response
}

/// The `traceparent` a peer put into metadata, if it is well formed.
pub fn extract(metadata: &MetadataMap) -> Option<String> {
    let value = metadata.get(HEADER)?.to_str().ok()?;
    TraceContext::parse(value).map(|c| c.header())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed_headers() {
        let example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(example).unwrap();
        assert_eq!(ctx.header(), example);
        let child = ctx.child();
        assert_eq!(child.trace_id, ctx.trace_id);
        assert_ne!(child.span_id, ctx.span_id);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn without_opentelemetry_the_context_still_travels() {
        let first = Hop::start("learner", None);
        let request = inject(Request::new(()), &first.header());
        let second = Hop::from_metadata("generator", request.metadata());
        assert_eq!(second.trace_id(), first.trace_id());
        assert_ne!(second.header(), first.header());
        let garbage = Hop::start("scorer", Some("not a traceparent"));
        assert_ne!(garbage.trace_id(), first.trace_id());
    }

    #[test]
    fn exported_spans_link_each_hop_to_its_parent() {
        use opentelemetry::trace::TracerProvider;
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use tracing_subscriber::layer::SubscriberExt;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let (learner_id, generator_parent) = tracing::subscriber::with_default(subscriber, || {
            let learner = Hop::start("learner.generate", None);
            // The header crosses a process boundary as text.
            let header = learner.header();
            let generator = Hop::start("generator.generate", Some(&header));
            let scorer = Hop::start("scorer.score", Some(&generator.header()));
            assert_eq!(scorer.trace_id(), learner.trace_id());
            let ids = (learner.header(), generator.header());
            drop((learner, generator, scorer));
            ids
        });
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 3);
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
        let (learner, generator, scorer) =
            (by_name("learner.generate"), by_name("generator.generate"), by_name("scorer.score"));
        assert_eq!(
            TraceContext::parse(&learner_id).unwrap().span_id,
            format!("{:016x}", learner.span_context.span_id())
        );
        assert_eq!(generator.parent_span_id, learner.span_context.span_id());
        assert_eq!(scorer.parent_span_id, generator.span_context.span_id());
        assert_eq!(
            TraceContext::parse(&generator_parent).unwrap().span_id,
            format!("{:016x}", generator.span_context.span_id())
        );
        assert!(spans.iter().all(|s| s.span_context.trace_id() == learner.span_context.trace_id()));
    }
}
