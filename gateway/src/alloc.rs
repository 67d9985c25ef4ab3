//! The global allocator's controls (mimalloc, set in `main.rs`).

/// Asks the allocator to return the memory this thread freed to the
/// system now rather than after its purge delay, which on a thread that
/// goes idle never comes (a profile's symbol tables, a filter's compile).
#[allow(unsafe_code)]
pub fn give_back_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions; it
    // only walks the calling thread's mimalloc heap and the shared arenas,
    // and is safe to call on any thread at any time (it also works, doing
    // little, when mimalloc is not the global allocator, as in unit tests).
    unsafe { libmimalloc_sys::mi_collect(true) };
}
