//! Shared pieces of the peer benchmarks: a side-by-side results table with
//! ratios against the peers. Each protocol's benchmark is a binary in
//! `src/bin/`, started by `cargo xtask bench NAME` in release mode.

use std::fmt::Write;

/// One measured row: a workload, then one figure per server.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    /// (server, value); the first server is ours.
    pub values: Vec<(String, f64)>,
}

/// Renders rows as a table with `unit` and, for every peer, ours/peer.
pub fn table(title: &str, unit: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## {title} ({unit}; ratio = anyboot / peer, higher is better)"
    );
    for r in rows {
        let ours = r.values.first().map(|v| v.1).unwrap_or(0.0);
        let _ = write!(out, "{:<40}", r.workload);
        for (i, (name, v)) in r.values.iter().enumerate() {
            if i == 0 {
                let _ = write!(out, " {name}: {v:>10.1}");
            } else {
                let ratio = if *v > 0.0 { ours / v } else { f64::NAN };
                let _ = write!(out, " | {name}: {v:>10.1} ({ratio:.2}x)");
            }
        }
        out.push('\n');
    }
    out
}

/// The median of `v` (the upper one of an even count); alternating runs of a
/// noisy shared machine are summed up by it, so one burst of noise moves one
/// run, not the row.
pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "median of no runs");
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// CPU seconds (user + system) used so far by this process's children that
/// have been waited for (and their waited-for descendants). The difference
/// around a client run that was waited for is that client's own cost.
pub fn reaped_children_cpu_seconds() -> f64 {
    rusage_cpu_seconds(libc::RUSAGE_CHILDREN)
}

/// CPU seconds (user + system) of this whole process, all its threads: a
/// bench whose clients are its own threads measures them with it.
pub fn own_cpu_seconds() -> f64 {
    rusage_cpu_seconds(libc::RUSAGE_SELF)
}

fn rusage_cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into the rusage we own; zeroed is valid.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Restricts every thread of process `pid` to `cpus` (threads and children it
/// creates later inherit it): a benchmark places a server and its client on
/// one CPU to measure work per request without cross-CPU wake-ups.
pub fn pin_process(pid: u32, cpus: &[usize]) -> std::io::Result<()> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = t?.file_name().to_str().and_then(|s| s.parse().ok()) {
            match pin_thread(tid, cpus) {
                // The thread ended after it was listed (an idle pool thread).
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                r => r?,
            }
        }
    }
    Ok(())
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
pub fn pin_thread(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, and the
    // pointer and size passed describe it exactly.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Every CPU this machine has online, for undoing a pin.
pub fn all_cpus() -> Vec<usize> {
    // Not available_parallelism: it reports the calling thread's own mask,
    // which may be pinned.
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (0..usize::try_from(n).unwrap_or(1).max(1)).collect()
}
