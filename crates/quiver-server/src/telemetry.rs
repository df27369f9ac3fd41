//! Logging and OpenTelemetry tracing.
//!
//! Log lines go to stderr, filtered by `QUIVER_LOG` (or `RUST_LOG`, default `info`);
//! the filter can be changed while the server runs ([`set_log_filter`]).
//!
//! Traces are exported over OTLP/gRPC when the standard variables ask for it:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set (or
//! `OTEL_TRACES_EXPORTER=otlp`), unless `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none`. The exporter, sampler, batching and resource read the
//! rest of the `OTEL_*` variables themselves (`OTEL_SERVICE_NAME`, default `quiver`;
//! `OTEL_TRACES_SAMPLER`; `OTEL_BSP_SCHEDULE_DELAY`; `OTEL_EXPORTER_OTLP_HEADERS`, …).
//! Which spans are exported is filtered by `QUIVER_TRACE` (default
//! [`DEFAULT_TRACE_FILTER`]): the server's own request, engine and store spans. When
//! tracing is off no exporter, propagator or span context exists: the spans below the
//! log level are never built.
//!
//! Spans follow the OpenTelemetry semantic conventions: a server span per call
//! (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`; HTTP:
//! `http.request.method`, `http.route`), client spans per store statement
//! (`db.system.name`, `db.query.text`), continuing the W3C `traceparent` a client
//! sends in gRPC metadata or HTTP headers ([`observe`]).

pub mod observe;

use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The spans exported when `QUIVER_TRACE` does not say: requests, engine phases and
/// store statements of the server's own crates, and warnings from the libraries.
pub const DEFAULT_TRACE_FILTER: &str =
    "warn,quiver_server=debug,quiver_query=debug,quiver_storage=debug";

/// What [`init`] set up, for changing and ending it.
struct Installed {
    log_filter: reload::Handle<EnvFilter, Registry>,
    log_filter_text: std::sync::Mutex<String>,
    provider: Option<SdkTracerProvider>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Whether spans are exported: decided once at [`init`].
pub fn tracing_enabled() -> bool {
    INSTALLED.get().is_some_and(|i| i.provider.is_some())
}

/// Installs the global subscriber: human-readable lines on stderr (colored on a
/// terminal only) and, when the `OTEL_*` variables ask for it, the OTLP exporter.
/// Must run inside a tokio runtime (the exporter's channel is built on it).
pub fn init() {
    let filter = std::env::var("QUIVER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let (log_filter, handle) = reload::Layer::new(env_filter(&filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(log_filter);
    let (provider, problem) = match exporter_wanted() {
        Ok(true) => match tracer_provider() {
            Ok(provider) => (Some(provider), None),
            Err(err) => (None, Some(format!("cannot export traces: {err}"))),
        },
        Ok(false) => (None, None),
        Err(err) => (None, Some(err)),
    };
    let otel = provider.as_ref().map(|provider| {
        let trace_filter =
            std::env::var("QUIVER_TRACE").unwrap_or_else(|_| DEFAULT_TRACE_FILTER.to_owned());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("quiver"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(env_filter(&trace_filter))
    });
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(problem) = problem {
        tracing::error!("{problem}; traces are not exported");
    }
    if !installed {
        return;
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing::info!("exporting traces over OTLP/gRPC");
    }
    let _ = INSTALLED.set(Installed {
        log_filter: handle,
        log_filter_text: std::sync::Mutex::new(filter),
        provider,
    });
}

/// Sends the spans still buffered and stops the exporter (at exit).
pub fn shutdown() {
    if let Some(provider) = INSTALLED.get().and_then(|i| i.provider.as_ref())
        && let Err(err) = provider.shutdown()
    {
        eprintln!("quiver: flushing traces failed: {err}");
    }
}

/// The log filter now in force (`QUIVER_LOG` syntax).
pub fn log_filter() -> String {
    INSTALLED
        .get()
        .map(|i| i.log_filter_text.lock().expect("never poisoned").clone())
        .unwrap_or_else(|| "info".to_owned())
}

/// Replaces the log filter (`info`, `quiver_server=debug,warn`, …) while running.
/// A filter that does not parse is refused and the old one stays.
pub fn set_log_filter(filter: &str) -> Result<(), String> {
    let parsed =
        EnvFilter::try_new(filter).map_err(|err| format!("log filter {filter:?}: {err}"))?;
    let installed = INSTALLED
        .get()
        .ok_or_else(|| "logging is not installed in this process".to_owned())?;
    installed
        .log_filter
        .reload(parsed)
        .map_err(|err| format!("cannot change the log filter: {err}"))?;
    *installed.log_filter_text.lock().expect("never poisoned") = filter.to_owned();
    Ok(())
}

/// `filter` parsed, or `info` with a warning on stderr when it does not parse.
fn env_filter(filter: &str) -> EnvFilter {
    EnvFilter::try_new(filter).unwrap_or_else(|err| {
        eprintln!("quiver: filter {filter:?} does not parse ({err}); using \"info\"");
        EnvFilter::new("info")
    })
}

/// Whether the standard variables ask for trace export; an error for settings this
/// server cannot honour.
fn exporter_wanted() -> Result<bool, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        Some("none") => return Ok(false),
        Some("otlp") => {}
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other} is not supported (otlp or none)"
            ));
        }
        None => {
            if var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
                && var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
            {
                return Ok(false);
            }
        }
    }
    let protocol =
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref() {
        None | Some("grpc") => Ok(true),
        Some(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported: this server exports OTLP over gRPC (port 4317)"
        )),
    }
}

