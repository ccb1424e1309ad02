//! What the load generators read of a server process in /proc, shared by
//! the examples that measure one (included with `#[path]`).

/// A `kB` line of /proc/<pid>/status (`VmRSS:`, `VmHWM:`, …), in KiB.
pub fn status_kib(pid: u32, key: &str) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .ok_or_else(|| format!("no {key} for process {pid}"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}
