//! The crate's error type.

/// Why a filter could not be loaded or could not finish a call.
///
/// Every variant names its metric label through [`FilterError::kind`]
/// (`weir_filter_errors_total{filter,kind}`). Errors are cheap to clone so
/// that reports can keep them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The filter spec is unusable (empty dictionary, bad word, limits out of
    /// range); every problem found is listed.
    #[error("invalid filter spec: {0}")]
    Spec(String),
    /// The module does not compile or does not follow the ABI (exports,
    /// types, version, imports).
    #[error("invalid filter module: {0}")]
    InvalidModule(String),
    /// `weir_init` refused the configuration with this code.
    #[error("filter rejected its configuration (weir_init returned {0})")]
    InitRejected(i32),
    /// The call used up its fuel (CPU budget).
    #[error("filter ran out of fuel")]
    OutOfFuel,
    /// The call tried to grow memory past the filter's memory limit.
    #[error("filter exceeded its memory limit")]
    MemoryLimit,
    /// The call trapped (unreachable, out-of-bounds access, stack overflow...).
    #[error("filter trapped: {0}")]
    Trap(String),
    /// The guest returned a negative status code.
    #[error("filter returned error code {0}")]
    GuestError(i64),
    /// The guest returned something that breaks the ABI (bad pointer, bad
    /// record, offsets out of range or off character boundaries).
    #[error("filter returned garbage: {0}")]
    Garbage(String),
    /// No instance could be created (for example the instance pool is full).
    #[error("filter could not be instantiated: {0}")]
    Instantiate(String),
    /// A streamed answer could not be read as SSE carrying OpenAI chunks
    /// (an event over the size bound, unreadable chunk JSON).
    #[error("unreadable stream: {0}")]
    Sse(String),
    /// The text is larger than the ABI can address.
    #[error("input of {0} bytes is too large for a filter")]
    InputTooLarge(usize),
}

impl FilterError {
    /// A short, stable label for metrics: `spec`, `invalid_module`,
    /// `init_rejected`, `out_of_fuel`, `memory_limit`, `trap`, `guest_error`,
    /// `garbage`, `instantiate`, `sse`, `input_too_large`.
    pub fn kind(&self) -> &'static str {
        self.kind_impl()
    }

    /// The kinds a filter call (not a load) can fail with.
    pub const CALL_KINDS: &'static [&'static str] = &[
        "out_of_fuel",
        "memory_limit",
        "trap",
        "guest_error",
        "garbage",
        "instantiate",
        "sse",
        "input_too_large",
    ];

    fn kind_impl(&self) -> &'static str {
        match self {
            Self::Spec(_) => "spec",
            Self::InvalidModule(_) => "invalid_module",
            Self::InitRejected(_) => "init_rejected",
            Self::OutOfFuel => "out_of_fuel",
            Self::MemoryLimit => "memory_limit",
            Self::Trap(_) => "trap",
            Self::GuestError(_) => "guest_error",
            Self::Garbage(_) => "garbage",
            Self::Instantiate(_) => "instantiate",
            Self::Sse(_) => "sse",
            Self::InputTooLarge(_) => "input_too_large",
        }
    }
}
