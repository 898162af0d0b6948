//! The `certgate` binary.

/// mimalloc serves the many small, short-lived allocations of a request (headers, JSON,
/// TLS records) from per-thread pages: glibc's malloc and free were an eighth of a cached
/// GET's samples.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
