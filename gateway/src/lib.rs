//! Weir, the weighted-routing AI API gateway.
//!
//! A Pingora reverse proxy that routes each request to one *arm* (a model
//! version) of a *route*: by an A/B header, by a sticky user key (weighted
//! rendezvous hashing) or by weight, then to a healthy backend of the arm's
//! pool. The routing state is rebuilt off the request path on every config
//! change and published with one atomic swap.
//!
//! Modules: [`routing`] (arm selection), [`state`] (the live runtime and its
//! swap), [`proxy`] (the `ProxyHttp` hooks), [`errors`] (gateway errors as
//! OpenAI-shaped JSON), [`admin`] (health, readiness, metrics, routes),
//! [`source`] (file watching), [`etcd`] (the etcd source), [`server`]
//! (process wiring), [`ctl`] (the `weirctl` operator CLI).

pub mod access;
pub mod admin;
pub mod breaker;
pub mod canary;
pub mod ctl;
pub mod errors;
pub mod etcd;
pub mod filtering;
pub mod grpc;
pub mod metrics;
pub mod otel;
pub mod pool;
pub mod proxy;
pub mod redis_limits;
pub mod retry;
pub mod route_match;
pub mod routing;
pub mod server;
pub mod source;
pub mod state;
pub mod trace;
pub mod usage;
