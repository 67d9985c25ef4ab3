//! The global allocator (mimalloc, set in `main.rs`) and its controls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment every `mi_malloc` block of at least this many bytes has
/// (mimalloc's `MI_MAX_ALIGN_SIZE` on 64-bit targets, where blocks of 16
/// bytes and more come in multiples of 16 bytes; the 8-byte class is
/// 8-aligned).
const MALLOC_ALIGN: usize = 16;

/// mimalloc as the global allocator, calling its plain entry points for
/// the alignments every block has anyway. The `mimalloc` crate's
/// `MiMalloc` calls `mi_malloc_aligned` for every allocation, whose extra
/// checks (and, for blocks over 1 KiB, its generic path) cost ~80
/// instructions a call: ~4.5k of the ~71k instructions of a proxied GET
/// (`loadtest/budget.py --callgrind`, ~58 allocations a request).
pub struct Allocator;

/// Whether `mi_malloc(layout.size())` is aligned enough for `layout`.
fn plain(layout: &Layout) -> bool {
    layout.align() <= MALLOC_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every method forwards to the mimalloc function that honours the
// layout: the plain ones only where `plain` shows that mimalloc's own
// alignment covers it (see `MALLOC_ALIGN`), the `_aligned` ones otherwise.
// mimalloc frees any of its blocks with `mi_free`, whichever entry point
// made it, and `mi_realloc` keeps the block's alignment when the layout's is
// covered by the plain one. Null is returned on failure, as `GlobalAlloc`
// requires.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl; `ptr` came from this allocator.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; `ptr` came from this allocator with
        // `layout`, and the new block must fit `new_size` at the same
        // alignment, which `plain` checks against the new size.
        unsafe {
            let new = Layout::from_size_align_unchecked(new_size, layout.align());
            if plain(&new) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// Asks the allocator to return the memory this thread freed to the
/// system now rather than after its purge delay, which on a thread that
/// goes idle never comes (a profile's symbol tables, a filter's compile).
pub fn give_back_freed_memory() {
    collect(true);
}

/// Gives back, once a second, the memory any thread freed more than the
/// allocator's purge delay ago (mimalloc: 1 s). mimalloc purges freed
/// pages only when some thread next calls into it after that delay; a
/// proxy worker that goes idle after a burst (a thousand clients that
/// connect at once and then wait) never does, and an idle gateway kept
/// what the burst freed: ~13 MiB after 1,000 such clients, ~47 MiB after
/// 10,000 (`loadtest/README.md` § Idle memory). The purge is process-wide,
/// so one task on any thread serves every worker; when nothing has
/// expired it returns at once.
pub async fn purge_freed_memory() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        collect(false);
    }
}

/// `mi_collect(force)`: the calling thread's freed pages, and the
/// process's expired (or, forced, all) purges.
#[allow(unsafe_code)]
fn collect(force: bool) {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions; it
    // only walks the calling thread's mimalloc heap and the shared arenas,
    // and is safe to call on any thread at any time (it also works, doing
    // little, when mimalloc is not the global allocator, as in unit tests).
    unsafe { libmimalloc_sys::mi_collect(force) };
}

/// Takes this executable's machine code out of the process's resident
/// pages (`MADV_DONTNEED` on the file mapping that holds `.text`): the
/// code that keeps running faults back in from the page cache (minor
/// faults, no disk read while another mapping or the cache holds it);
/// the rest stays out. Called after a Wasm filter compiles: the compiler
/// paged in ~6.5 MiB of code that the gateway then does not run until
/// the next compile. Safe for the code pages because they are never
/// written (a private, read-and-execute mapping of the file: dropping a
/// page loses nothing that the file does not hold). Returns the bytes of
/// the mapping, or why nothing was done.
pub fn release_code_pages() -> Result<usize, String> {
    let (start, end) = code_mapping()?;
    advise_dont_need(start, end - start)?;
    Ok(end - start)
}

/// The address range of the read-and-execute private file mapping that
/// holds this code (`/proc/self/maps`).
fn code_mapping() -> Result<(usize, usize), String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let here = code_mapping as *const () as usize;
    maps.lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let (from, to) = range.split_once('-')?;
            let from = usize::from_str_radix(from, 16).ok()?;
            let to = usize::from_str_radix(to, 16).ok()?;
            let inode = fields.nth(2)?;
            (from <= here && here < to && perms == "r-xp" && inode != "0").then_some((from, to))
        })
        .ok_or_else(|| "the code mapping was not found".to_owned())
}

