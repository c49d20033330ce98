//! W3C trace context (`traceparent: 00-<trace id>-<span id>-<flags>`), carried in gRPC metadata
//! and in a field of each queue entry, so that one rollout is one trace from the learner through
//! a generator and the scorer back to the learner.
//!
//! Each hop opens a `tracing` span with the trace id and its own span id; an OpenTelemetry
//! subscriber (see the `rlhf` binary) exports them.

use rand::Rng;
use tonic::Request;
use tonic::metadata::MetadataMap;

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
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
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

    /// A `tracing` span for one hop, tagged with this context's ids.
    pub fn span(&self, name: &'static str) -> tracing::Span {
        tracing::info_span!("hop", otel.name = name, trace_id = %self.trace_id, span_id = %self.span_id)
    }
}

/// The caller's context, or a new root when it sent none.
pub fn from_metadata(metadata: &MetadataMap) -> TraceContext {
    metadata
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
        .map(|parent| parent.child())
        .unwrap_or_else(TraceContext::root)
}

/// Puts `context` into an outgoing request's metadata.
pub fn inject<T>(mut request: Request<T>, context: &TraceContext) -> Request<T> {
    if let Ok(value) = context.header().parse() {
        request.metadata_mut().insert(HEADER, value);
    }
    request
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
        let request = inject(Request::new(()), &ctx);
        let received = from_metadata(request.metadata());
        assert_eq!(received.trace_id, ctx.trace_id);
    }
}
