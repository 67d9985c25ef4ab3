//! Loading a filter module and calling it: [`Filter`] and [`Session`].
//!
//! Loading compiles the module, checks it against the ABI, runs
//! `weir_init` once and bakes the initialised linear memory into a new
//! module (`bake.rs`). Every call then runs in a fresh [`Store`]
//! with its own fuel and memory cap, instantiating the baked module from an
//! [`InstancePre`] out of the engine's pool (its memory mapped
//! copy-on-write from the initialised image), so no state survives from one
//! call (or tenant) to the next.

use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::{
    Extern, ExternType, FuncType, Instance, InstancePre, Linker, Memory, Module, ModuleExport,
    ResourceLimiter, Store, Trap, TypedFunc, ValType,
};

use crate::FilterError;
use crate::abi::{self, ScanResult};
use crate::bake;
use crate::engine::engine;
use crate::spec::{Action, FilterSpec, FuelBudget, Policy};
use crate::verdict::{Outcome, Verdict, mask};

/// How many compiled modules [`compile`] keeps.
const MODULE_CACHE: usize = 8;

/// A loaded filter: cheap to clone, `Send + Sync`, callable from many
/// threads at once.
#[derive(Clone)]
pub struct Filter {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    categories: Vec<Arc<str>>,
    action: Action,
    policy: Policy,
    fuel: FuelBudget,
    memory_limit: usize,
    max_holdback: usize,
    pre: InstancePre<Limits>,
    exports: Exports,
    image_len: usize,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("name", &self.inner.name)
            .field("categories", &self.inner.categories)
            .field("action", &self.inner.action)
            .field("policy", &self.inner.policy)
            .field("image_bytes", &self.inner.image_len)
            .finish_non_exhaustive()
    }
}

struct Exports {
    memory: ModuleExport,
    alloc: ModuleExport,
    scan: ModuleExport,
}

/// Per-store memory cap that remembers whether it was hit.
struct Limits {
    memory_limit: usize,
    hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// A live instance in its own store.
struct Live {
    store: Store<Limits>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    scan: TypedFunc<(i32, i32), i64>,
}

/// The bundled sensitive-word filter module (built from
/// `filters/guest/sensitive-words` by `build.rs`).
pub static SENSITIVE_WORDS_WASM: &[u8] = include_bytes!(env!("WEIR_SENSITIVE_WORDS_WASM"));

impl Filter {
    /// Loads the bundled sensitive-word filter with `spec`.
    pub fn sensitive_words(spec: FilterSpec) -> Result<Self, FilterError> {
        Self::load(SENSITIVE_WORDS_WASM, spec)
    }

    /// Compiles `wasm` (binary, or text format), checks it against the ABI,
    /// initialises it with `spec`'s dictionary and keeps the result. Slow
    /// (compilation): call it when a config snapshot is built, never on the
    /// request path.
    pub fn load(wasm: &[u8], spec: FilterSpec) -> Result<Self, FilterError> {
        let prepared = spec.prepare()?;
        let engine = engine()?;
        let module = compile_cached(wasm)?;
        check_module(&module)?;
        let exports = Exports::of(&module)?;
        let pre = Linker::new(engine)
            .instantiate_pre(&module)
            .map_err(|e| FilterError::InvalidModule(format!("{e:#}")))?;

        // Initialise one instance, then bake its memory into the module.
        let mut store = new_store(&pre, spec.memory_limit);
        store
            .set_fuel(spec.fuel.init)
            .map_err(|e| FilterError::Instantiate(e.to_string()))?;
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| classify_instantiate(e, store.data().hit))?;
        let mut live = Live::new(store, &instance, &exports)?;
        let version = instance
            .get_typed_func::<(), i32>(&mut live.store, abi::EXPORT_ABI_VERSION)
            .map_err(|e| FilterError::InvalidModule(format!("{e:#}")))?
            .call(&mut live.store, ())
            .map_err(|e| classify(e, live.store.data().hit))?;
        if version != abi::ABI_VERSION {
            return Err(FilterError::InvalidModule(format!(
                "ABI version {version}, expected {}",
                abi::ABI_VERSION
            )));
        }
        let init = instance
            .get_typed_func::<(i32, i32), i32>(&mut live.store, abi::EXPORT_INIT)
            .map_err(|e| FilterError::InvalidModule(format!("{e:#}")))?;
        let (ptr, len) = live.write_input(&prepared.config)?;
        let status = init
            .call(&mut live.store, (ptr, len))
            .map_err(|e| classify(e, live.store.data().hit))?;
        if status != 0 {
            return Err(FilterError::InitRejected(status));
        }
        let memory = live.memory.data(&live.store);
        let baked =
            bake::bake(wasm_binary(wasm)?.as_ref(), memory).map_err(FilterError::InvalidModule)?;
        let image_len = memory.len();
        let baked = crate::engine::compile(&baked).map_err(|e| match e {
            FilterError::InvalidModule(e) => {
                FilterError::InvalidModule(format!("baked module: {e}"))
            }
            e => e,
        })?;
        let exports = Exports::of(&baked)?;
        let pre = Linker::new(engine)
            .instantiate_pre(&baked)
            .map_err(|e| FilterError::InvalidModule(format!("{e:#}")))?;

