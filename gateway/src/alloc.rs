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

/// The environment variable of the allocator's own switch for transparent
/// huge pages; when it is set, its value decides and the gateway leaves
/// the process as it is.
const ALLOW_THP: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process (Linux
/// `PR_SET_THP_DISABLE`), unless `MIMALLOC_ALLOW_THP` is set. mimalloc asks
/// for huge pages on its arenas (`MADV_HUGEPAGE`), so wherever the kernel's
/// THP mode is `madvise` or `always` a 4 KiB page touched in an arena makes
/// a whole 2 MiB resident: most of an idle gateway's anonymous memory
/// (measured in `loadtest/README.md` § Idle memory). A gateway's heap is
/// small and spread over many connections; the TLB gain of huge pages does
/// not pay for that. Called first in `main`, before threads start; pages
/// already huge stay so. Returns whether THP is now off.
#[allow(unsafe_code)]
pub fn no_transparent_huge_pages() -> bool {
    if std::env::var_os(ALLOW_THP).is_some() {
        return false;
    }
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes no pointers; it
    // sets a flag on the calling process's memory descriptor and fails
    // harmlessly (EINVAL) on kernels without it.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}
