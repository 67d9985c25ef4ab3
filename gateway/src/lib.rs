//! Weir, the weighted-routing AI API gateway.
//!
//! A Pingora reverse proxy that routes each request to one *arm* (a model
//! version) of a *route*: by an A/B header, by a sticky user key (weighted
//! rendezvous hashing) or by weight, then to a healthy backend of the arm's
//! pool. The routing state is rebuilt off the request path on every config
//! change and published with one atomic swap.
//!
//! Modules, bottom layer first (a module uses only modules listed above it,
//! except that `errors` and `metrics` serve every layer; see
//! `docs/architecture.md`):
//!
//! - [`window`]: the monotonic millisecond clock and sliding-window counters.
//! - [`normalize`]: request paths and hosts as routes see them.
//! - [`metrics`]: every Prometheus metric, the `status` label table.
//! - [`errors`]: gateway errors as OpenAI-shaped JSON; rate-limit headers.
//! - [`grpc`]: gRPC statuses and trailers-only error answers.
//! - [`trace`]: W3C trace context; [`otel`]: OTLP span export.
//! - [`routing`]: arm selection (A/B header, sticky rendezvous, weighted).
//! - [`retry`]: the per-route retry budget.
//! - [`breaker`]: per-backend circuit breakers and attempts.
//! - [`redis_limits`]: cluster-wide tenant limits in Redis.
//! - [`access`]: tenants, API keys, JWTs and their limits at run time.
//! - [`filtering`]: loaded Wasm filters over request and response bodies.
//! - [`pool`]: a pool's balancer, health checks and backend choice.
//! - [`canary`]: canary windows ([`canary::stats`]) and rollback checks.
//! - [`runtime`]: the routing state built from one snapshot (pure build,
//!   then commit).
//! - [`usage`]: token usage of answers, stream timing, token metrics.
//! - [`rename`]: an arm's upstream model name in bodies and answers.
//! - [`route_match`]: choosing a request's route.
//! - [`client`]: what the request logic needs of the client side, whichever
//!   engine serves it (Pingora's `Session` implements it).
//! - [`state`]: the live runtime behind one atomic swap; rollbacks held.
//! - [`proxy`]: the Pingora `ProxyHttp` hooks, one file per concern.
//! - [`admin`]: health, readiness, metrics, routes, rollbacks, profiles.
//! - [`source`]: the config file watch; [`etcd`]: the etcd source.
//! - [`listen`]: holding the proxy ports until Pingora listens on them.
//! - [`server`]: process wiring; [`ctl`]: the `weirctl` operator CLI.

pub mod access;
pub mod admin;
pub mod alloc;
pub mod balance;
pub mod breaker;
pub mod canary;
pub mod client;
pub mod ctl;
pub mod errors;
pub mod etcd;
pub mod filtering;
pub mod fleet;
pub mod forwarded;
pub mod genai;
pub mod grpc;
pub mod headers;
pub mod listen;
pub mod metrics;
pub mod normalize;
pub mod otel;
pub mod pool;
pub mod proxy;
pub mod redis_limits;
pub mod rename;
pub mod request_head;
pub mod resolve;
pub mod retry;
pub mod route_match;
pub mod routing;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod source;
pub mod state;
pub mod trace;
pub mod usage;
pub mod window;