        let filter = Self {
            inner: Arc::new(Inner {
                name: Arc::from(spec.name.as_str()),
                categories: prepared.categories,
                action: spec.action,
                policy: spec.policy,
                fuel: spec.fuel,
                memory_limit: spec.memory_limit,
                max_holdback: prepared.max_holdback,
                pre,
                exports,
                image_len,
            }),
        };
        // The memory must be all the state there is: a baked instance has to
        // scan exactly like the one that ran `weir_init`.
        let n = filter.category_count();
        let fuel = filter.inner.fuel.for_scan(prepared.probe.len());
        let expected = live.scan(&prepared.probe, fuel, n)?;
        let restored = filter.session().scan(&prepared.probe)?;
        if restored != expected {
            return Err(FilterError::InvalidModule(
                "an instance of the baked module scans differently from the \
                 initialised one (state outside linear memory?)"
                    .to_owned(),
            ));
        }
        Ok(filter)
    }

    /// The filter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The categories, indexed by [`abi::Match::category`].
    pub fn categories(&self) -> &[Arc<str>] {
        &self.inner.categories
    }

    /// The name of category `index`.
    pub fn category(&self, index: u32) -> Option<&Arc<str>> {
        self.inner.categories.get(index as usize)
    }

    /// The action on a match.
    pub fn action(&self) -> Action {
        self.inner.action
    }

    /// The failure policy.
    pub fn policy(&self) -> Policy {
        self.inner.policy
    }

    /// Upper bound on the text a stream holds back per choice (bytes).
    pub fn max_holdback(&self) -> usize {
        self.inner.max_holdback
    }

    /// Size of the initialised linear memory each instance starts with
    /// (mapped copy-on-write, not copied).
    pub fn image_len(&self) -> usize {
        self.inner.image_len
    }

    /// A session: one instance reused for several scans (a request's text
    /// fields, a stream's chunks). Created lazily on the first scan.
    pub fn session(&self) -> Session {
        Session {
            filter: self.clone(),
            live: None,
        }
    }

    /// Scans `text` in a fresh instance.
    pub fn scan(&self, text: &str) -> Result<ScanResult, FilterError> {
        self.session().scan(text)
    }

    /// Scans `text` and applies the action (no policy: errors are returned).
    pub fn apply(&self, text: &str) -> Result<Verdict<String>, FilterError> {
        self.session().apply(text)
    }

    /// Scans `text`, applies the action and, on failure, the policy.
    pub fn check(&self, text: &str) -> Outcome<String> {
        self.session().check(text)
    }

    fn category_count(&self) -> u32 {
        self.inner.categories.len() as u32
    }

    fn instantiate(&self) -> Result<Live, FilterError> {
        let inner = &*self.inner;
        let mut store = new_store(&inner.pre, inner.memory_limit);
        store
            .set_fuel(inner.fuel.base)
            .map_err(|e| FilterError::Instantiate(e.to_string()))?;
        let instance = inner
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify_instantiate(e, store.data().hit))?;
        Live::new(store, &instance, &inner.exports)
    }

    fn outcome(&self, text: &str, result: ScanResult) -> Outcome<String> {
        let hits = result
            .matches
            .iter()
            .filter_map(|m| self.category(m.category).cloned())
            .collect::<Vec<_>>();
        let verdict = match (self.action(), hits.first()) {
            (_, None) => Verdict::Pass,
            (Action::Block, Some(category)) => Verdict::Blocked {
                category: category.clone(),
            },
            (Action::Mask(c), Some(_)) => Verdict::Masked(mask(text, &result.matches, c)),
        };
        Outcome {
            verdict,
            hits,
            error: None,
        }
    }
}

/// One instance used for several scans; see [`Filter::session`]. After a
/// failed call the instance is dropped and the next call starts afresh.
pub struct Session {
    filter: Filter,
    live: Option<Live>,
}

