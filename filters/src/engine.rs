//! The process-wide wasmtime [`Engine`].
//!
//! One engine serves every filter: modules compiled by it share its code
//! memory and its pooling allocator. The pool bounds how many filter
//! instances can be alive at once (one per running call or open stream).

use std::sync::OnceLock;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig,
};

use crate::FilterError;

/// Largest memory limit a filter may ask for (the pool's slot size).
pub const MAX_MEMORY_LIMIT: usize = 256 << 20;

/// Wasm stack available to one filter call.
pub const MAX_WASM_STACK: usize = 512 << 10;

/// Settings of the process-wide engine; see [`configure_engine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// How many filter instances may be alive at once (calls in flight plus
    /// open streams). Each reserves address space (not memory) for one
    /// linear memory.
    pub max_instances: u32,
    /// Linear-memory bytes per pool slot kept mapped between instances
    /// (restored from the image instead of unmapped), which saves the next
    /// instance in that slot its page faults. Where the kernel has
    /// `PAGEMAP_SCAN` (Linux 6.7+) only the pages a call wrote are
    /// restored; elsewhere all of these bytes are copied back after every
    /// call. 1 MiB measured best for the bundled filter without the scan (a
    /// fresh instance scanning 1 KiB: ~60 µs against ~110 µs with 0 or
    /// ~95 µs with 2 MiB); with it, 16 MiB was no better than 1 MiB.
    pub keep_resident: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            keep_resident: 1 << 20,
        }
    }
}

static OPTIONS: OnceLock<EngineOptions> = OnceLock::new();
static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();

/// Sets the engine's options. Only the first call before the engine is
/// first used has an effect; returns whether these options are in force.
pub fn configure_engine(options: EngineOptions) -> bool {
    *OPTIONS.get_or_init(|| options) == options
}

/// The process-wide engine, created on first use.
pub(crate) fn engine() -> Result<&'static Engine, FilterError> {
    ENGINE
        .get_or_init(|| build(*OPTIONS.get_or_init(EngineOptions::default)))
        .as_ref()
        .map_err(|e| FilterError::Instantiate(format!("wasm engine unavailable: {e}")))
}

/// The settings every filter engine shares: they decide how a module is
/// compiled, so the throwaway compiler of [`compile`] and the process-wide
/// engine must agree on them (wasmtime refuses code compiled otherwise).
fn base_config() -> Config {
    let mut config = Config::new();
    config.consume_fuel(true).max_wasm_stack(MAX_WASM_STACK);
    config
}

fn build(options: EngineOptions) -> Result<Engine, String> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(options.max_instances)
        .total_memories(options.max_instances)
        .total_tables(options.max_instances)
        .max_memory_size(MAX_MEMORY_LIMIT)
        .linear_memory_keep_resident(options.keep_resident)
        .table_keep_resident(64 << 10)
        // Restore only the pages a call dirtied, where the kernel can say
        // which (otherwise the whole kept-resident region is copied back,
        // which was a fifth of the gateway's CPU on filtered requests).
        .pagemap_scan(Enabled::Auto);
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| e.to_string())
}

/// Compiles `wasm` into a module of the process-wide engine.
///
/// The compile runs on an engine of its own, dropped as soon as the code
/// is made: wasmtime keeps a compiler's working buffers (Cranelift's
/// contexts, ~4 MiB for the bundled module) for the engine's lifetime, and
/// the process-wide engine, which never compiles, keeps none. Modules
/// compile on the calling thread only (wasmtime is built without its
/// `parallel-compilation` feature): the compiler's temporaries are then
/// freed on one thread, which can give them back to the system at once
/// (the gateway does, after each load), instead of staying with the idle
/// workers of a compile thread pool. Measured on the gateway with the
/// bundled filter, idle: 61 MiB resident against 80-100 MiB, for a
/// start-up about 0.25 s longer on 2 cores.
pub(crate) fn compile(wasm: &[u8]) -> Result<Module, FilterError> {
    let engine = engine()?;
    let code = Engine::new(&base_config())
        .and_then(|compiler| compiler.precompile_module(wasm))
        .map_err(|e| FilterError::InvalidModule(format!("{e:#}")))?;
    // SAFETY: `Module::deserialize` trusts its bytes to be wasmtime's own
    // output for a compatible engine (it maps them as code after checking
    // only their header and settings). These bytes are that: the line
    // above made them, in this process, with this wasmtime, from the
    // settings the process-wide engine is built with (`base_config`); they
    // never left this function's memory.
    #[allow(unsafe_code)]
    let module = unsafe { Module::deserialize(engine, &code) };
    module.map_err(|e| FilterError::InvalidModule(format!("compiled module: {e:#}")))
}
