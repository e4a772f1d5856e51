//! Process-wide memory settings.

/// Stops the kernel from backing this process's memory with transparent
/// huge pages.
///
/// mimalloc asks for huge pages on its large regions, and the kernel then
/// zeroes 2 MiB at a time whenever the allocator touches fresh memory. A
/// counter allocates fresh memory all the time (memtables, decoded batches,
/// copied data), so that zeroing was about a fifth of a catching-up
/// counter's writer thread. Without huge pages, a counter that missed
/// 1,000,000 items caught up in 4.3-4.4 s instead of 5.4-6.9 s, and writes
/// during the copy kept 90% of their steady rate instead of 72-81%, with
/// bulk and single-item writes unchanged (docs/benchmarks.md).
///
/// The flag applies to memory touched from now on, so call it first thing
/// in `main`. A kernel without the call just keeps its default.
pub fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets a flag on the
    // calling process's memory map.
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot disable transparent huge pages"
        );
    }
}