impl Session {
    /// The session's filter.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Scans `text`: every match, and where a stream should hold back.
    pub fn scan(&mut self, text: &str) -> Result<ScanResult, FilterError> {
        let live = match self.live.take() {
            Some(live) => live,
            None => self.filter.instantiate()?,
        };
        let live = self.live.insert(live);
        let fuel = self.filter.inner.fuel.for_scan(text.len());
        let result = live.scan(text, fuel, self.filter.category_count());
        if result.is_err() {
            self.live = None;
        }
        result
    }

    /// Scans `text` and applies the action (no policy: errors are returned).
    pub fn apply(&mut self, text: &str) -> Result<Verdict<String>, FilterError> {
        let result = self.scan(text)?;
        Ok(self.filter.outcome(text, result).verdict)
    }

    /// Scans `text`, applies the action and, on failure, the policy.
    pub fn check(&mut self, text: &str) -> Outcome<String> {
        match self.scan(text) {
            Ok(result) => self.filter.outcome(text, result),
            Err(error) => Outcome::failed(self.filter.policy(), error),
        }
    }
}

impl Live {
    fn new(
        mut store: Store<Limits>,
        instance: &Instance,
        exports: &Exports,
    ) -> Result<Self, FilterError> {
        let missing = |name: &str| FilterError::InvalidModule(format!("export {name} unusable"));
        let memory = instance
            .get_module_export(&mut store, &exports.memory)
            .and_then(Extern::into_memory)
            .ok_or_else(|| missing(abi::EXPORT_MEMORY))?;
        let alloc = instance
            .get_module_export(&mut store, &exports.alloc)
            .and_then(Extern::into_func)
            .and_then(|f| f.typed::<i32, i32>(&store).ok())
            .ok_or_else(|| missing(abi::EXPORT_ALLOC))?;
        let scan = instance
            .get_module_export(&mut store, &exports.scan)
            .and_then(Extern::into_func)
            .and_then(|f| f.typed::<(i32, i32), i64>(&store).ok())
            .ok_or_else(|| missing(abi::EXPORT_SCAN))?;
        Ok(Self {
            store,
            memory,
            alloc,
            scan,
        })
    }

    /// Copies `bytes` into a `weir_alloc` buffer; returns its `(ptr, len)`.
    fn write_input(&mut self, bytes: &[u8]) -> Result<(i32, i32), FilterError> {
        let len =
            i32::try_from(bytes.len()).map_err(|_| FilterError::InputTooLarge(bytes.len()))?;
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .map_err(|e| classify(e, self.store.data().hit))?;
        if self.store.data().hit {
            return Err(FilterError::MemoryLimit);
        }
        let start = ptr as u32 as usize;
        let buffer = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(start..start + bytes.len())
            .filter(|_| ptr != 0)
            .ok_or_else(|| {
                FilterError::Garbage(format!(
                    "weir_alloc({len}) returned {start:#x}, not a buffer in memory"
                ))
            })?;
        buffer.copy_from_slice(bytes);
        Ok((ptr, len))
    }

    fn scan(&mut self, text: &str, fuel: u64, categories: u32) -> Result<ScanResult, FilterError> {
        self.store.data_mut().hit = false;
        self.store
            .set_fuel(fuel)
            .map_err(|e| FilterError::Instantiate(e.to_string()))?;
        let (ptr, len) = self.write_input(text.as_bytes())?;
        let value = self
            .scan
            .call(&mut self.store, (ptr, len))
            .map_err(|e| classify(e, self.store.data().hit))?;
        let (record_ptr, record_len) = abi::split_scan_return(value).map_err(|code| {
            if self.store.data().hit {
                FilterError::MemoryLimit
            } else {
                FilterError::GuestError(code)
            }
        })?;
        let (record_ptr, record_len) = (record_ptr as usize, record_len as usize);
        if record_len > abi::max_record_len(text.len()) {
            return Err(FilterError::Garbage(format!(
                "result record of {record_len} bytes for {} bytes of text",
                text.len()
            )));
        }
        let record = self
            .memory
            .data(&self.store)
            .get(record_ptr..record_ptr + record_len)
            .ok_or_else(|| {
                FilterError::Garbage(format!(
                    "result record {record_ptr:#x}+{record_len} is outside memory"
                ))
            })?;
        abi::decode_result(record, text, categories).map_err(FilterError::Garbage)
    }
}

