//! `anyboot-image`: create, snapshot, roll back, flatten, clone, delete,
//! import/export disk images and manage versioned images (see docs/images.md).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyboot_images::chain::{self, ImageKind};
use anyboot_images::lifecycle;
use anyboot_images::overlay::CreateOptions;
use anyboot_images::versions::VersionedImage;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "anyboot-image", version, about = "Manage anyboot disk images")]
struct Cli {
    /// More log output (repeatable).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a new sparse raw image.
    Create {
        path: PathBuf,
        /// Size, with optional K/M/G/T suffix (powers of 1024).
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Create a copy-on-write overlay on BASE (which is frozen: made read-only).
    Overlay {
        base: PathBuf,
        path: PathBuf,
        /// Virtual size (default: the base's), with optional K/M/G/T suffix.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Cluster size (power of two, 512 to 16M).
        #[arg(long, value_parser = parse_size, default_value = "64K")]
        cluster_size: u64,
    },
    /// Freeze IMAGE's current content as snapshot NAME (kept as IMAGE@NAME)
    /// and continue in a new empty overlay at IMAGE.
    Snapshot { image: PathBuf, name: String },
    /// Show the chain of IMAGE, top first.
    #[command(alias = "list")]
    Info { image: PathBuf },
    /// Discard IMAGE (an overlay) and start over on a snapshot in its chain.
    Rollback {
        image: PathBuf,
        /// The snapshot (a path, or a NAME for IMAGE@NAME); default: IMAGE's base.
        #[arg(long)]
        to: Option<String>,
    },
    /// Write the whole chain of IMAGE into a new standalone raw image OUT.
    #[command(alias = "commit")]
    Flatten { image: PathBuf, out: PathBuf },
    /// Make DST an independent copy of SRC sharing SRC's frozen bases.
    Clone { src: PathBuf, dst: PathBuf },
    /// Delete IMAGE unless it is open or another image depends on it.
    Delete {
        image: PathBuf,
        /// Also look for dependent overlays here (e.g. overlay directories).
        #[arg(long)]
        search: Vec<PathBuf>,
    },
    /// Export IMAGE's content (whole chain) to OUT.
    Export {
        image: PathBuf,
        out: PathBuf,
        #[arg(long, value_enum, default_value = "raw")]
        format: Fmt,
    },
    /// Import SRC (raw or qcow2) as a new raw image OUT.
    Import {
        src: PathBuf,
        out: PathBuf,
        #[arg(long, value_enum, default_value = "raw")]
        format: Fmt,
    },
    /// Versioned images: a directory of frozen versions and a `current` link.
    #[command(subcommand)]
    Version(VersionCmd),
    /// Test helper for the crash tests. With one thread: applies seeded
    /// random writes, trims and zeroings to IMAGE, flushing after each, and
    /// reports each on stdout (`B i kind offset len pattern` before, `F i` once
    /// flushed). With several: each thread writes 4 KiB slots it owns (slot
    /// `k` belongs to thread `k % threads`, so threads share clusters) while
    /// another thread flushes; lines `B thread seq slot pattern` (before),
    /// `D thread seq` (done), `S n` / `E n` (flush n started / ended).
    #[command(hide = true)]
    StressWriter {
        image: PathBuf,
        #[arg(long)]
        seed: u64,
        /// Steps (per thread).
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        threads: u64,
    },
}

#[derive(Subcommand, Debug)]
enum VersionCmd {
    /// Create versioned image DIR with a copy of the raw image FROM as v0001.
    Init { dir: PathBuf, from: PathBuf },
    /// Start DIR/draft.ovl, a writable overlay on the current version.
    Draft { dir: PathBuf },
    /// Freeze the draft as the next version and put it into service.
    Promote { dir: PathBuf },
    /// Put an existing version back into service.
    Set { dir: PathBuf, version: String },
    /// List the versions, marking the current one.
    List { dir: PathBuf },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Fmt {
    Raw,
    Qcow2,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    run(cli.cmd)
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Create { path, size } => {
            lifecycle::create_raw(&path, size)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        Cmd::Overlay {
            base,
            path,
            size,
            cluster_size,
        } => {
            if !cluster_size.is_power_of_two() {
                bail!("--cluster-size must be a power of two");
            }
            let opts = CreateOptions {
                size,
                cluster_bits: cluster_size.trailing_zeros(),
            };
            lifecycle::create_overlay(&path, &base, opts).with_context(|| {
                format!("creating overlay {} on {}", path.display(), base.display())
            })?;
        }
        Cmd::Snapshot { image, name } => {
            let snap = lifecycle::snapshot(&image, &name)
                .with_context(|| format!("snapshotting {}", image.display()))?;
            println!("{}", snap.display());
        }
        Cmd::Info { image } => info(&image)?,
        Cmd::Rollback { image, to } => {
            let to = to.map(|t| {
                let p = PathBuf::from(&t);
                if p.exists() {
                    Ok(p)
                } else {
                    lifecycle::snapshot_path(&image, &t)
                }
            });
            let to = to.transpose()?;
            let target = lifecycle::rollback(&image, to.as_deref())
                .with_context(|| format!("rolling back {}", image.display()))?;
            println!("{} now starts from {}", image.display(), target.display());
        }
        Cmd::Flatten { image, out } => {
            lifecycle::flatten(&image, &out)
                .with_context(|| format!("flattening {}", image.display()))?;
        }
        Cmd::Clone { src, dst } => {
            lifecycle::clone_image(&src, &dst)
                .with_context(|| format!("cloning {}", src.display()))?;
        }
        Cmd::Delete { image, search } => {
            lifecycle::delete(&image, &search)
                .with_context(|| format!("deleting {}", image.display()))?;
        }
        Cmd::Export { image, out, format } => match format {
            Fmt::Raw => lifecycle::flatten(&image, &out)?,
            Fmt::Qcow2 => {
                let tmp = sibling_tmp(&out);
                lifecycle::flatten(&image, &tmp)?;
                let r = qemu_img(&["convert", "-f", "raw", "-O", "qcow2"], &tmp, &out);
                let _ = std::fs::remove_file(&tmp);
                r?;
            }
        },
        Cmd::Import { src, out, format } => match format {
            Fmt::Raw => lifecycle::import_raw(&src, &out)?,
            Fmt::Qcow2 => {
                if out.exists() {
                    bail!("{} exists", out.display());
                }
                qemu_img(&["convert", "-f", "qcow2", "-O", "raw"], &src, &out)?;
            }
        },
        Cmd::Version(v) => version(v)?,
        Cmd::StressWriter {
            image,
            seed,
            count,
            threads: 1,
        } => stress_writer(&image, seed, count)?,
        Cmd::StressWriter {
            image,
            seed,
            count,
            threads,
        } => stress_threads(&image, seed, count, threads)?,
    }
    Ok(())
}

fn sibling_tmp(out: &Path) -> PathBuf {
    out.with_file_name(format!(
        ".{}.export-{}",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ))
}

fn qemu_img(args: &[&str], src: &Path, dst: &Path) -> Result<()> {
    let status = Command::new("qemu-img")
        .args(args)
        .arg(src)
        .arg(dst)
        .status()
        .context("running qemu-img (Debian package qemu-utils)")?;
    if !status.success() {
        bail!("qemu-img {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn info(image: &Path) -> Result<()> {
    if VersionedImage::is_versioned(image) {
        return version(VersionCmd::List {
            dir: image.to_owned(),
        });
    }
    let chain = chain::describe(image).with_context(|| format!("reading {}", image.display()))?;
    for (depth, e) in chain.iter().enumerate() {
        let kind = match e.kind {
            ImageKind::Raw => "raw".to_owned(),
            ImageKind::Overlay => format!("overlay (cluster {} B)", e.cluster_size.unwrap_or(0)),
        };
        println!(
            "{:indent$}{}: {kind}, {} bytes, {} bytes on disk{}{}",
            "",
            e.path.display(),
            e.size,
            e.disk_usage,
            if e.frozen { ", frozen" } else { "" },
            match (e.users.writers, e.users.readers) {
                (0, 0) => String::new(),
                (w, r) => format!(", open by {w} writer(s) and {r} reader(s)"),
            },
            indent = depth * 2
        );
    }
    Ok(())
}

fn version(cmd: VersionCmd) -> Result<()> {
    match cmd {
        VersionCmd::Init { dir, from } => {
            VersionedImage::init(&dir, &from)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        VersionCmd::Draft { dir } => {
            println!("{}", VersionedImage::open(&dir)?.start_draft()?.display());
        }
        VersionCmd::Promote { dir } => {
            println!("{}", VersionedImage::open(&dir)?.promote()?);
        }
        VersionCmd::Set { dir, version } => VersionedImage::open(&dir)?.set_current(&version)?,
        VersionCmd::List { dir } => {
            let v = VersionedImage::open(&dir)?;
            let current = v.current_name()?;
            for (name, _) in v.versions()? {
                let mark = if name == current { "*" } else { " " };
                println!("{mark} {name}");
            }
            if v.draft_path().exists() {
                println!("  {} (draft)", anyboot_images::versions::DRAFT);
            }
        }
    }
    Ok(())
}

/// splitmix64: a tiny seeded generator, so the test can be reproduced from
/// the printed seed without sharing code with this binary.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The byte a stress write puts at device offset `pos` with pattern `pat`.
/// (The crash test computes the same.)
fn stress_byte(pat: u64, pos: u64) -> u8 {
    (pat.wrapping_mul(31).wrapping_add(pos.wrapping_mul(7)) >> 3) as u8 | 1
}

fn stress_writer(image: &Path, seed: u64, count: u64) -> Result<()> {
    let dev = chain::open_image(image, false)?;
    let size = dev.size();
    let mut rng = Rng(seed);
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        let off = rng.below(size);
        let max = (size - off).min(3 * 65536);
        let mut len = 1 + rng.below(max);
        let mut off = off;
        if rng.below(4) != 0 {
            // Mostly sector-aligned, like real initiators.
            off &= !511;
            len = (len + 511) & !511;
            len = len.min(size - off);
        }
        let kind = match rng.below(10) {
            0 => "trim",
            1 => "zero",
            _ => "write",
        };
        let pat = rng.next() >> 8;
        let fua = rng.below(4) == 0;
        writeln!(out, "B {i} {kind} {off} {len} {pat}")?;
        out.flush()?;
        match kind {
            "trim" => dev.trim(off, len)?,
            "zero" => dev.write_zeroes(off, len, false)?,
            _ => {
                let buf: Vec<u8> = (off..off + len).map(|p| stress_byte(pat, p)).collect();
                dev.write_at(&buf, off, fua)?;
            }
        }
        if !(fua && kind == "write") {
            dev.flush()?;
        }
        writeln!(out, "F {i}")?;
        out.flush()?;
    }
    Ok(())
}

/// Slot size of the threaded stress writer.
const SLOT: u64 = 4096;

fn stress_threads(image: &Path, seed: u64, count: u64, threads: u64) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dev = chain::open_image(image, false)?;
    let slots = dev.size() / SLOT;
    if threads == 0 || slots < threads {
        bail!("need 1..={slots} threads");
    }
    // Every line is written and flushed under the stdout lock, so the order of
    // lines is the order of the events they report.
    let say = |line: String| -> Result<()> {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{line}")?;
        o.flush()?;
        Ok(())
    };
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| -> Result<()> {
        let flusher = {
            let (dev, done) = (dev.clone(), done.clone());
            s.spawn(move || -> Result<()> {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    say(format!("S {n}"))?;
                    dev.flush()?;
                    say(format!("E {n}"))?;
                    n += 1;
                }
                Ok(())
            })
        };
        let writers: Vec<_> = (0..threads)
            .map(|t| {
                let dev = dev.clone();
                s.spawn(move || -> Result<()> {
                    let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9e37_79b9));
                    for seq in 0..count {
                        let slot = rng.below(slots / threads) * threads + t;
                        let pat = rng.next() >> 8;
                        let off = slot * SLOT;
                        let buf: Vec<u8> = (off..off + SLOT).map(|p| stress_byte(pat, p)).collect();
                        say(format!("B {t} {seq} {slot} {pat}"))?;
                        dev.write_at(&buf, off, false)?;
                        say(format!("D {t} {seq}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        let mut r = Ok(());
        for w in writers {
            r = r.and(w.join().expect("writer thread"));
        }
        done.store(true, Ordering::Relaxed);
        r.and(flusher.join().expect("flusher thread"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyboot_images::format::DEFAULT_CLUSTER_BITS;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(DEFAULT_CLUSTER_BITS, 16);
    }
}
