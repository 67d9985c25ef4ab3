//! Prometheus metrics of the gateway, in one registry served at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the gateway exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `weir_requests_total{route,arm,status}`.
    pub requests: IntCounterVec,
    /// `weir_request_duration_seconds{route,arm}`.
    pub duration: HistogramVec,
    /// `weir_upstream_connect_failures_total{pool,backend}`.
    pub connect_failures: IntCounterVec,
    /// `weir_http1_direct_total{outcome}`: with `[server] http1_engine =
    /// "direct"`, requests the direct path served (`served`) and
    /// connections it handed to Pingora (`handed_over`).
    pub http1_direct: IntCounterVec,
    /// `weir_resolve_failures_total{pool,name}`: lookups of a backend's
    /// host name that failed (its last good addresses were kept).
    pub resolve_failures: IntCounterVec,
    /// `weir_config_reloads_total{result}` with result `applied` or `rejected`.
    pub reloads: IntCounterVec,
    /// `weir_config_generation`: generation of the live snapshot.
    pub generation: IntGauge,
    /// `weir_config_changes_total{route,actor_kind}`: weights and rollback
    /// changes made through this gateway's admin API.
    pub config_changes: IntCounterVec,
    /// The OpenTelemetry GenAI metrics (`crate::genai` bounds their labels).
    pub genai: GenAi,
    /// `weir_backend_healthy{pool,backend}`: 1 healthy, 0 not.
    pub backend_healthy: prometheus::IntGaugeVec,
    /// `weir_fallbacks_total{route,from,to}`.
    pub fallbacks: IntCounterVec,
    /// `weir_config_rejected_total`: configs rejected (any source).
    pub rejected: IntCounter,
    /// `weir_config_revision`: etcd revision of the live config (0 = not from etcd).
    pub revision: IntGauge,
    /// `weir_config_apply_seconds`: etcd event received → snapshot live.
    pub apply_seconds: Histogram,
    /// `weir_etcd_connected`: 1 while the etcd watch is established.
    pub etcd_connected: IntGauge,
    /// `weir_sandbox_enabled`: 1 when the process runs in its sandbox.
    pub sandbox_enabled: IntGauge,
    /// `weir_etcd_resyncs_total`: full re-reads after a compaction or cancelled watch.
    pub etcd_resyncs: IntCounter,
    /// `weir_config_invalid_keys`: keys under the etcd prefix that problems
    /// of the newest etcd state name (0 when it is valid).
    pub invalid_keys: IntGauge,
    /// `weir_filter_matches_total{filter,category,direction}`.
    pub filter_matches: IntCounterVec,
    /// `weir_filter_errors_total{filter,kind}`.
    pub filter_errors: IntCounterVec,
    /// `weir_filter_duration_seconds{filter,direction}`: time in the filter per body or stream chunk.
    pub filter_duration: HistogramVec,
    /// `weir_filter_holdback_bytes`: text held back per streamed chunk.
    pub filter_holdback: Histogram,
    /// `weir_breaker_state{pool,backend}`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: prometheus::IntGaugeVec,
    /// `weir_breaker_transitions_total{pool,backend,to}`.
    pub breaker_transitions: IntCounterVec,
    /// `weir_retries_total{route,cause,outcome}`: cause `connect` or `status`,
    /// outcome `retried` or `budget_exhausted`.
    pub retries: IntCounterVec,
    /// `weir_auth_failures_total{route,code}`: 401/403 answers by error code.
    pub auth_failures: IntCounterVec,
    /// `weir_rate_limited_total{tenant,limit}`: 429 answers by limit.
    pub rate_limited: IntCounterVec,
    /// `weir_rollbacks_total{route,arm}`: canary arms rolled back by this gateway.
    pub rollbacks: IntCounterVec,
    /// `weir_ratelimit_redis_up`: 1 while cluster-wide limits in Redis answer.
    pub redis_up: IntGauge,
    /// `weir_ratelimit_local_fallbacks_total`: limit decisions made locally
    /// because Redis did not answer.
    pub redis_fallbacks: IntCounter,
    /// `weir_time_to_first_token_seconds{route,arm}`: request start to the
    /// first streamed (SSE) chunk of a successful answer.
    pub ttft: HistogramVec,
    /// `weir_time_per_output_token_seconds{route,arm}`: first to last
    /// streamed chunk over the output tokens after the first.
    pub tpot: HistogramVec,
    /// `weir_tokens_total{route,arm,direction}`: prompt (`input`) and
    /// completion (`output`) tokens of OpenAI answers.
    pub tokens: IntCounterVec,
    /// `weir_grpc_responses_total{route,arm,grpc_status}`: gRPC calls by
    /// the status that ended them (upstream trailers or the gateway's own).
    pub grpc_responses: IntCounterVec,
}

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const TPOT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