impl Exports {
    fn of(module: &Module) -> Result<Self, FilterError> {
        Ok(Self {
            memory: export_index(module, abi::EXPORT_MEMORY)?,
            alloc: export_index(module, abi::EXPORT_ALLOC)?,
            scan: export_index(module, abi::EXPORT_SCAN)?,
        })
    }
}

/// The module in binary form (the text format is accepted too).
fn wasm_binary(wasm: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, FilterError> {
    wat::parse_bytes(wasm).map_err(|e| FilterError::InvalidModule(e.to_string()))
}

/// Compiles `wasm`, reusing the module compiled from the same bytes
/// recently (a dictionary change does not recompile the module).
fn compile_cached(wasm: &[u8]) -> Result<Module, FilterError> {
    static CACHE: Mutex<Vec<(Arc<[u8]>, Module)>> = Mutex::new(Vec::new());
    let cached = |cache: &mut Vec<(Arc<[u8]>, Module)>| {
        let at = cache.iter().position(|(bytes, _)| **bytes == *wasm)?;
        let entry = cache.remove(at);
        let module = entry.1.clone();
        cache.push(entry);
        Some(module)
    };
    if let Some(module) = cached(&mut CACHE.lock().unwrap_or_else(PoisonError::into_inner)) {
        return Ok(module);
    }
    let module = crate::engine::compile(wasm)?;
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if cached(&mut cache).is_none() {
        if cache.len() >= MODULE_CACHE {
            cache.remove(0);
        }
        cache.push((Arc::from(wasm), module.clone()));
    }
    Ok(module)
}

fn new_store(pre: &InstancePre<Limits>, memory_limit: usize) -> Store<Limits> {
    let mut store = Store::new(
        pre.module().engine(),
        Limits {
            memory_limit,
            hit: false,
        },
    );
    store.limiter(|limits| limits);
    store
}

/// Maps a failed call to the error kind it stands for.
fn classify(error: wasmtime::Error, memory_hit: bool) -> FilterError {
    if memory_hit {
        return FilterError::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => FilterError::OutOfFuel,
        Some(trap) => FilterError::Trap(trap.to_string()),
        None => FilterError::Trap(format!("{error:#}")),
    }
}

fn classify_instantiate(error: wasmtime::Error, memory_hit: bool) -> FilterError {
    if memory_hit {
        return FilterError::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(_) => classify(error, memory_hit),
        None => FilterError::Instantiate(format!("{error:#}")),
    }
}

fn export_index(module: &Module, name: &str) -> Result<ModuleExport, FilterError> {
    module
        .get_export_index(name)
        .ok_or_else(|| FilterError::InvalidModule(format!("missing export {name}")))
}

/// Checks imports and export types against the ABI.
fn check_module(module: &Module) -> Result<(), FilterError> {
    let imports = module
        .imports()
        .map(|i| format!("{}::{}", i.module(), i.name()))
        .collect::<Vec<_>>();
    if !imports.is_empty() {
        return Err(FilterError::InvalidModule(format!(
            "filters may not import anything; this module imports {}",
            imports.join(", ")
        )));
    }
    match module.get_export(abi::EXPORT_MEMORY) {
        Some(ExternType::Memory(memory)) if !memory.is_64() && !memory.is_shared() => {}
        _ => {
            return Err(FilterError::InvalidModule(
                "missing export `memory` (a 32-bit, unshared linear memory)".to_owned(),
            ));
        }
    }
    let functions: [(&str, &[&str], &[&str]); 4] = [
        (abi::EXPORT_ABI_VERSION, &[], &["i32"]),
        (abi::EXPORT_ALLOC, &["i32"], &["i32"]),
        (abi::EXPORT_INIT, &["i32", "i32"], &["i32"]),
        (abi::EXPORT_SCAN, &["i32", "i32"], &["i64"]),
    ];
    for (name, params, results) in functions {
        let fits = match module.get_export(name) {
            Some(ExternType::Func(ty)) => signature_is(&ty, params, results),
            _ => false,
        };
        if !fits {
            return Err(FilterError::InvalidModule(format!(
                "missing export {name}: func ({}) -> ({})",
                params.join(", "),
                results.join(", ")
            )));
        }
    }
    Ok(())
}

fn signature_is(ty: &FuncType, params: &[&str], results: &[&str]) -> bool {
    fn name(ty: ValType) -> &'static str {
        match ty {
            ValType::I32 => "i32",
            ValType::I64 => "i64",
            _ => "other",
        }
    }
    ty.params().map(name).eq(params.iter().copied())
        && ty.results().map(name).eq(results.iter().copied())
}