#[allow(unsafe_code)]
fn advise_dont_need(start: usize, len: usize) -> Result<(), String> {
    // SAFETY: [start, start + len) is a whole mapping read from
    // /proc/self/maps that holds this very function: a private file
    // mapping with read and execute rights only, so its pages can never
    // have been written and `MADV_DONTNEED` only drops page-table entries
    // that the next access refills from the same file (threads running
    // code there meanwhile fault it back in). No Rust object lives in it.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// The environment variable of the allocator's own switch for transparent
/// huge pages; when it is set, its value decides and the gateway leaves
/// the process as it is.
const ALLOW_THP: &std::ffi::CStr = c"MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process (Linux
/// `PR_SET_THP_DISABLE`), unless `MIMALLOC_ALLOW_THP` is set. mimalloc asks
/// for huge pages on its arenas (`MADV_HUGEPAGE`), so wherever the kernel's
/// THP mode is `madvise` or `always` a 4 KiB page touched in an arena makes
/// a whole 2 MiB resident: most of an idle gateway's anonymous memory
/// (measured in `loadtest/README.md` § Idle memory). A gateway's heap is
/// small and spread over many connections; the TLB gain of huge pages does
/// not pay for that. Pages already huge stay so: `weir` calls this before
/// `main`, before its first allocation (see `THP_OFF_AT_LOAD` in
/// `main.rs`). Allocates nothing; [`thp_off`] says whether it turned THP
/// off.
#[allow(unsafe_code)]
pub fn no_transparent_huge_pages() {
    // SAFETY: `getenv` reads the environment through a NUL-terminated name;
    // the pointer it returns is only compared with null, never read, so a
    // concurrent `setenv` (none runs before `main`, where this is called
    // from) could not make it dangle in a way that matters.
    if !unsafe { libc::getenv(ALLOW_THP.as_ptr()) }.is_null() {
        return;
    }
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes no pointers; it
    // sets a flag on the calling process's memory descriptor and fails
    // harmlessly (EINVAL) on kernels without it.
    let off = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 };
    THP_OFF.store(off, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`no_transparent_huge_pages`] turned THP off.
pub fn thp_off() -> bool {
    THP_OFF.load(std::sync::atomic::Ordering::Relaxed)
}

static THP_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Every layout gets a block at its alignment, zeroed when asked, and
    /// keeps its bytes and alignment through growing and shrinking.
    #[test]
    #[allow(unsafe_code)]
    fn blocks_honour_every_alignment_through_realloc() {
        let sizes = [
            1, 7, 8, 9, 15, 16, 17, 24, 31, 48, 100, 1000, 1025, 4096, 70_000,
        ];
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096, 65_536] {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; each block is written within its
                // size, reallocated with the layout it has, and freed once.
                unsafe {
                    let zeroed = Allocator.alloc_zeroed(layout);
                    assert!(!zeroed.is_null());
                    assert_eq!(zeroed as usize % align, 0, "zeroed {size}/{align}");
                    assert!(
                        std::slice::from_raw_parts(zeroed, size)
                            .iter()
                            .all(|&b| b == 0)
                    );
                    Allocator.dealloc(zeroed, layout);

                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{size}/{align}");
                    for i in 0..size {
                        *p.add(i) = i as u8;
                    }
                    let mut at = (p, layout);
                    for &new_size in &sizes {
                        let q = Allocator.realloc(at.0, at.1, new_size);
                        assert!(!q.is_null());
                        assert_eq!(q as usize % align, 0, "{size}->{new_size}/{align}");
                        let kept = new_size.min(at.1.size());
                        for i in 0..kept {
                            assert_eq!(*q.add(i), i as u8, "{size}->{new_size}/{align} at {i}");
                        }
                        for i in kept..new_size {
                            *q.add(i) = i as u8;
                        }
                        at = (q, Layout::from_size_align(new_size, align).unwrap());
                    }
                    Allocator.dealloc(at.0, at.1);
                }
            }
        }
    }

    /// Resident KiB of the code mapping ([`code_mapping`]).
    fn code_rss_kib() -> u64 {
        let (start, _) = code_mapping().unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let header = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
        let kib = lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .unwrap_or_else(|| panic!("no smaps entry at {header}"));
        kib.trim().trim_end_matches(" kB").parse().unwrap()
    }

    /// The code mapping leaves the resident set, and code keeps running
    /// from it afterwards (faulted back in from the page cache).
    #[test]
    fn code_pages_are_released_and_refault() {
        let before = code_rss_kib();
        let len = release_code_pages().expect("released");
        let after = code_rss_kib();
        assert!(len > 0);
        assert!(after < before, "resident code {before} KiB -> {after} KiB");
        let words: Vec<String> = (0..1000).map(|i| format!("w{i}")).collect();
        assert_eq!(words.join(",").split(',').count(), 1000);
        // Again: the same mapping.
        assert_eq!(release_code_pages().expect("released again"), len);
    }
}