const FILTER_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25,
];

const HOLDBACK_BUCKETS: &[f64] = &[0.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];

const APPLY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
];

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

impl Metrics {
    /// Counts one change made through the admin API.
    pub fn count_change(&self, route: &str, actor_kind: &str) {
        self.config_changes
            .with_label_values(&[route, actor_kind])
            .inc();
    }

    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "weir_requests_total",
                "Requests answered, by route, arm and status.",
            ),
            &["route", "arm", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "weir_request_duration_seconds",
                "Time from request start to the end of the response, by route and arm.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "arm"],
        )?;
        let connect_failures = IntCounterVec::new(
            Opts::new(
                "weir_upstream_connect_failures_total",
                "Failed connection attempts to a backend.",
            ),
            &["pool", "backend"],
        )?;
        let http1_direct = IntCounterVec::new(
            Opts::new(
                "weir_http1_direct_total",
                "Requests the direct HTTP/1 path served, and connections it handed to Pingora.",
            ),
            &["outcome"],
        )?;
        let resolve_failures = IntCounterVec::new(
            Opts::new(
                "weir_resolve_failures_total",
                "Failed lookups of a backend's host name (its last good addresses were kept).",
            ),
            &["pool", "name"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "weir_config_reloads_total",
                "Config reloads by result (applied, rejected).",
            ),
            &["result"],
        )?;
        let config_changes = IntCounterVec::new(
            Opts::new(
                "weir_config_changes_total",
                "Weights and rollback changes made through this gateway's admin API, by route and actor kind (token, local).",
            ),
            &["route", "actor_kind"],
        )?;
        let generation = IntGauge::new(
            "weir_config_generation",
            "Generation of the live config snapshot (1 = the first one).",
        )?;
        let backend_healthy = prometheus::IntGaugeVec::new(
            Opts::new(
                "weir_backend_healthy",
                "1 when the backend passes health checks.",
            ),
            &["pool", "backend"],
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "weir_fallbacks_total",
                "Requests sent to the fallback arm because the chosen arm had no usable backend.",
            ),
            &["route", "from", "to"],
        )?;
        let rejected = IntCounter::new(
            "weir_config_rejected_total",
            "Config changes rejected as invalid; the last good config kept serving.",
        )?;
        let revision = IntGauge::new(
            "weir_config_revision",
            "etcd revision of the live config (0 when it does not come from etcd).",
        )?;
        let apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "weir_config_apply_seconds",
                "Time from an etcd event's arrival to its snapshot being live.",
            )
            .buckets(APPLY_BUCKETS.to_vec()),
        )?;
        let etcd_connected = IntGauge::new(
            "weir_etcd_connected",
            "1 while the watch on etcd is established, else 0.",
        )?;
        let sandbox_enabled = IntGauge::new(
            "weir_sandbox_enabled",
            "1 when the process runs in its sandbox (no_new_privs, Landlock, seccomp), else 0.",
        )?;
        let etcd_resyncs = IntCounter::new(
            "weir_etcd_resyncs_total",
            "Full re-reads of the etcd prefix after a compacted revision or a cancelled watch.",
        )?;
        let invalid_keys = IntGauge::new(
            "weir_config_invalid_keys",
            "Keys under the etcd prefix that problems of the newest etcd state name (0 when it is valid); until they are fixed the last good config serves.",
        )?;
        let filter_matches = IntCounterVec::new(
            Opts::new(
                "weir_filter_matches_total",
                "Dictionary words matched by content filters, by filter, category and direction (request, response).",
            ),
            &["filter", "category", "direction"],
        )?;
        let filter_errors = IntCounterVec::new(
            Opts::new(
                "weir_filter_errors_total",
                "Content filter failures (trap, out_of_fuel, memory_limit, garbage, ...), under either policy.",
            ),
            &["filter", "kind"],
        )?;
        let filter_duration = HistogramVec::new(
            HistogramOpts::new(
                "weir_filter_duration_seconds",
                "Time spent in a content filter per body or streamed chunk.",
            )
            .buckets(FILTER_BUCKETS.to_vec()),
            &["filter", "direction"],
        )?;
        let filter_holdback = Histogram::with_opts(
            HistogramOpts::new(
                "weir_filter_holdback_bytes",
                "Text held back by streaming filters after each upstream chunk (a tail that may start a word).",
            )
            .buckets(HOLDBACK_BUCKETS.to_vec()),
        )?;
        let breaker_state = prometheus::IntGaugeVec::new(
            Opts::new(
                "weir_breaker_state",
                "Circuit breaker of a backend: 0 closed, 1 open, 2 half-open.",
            ),
            &["pool", "backend"],
        )?;
        let breaker_transitions = IntCounterVec::new(
            Opts::new(
                "weir_breaker_transitions_total",
                "Circuit breaker state changes, by the state entered (open, half_open, closed).",
            ),
            &["pool", "backend", "to"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "weir_retries_total",
                "Retries on another backend by cause (connect, status) and outcome (retried, budget_exhausted).",
            ),
            &["route", "cause", "outcome"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "weir_auth_failures_total",
                "Requests refused for their credentials (401) or tenant (403), by route and error code.",
            ),
            &["route", "code"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "weir_rate_limited_total",
                "Requests refused with 429 by a tenant limit (requests, tokens, concurrency).",
            ),
            &["tenant", "limit"],
        )?;
        let rollbacks = IntCounterVec::new(
            Opts::new(
                "weir_rollbacks_total",
                "Canary arms this gateway rolled back (taken out of the split) for doing worse than the fallback arm.",
            ),
            &["route", "arm"],
        )?;
        registry.register(Box::new(rollbacks.clone()))?;
        registry.register(Box::new(config_changes.clone()))?;
        let redis_up = IntGauge::new(
            "weir_ratelimit_redis_up",
            "1 while the cluster-wide limits in Redis answer; 0 when Redis is not configured or unreachable (limits are then local).",
        )?;
        let redis_fallbacks = IntCounter::new(
            "weir_ratelimit_local_fallbacks_total",
            "Tenant limit decisions made with the local limiters because Redis did not answer in time.",
        )?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(redis_fallbacks.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(breaker_state.clone()))?;
        registry.register(Box::new(breaker_transitions.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(filter_matches.clone()))?;
        registry.register(Box::new(filter_errors.clone()))?;
        registry.register(Box::new(filter_duration.clone()))?;
        registry.register(Box::new(filter_holdback.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(revision.clone()))?;
        registry.register(Box::new(apply_seconds.clone()))?;
        registry.register(Box::new(etcd_connected.clone()))?;
        registry.register(Box::new(sandbox_enabled.clone()))?;
        registry.register(Box::new(etcd_resyncs.clone()))?;
        registry.register(Box::new(invalid_keys.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(connect_failures.clone()))?;
        registry.register(Box::new(http1_direct.clone()))?;
        registry.register(Box::new(resolve_failures.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(generation.clone()))?;
        registry.register(Box::new(backend_healthy.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "weir_time_to_first_token_seconds",
                "Time from request start to the first streamed chunk, by route and arm.",
            )
            .buckets(TTFT_BUCKETS.to_vec()),
            &["route", "arm"],
        )?;
        let tpot = HistogramVec::new(
            HistogramOpts::new(
                "weir_time_per_output_token_seconds",
                "Time between the first and last streamed chunk per output token after the first.",
            )
            .buckets(TPOT_BUCKETS.to_vec()),
            &["route", "arm"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "weir_tokens_total",
                "Tokens of OpenAI answers by route, arm and direction (input = prompt, output = completion).",
            ),
            &["route", "arm", "direction"],
        )?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(tpot.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        let genai = GenAi::new(&registry)?;
        let grpc_responses = IntCounterVec::new(
            Opts::new(
                "weir_grpc_responses_total",
                "gRPC calls by route, arm and the grpc-status that ended them (UNKNOWN when none came).",
            ),
            &["route", "arm", "grpc_status"],
        )?;
        registry.register(Box::new(grpc_responses.clone()))?;
        for result in ["applied", "rejected"] {
            reloads.with_label_values(&[result]);
        }
        Ok(Self {
            registry,
            requests,
            duration,
            connect_failures,
            http1_direct,
            resolve_failures,
            reloads,
            config_changes,
            genai,
            generation,
            backend_healthy,
            fallbacks,
            rejected,
            revision,
            apply_seconds,
            etcd_connected,
            sandbox_enabled,
            etcd_resyncs,
            invalid_keys,
            filter_matches,
            filter_errors,
            filter_duration,
            filter_holdback,
            breaker_state,
            breaker_transitions,
            retries,
            auth_failures,
            rate_limited,
            rollbacks,
            redis_up,
            redis_fallbacks,
            ttft,
            tpot,
            tokens,
            grpc_responses,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// The `status` label values: the common codes, then classes for the rest.
pub const STATUS_LABELS: [&str; 19] = [
    "0", "200", "201", "204", "400", "401", "403", "404", "429", "499", "500", "502", "503", "504",
    "1xx", "2xx", "3xx", "4xx", "5xx",
];

/// Index into [`STATUS_LABELS`] of a status; avoids formatting on the hot path.
pub fn status_index(status: u16) -> usize {
    match status {
        0 => 0,
        200 => 1,
        201 => 2,
        204 => 3,
        400 => 4,
        401 => 5,
        403 => 6,
        404 => 7,
        429 => 8,
        499 => 9,
        500 => 10,
        502 => 11,
        503 => 12,
        504 => 13,
        s if s < 200 => 14,
        s if s < 300 => 15,
        s if s < 400 => 16,
        s if s < 500 => 17,
        _ => 18,
    }
}

/// The GenAI labels every request metric has, in this order.
pub const GENAI_LABELS: [&str; 6] = [
    "gen_ai_operation_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "weir_route",
    "weir_arm",
    "weir_tenant",
];

/// The OpenTelemetry GenAI semantic conventions in Prometheus form, beside
/// the `weir_*` metrics (which stay): recorded for OpenAI requests only.
#[derive(Clone)]
pub struct GenAi {
    /// `gen_ai_client_token_usage{gen_ai_token_type,...}`: tokens per
    /// request, `input` and `output`.
    pub token_usage: HistogramVec,
    /// `gen_ai_server_request_duration_seconds{...,error_type}`.
    pub duration: HistogramVec,
    /// `gen_ai_server_time_to_first_token_seconds{...}`.
    pub ttft: HistogramVec,
    /// `gen_ai_server_time_per_output_token_seconds{...}`.
    pub tpot: HistogramVec,
    /// `weir_tenant_tokens_total{tenant,direction}`: for chargeback.
    pub tenant_tokens: IntCounterVec,
}

impl GenAi {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let with = |extra: &'static str| {
            let mut l = vec![extra];
            l.extend(GENAI_LABELS);
            l
        };
        let mut plus_error: Vec<&str> = GENAI_LABELS.to_vec();
        plus_error.push("error_type");
        let token_usage = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_client_token_usage",
                "Tokens per OpenAI request (gen_ai_token_type input = prompt, output = completion).",
            )
            .buckets(vec![
                1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
                1048576.0, 4194304.0,
            ]),
            &with("gen_ai_token_type"),
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_server_request_duration_seconds",
                "Duration of OpenAI requests through the gateway (error_type empty when it succeeded).",
            )
            .buckets(vec![
                0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96,
                81.92,
            ]),
            &plus_error,
        )?;
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_server_time_to_first_token_seconds",
                "Request start to the first streamed chunk of an OpenAI answer.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0,
            ]),
            &GENAI_LABELS,
        )?;
        let tpot = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_server_time_per_output_token_seconds",
                "First to last streamed chunk of an OpenAI answer per output token after the first.",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
            ]),
            &GENAI_LABELS,
        )?;
        let tenant_tokens = IntCounterVec::new(
            Opts::new(
                "weir_tenant_tokens_total",
                "Tokens of OpenAI answers by tenant and direction (input, output), for chargeback.",
            ),
            &["tenant", "direction"],
        )?;
        registry.register(Box::new(token_usage.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(tpot.clone()))?;
        registry.register(Box::new(tenant_tokens.clone()))?;
        Ok(Self {
            token_usage,
            duration,
            ttft,
            tpot,
            tenant_tokens,
        })
    }
}
