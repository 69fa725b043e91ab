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
