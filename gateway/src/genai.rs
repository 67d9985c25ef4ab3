//! The OpenTelemetry GenAI semantic conventions in Prometheus form: which
//! operation an OpenAI request is, and model names folded so that a
//! client cannot grow a label without bound.
//!
//! A model label is a name the route's config knows (a `models` entry or
//! an arm's `model`); a version of a `models` entry (`tiny-lm:7`) counts
//! as the entry; anything else is `other`, and no model at all is empty.
//! Routes, arms and tenants are config names already, so every label's
//! values are bounded by the config.

use weir_conf::snapshot::Route;

/// `gen_ai.operation.name` of an OpenAI path (none for other paths, which
/// get no GenAI metrics).
pub fn operation(path: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    if path.ends_with("/chat/completions") {
        Some("chat")
    } else if path.ends_with("/completions") {
        Some("text_completion")
    } else if path.ends_with("/embeddings") {
        Some("embeddings")
    } else {
        None
    }
}

/// The label for `model` as the client named it on `route`.
pub fn model_label<'a>(route: &'a Route, model: Option<&str>) -> &'a str {
    let Some(model) = model else {
        return "";
    };
    if let Some(known) = route.catalogue().find(|m| *m == model) {
        return known;
    }
    route
        .matcher
        .models
        .iter()
        .find(|m| {
            model
                .strip_prefix(m.as_str())
                .is_some_and(|rest| rest.starts_with(':'))
        })
        .map_or("other", String::as_str)
}

/// `error_type` of a request's status: empty when it succeeded.
pub fn error_type(status: u16) -> &'static str {
    match status {
        0 => "_OTHER",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn route() -> Route {
        let config = weir_conf::parse_toml(
            r#"
[[pools]]
name = "p"
backends = [{ address = "127.0.0.1:9" }]
[[routes]]
name = "chat"
prefix = "/v1"
models = ["tiny-lm"]
arms = [{ name = "a", pool = "p", weight = 1, model = "vendor/model-a" }]
"#,
            "test",
        )
        .unwrap();
        weir_conf::Snapshot::build(config).unwrap().routes.remove(0)
    }

    #[test]
    fn operations_follow_the_openai_paths() {
        assert_eq!(operation("/v1/chat/completions"), Some("chat"));
        assert_eq!(operation("/v1/completions/"), Some("text_completion"));
        assert_eq!(operation("/v1/embeddings"), Some("embeddings"));
        assert_eq!(operation("/v1/models"), None);
    }

    #[test]
    fn model_labels_are_bounded_by_the_config() {
        let r = route();
        assert_eq!(model_label(&r, Some("tiny-lm")), "tiny-lm");
        assert_eq!(model_label(&r, Some("tiny-lm:7")), "tiny-lm");
        assert_eq!(model_label(&r, Some("vendor/model-a")), "vendor/model-a");
        assert_eq!(model_label(&r, Some("anything-a-client-makes-up")), "other");
        assert_eq!(model_label(&r, None), "");
        assert_eq!(error_type(200), "");
        assert_eq!(error_type(429), "4xx");
        assert_eq!(error_type(0), "_OTHER");
    }
}