/// The tracer provider: OTLP/gRPC exporter, batched, resource from the environment.
fn tracer_provider() -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|err| err.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named_in_env = std::env::var("OTEL_SERVICE_NAME").is_ok()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named_in_env {
        resource = resource.with_service_name("quiver");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The OpenTelemetry context of `span` (empty when tracing is off).
pub(crate) fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if !tracing_enabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    // An unsampled span is never exported: nothing to point at.
    (span_context.is_valid() && span_context.is_sampled()).then_some(span_context)
}

/// The trace id of the current span, for exemplars and the query history.
pub fn current_trace_id() -> Option<String> {
    span_context(&tracing::Span::current()).map(|c| c.trace_id().to_string())
}

/// The W3C `traceparent` naming the current span: what a commit stores in the change
/// log so deliveries link to it. When tracing is off (or the span is not sampled),
/// the `traceparent` the client sent with the request ([`observe`] keeps it), rebuilt
/// in the W3C form — or none when it is not one: the change log stores nothing but a
/// trace context, whatever a client sends.
pub fn current_traceparent() -> Option<String> {
    let context = span_context(&tracing::Span::current())
        .or_else(|| observe::client_traceparent().and_then(|sent| parse_traceparent(&sent)))?;
    Some(format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    ))
}

/// A W3C `traceparent` value parsed into a remote span context (`None` when it is not
/// one: wrong version or length, non-hex, all-zero ids).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// Most links one delivery span carries: a page of many commits links to the first
/// ones.
const MAX_LINKS: usize = 32;

/// Links `span` to the spans that wrote the given `traceparent`s (distinct, at most
/// `MAX_LINKS`). Nothing when tracing is off.
pub fn link_to_writers<'a>(span: &tracing::Span, traceparents: impl Iterator<Item = &'a str>) {
    if !tracing_enabled() {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for value in traceparents {
        if value.is_empty() || !seen.insert(value) {
            continue;
        }
        if seen.len() > MAX_LINKS {
            break;
        }
        if let Some(context) = parse_traceparent(value) {
            span.add_link(context);
        }
    }
}

/// Most bytes of a client's SQL recorded in a span: enough to recognise a statement,
/// never the megabytes a client may send.
const SHOWN_SQL: usize = 2048;

/// The start of `sql`, as spans record it.
pub fn shown_sql(sql: &str) -> &str {
    if sql.len() <= SHOWN_SQL {
        return sql;
    }
    let mut end = SHOWN_SQL;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    &sql[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_by_the_w3c_rules() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(good).expect("a valid traceparent");
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        assert!(context.is_remote());
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} is refused");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn long_sql_is_cut_at_a_character_boundary() {
        let sql = "é".repeat(SHOWN_SQL);
        let shown = shown_sql(&sql);
        assert!(shown.len() <= SHOWN_SQL && shown.len() >= SHOWN_SQL - 1);
        assert!(sql.starts_with(shown));
    }
}
