fn main() {
    reuse_large_buffers();
    std::process::exit(alitx::cli::main());
}

/// Parts and ranged GETs are buffers of several MiB, allocated and freed
/// all the time. glibc maps each one anew above its mmap threshold, and the
/// kernel faults in and zeroes every page: a quarter of `verify`'s CPU on a
/// 1 GiB tarball. Keep them on the heap instead, where freed ones are
/// reused; memory stays bounded by `--concurrency` as before. One arena:
/// a buffer freed in one thread's arena is never reused by another's, and
/// with the local store's reads on blocking threads, an arena per thread
/// held 249 MiB where the buffers alive never exceed about 100.
fn reuse_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
