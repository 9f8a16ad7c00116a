//! Resident memory of this process, from `/proc/self/status` (Linux).

/// Current and peak resident set size in bytes, where the system tells.
pub fn resident() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resident memory once it stops falling: a dropped adapter's engine thread
/// frees its context (~85 MB on the bench model after a 512-token prompt)
/// within a second of the drop, which would otherwise be counted against
/// the next backend measured. Stable means three readings 100 ms apart
/// within 1 MiB; waits at most 3 s.
pub fn settled() -> Option<(u64, u64)> {
    let mut last = resident()?;
    let mut stable = 0;
    for _ in 0..30 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = resident()?;
        stable = if now.0.abs_diff(last.0) < 1 << 20 {
            stable + 1
        } else {
            0
        };
        last = now;
        if stable == 3 {
            break;
        }
    }
    Some(last)
}
