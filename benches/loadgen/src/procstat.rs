//! What the kernel says about a process: resident memory (`/proc/PID/status`) and CPU time
//! (`/proc/PID/stat`).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`; 100 on every Linux
/// architecture the benchmarks run on).
const CLK_TCK: f64 = 100.0;

/// A process to watch; `pid` 0 means this process.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    pub pid: u32,
}

impl Proc {
    fn path(&self, file: &str) -> String {
        if self.pid == 0 {
            format!("/proc/self/{file}")
        } else {
            format!("/proc/{}/{file}", self.pid)
        }
    }

    fn status_kib(&self, key: &str) -> anyhow::Result<u64> {
        let path = self.path("status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {key} in {path}"))
    }

    /// Resident set size now (VmRSS), KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// Peak resident set size since the process started (VmHWM), KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmHWM:")
    }

    /// User + system CPU time so far, seconds.
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        let path = self.path("stat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        // The command name (field 2) may contain spaces: count fields after its closing paren.
        let rest = &text[text.rfind(')').context("malformed stat")? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
        let utime: u64 = fields.get(11).context("no utime")?.parse()?;
        let stime: u64 = fields.get(12).context("no stime")?.parse()?;
        Ok((utime + stime) as f64 / CLK_TCK)
    }

    pub fn alive(&self) -> bool {
        std::path::Path::new(&self.path("stat")).exists()
    }
}

/// CPU time of a process over an interval.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    cpu: f64,
    at: Instant,
}

impl CpuMark {
    pub fn take(p: Proc) -> anyhow::Result<CpuMark> {
        Ok(CpuMark {
            cpu: p.cpu_secs()?,
            at: Instant::now(),
        })
    }

    /// (CPU seconds used, wall seconds) since `self`.
    pub fn since(&self, p: Proc) -> anyhow::Result<(f64, f64)> {
        let now = CpuMark::take(p)?;
        Ok((
            now.cpu - self.cpu,
            now.at.duration_since(self.at).as_secs_f64(),
        ))
    }
}

/// CPU time of a group of processes over an interval: the roots and every descendant (found
/// through `/proc/*/stat`'s parent pid at each mark), so a database's or a proxy's worker
/// processes count with their parent. A process that started during the interval counts from
/// its start; one that ended during it is lost (its parent's `cutime` is not read).
#[derive(Debug, Clone)]
pub struct TreeMark {
    cpu: HashMap<u32, f64>,
    at: Instant,
}

impl TreeMark {
    pub fn take(roots: &[u32]) -> TreeMark {
        TreeMark {
            cpu: tree_cpu(roots),
            at: Instant::now(),
        }
    }

    /// (CPU seconds used by the group, wall seconds) since `self`.
    pub fn since(&self, roots: &[u32]) -> (f64, f64) {
        let now = TreeMark::take(roots);
        let used = now
            .cpu
            .iter()
            .map(|(pid, cpu)| (cpu - self.cpu.get(pid).copied().unwrap_or(0.0)).max(0.0))
            .sum();
        (used, now.at.duration_since(self.at).as_secs_f64())
    }
}

/// CPU seconds of each live process in the trees under `roots`.
fn tree_cpu(roots: &[u32]) -> HashMap<u32, f64> {
    let mut parent = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Field 4 (ppid) is the second after the command name's closing paren.
            let ppid = text
                .rfind(')')
                .and_then(|i| text[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent.insert(pid, ppid);
            }
        }
    }
    let in_tree = |mut pid: u32| {
        for _ in 0..64 {
            if roots.contains(&pid) {
                return true;
            }
            match parent.get(&pid) {
                Some(&p) if p != 0 && p != pid => pid = p,
                _ => return false,
            }
        }
        false
    };
    parent
        .keys()
        .copied()
        .filter(|&pid| in_tree(pid))
        .filter_map(|pid| Some((pid, Proc { pid }.cpu_secs().ok()?)))
        .collect()
}

/// The kernel's count of connection attempts dropped at a full listen queue (`ListenDrops` in
/// `/proc/net/netstat`, system wide); `None` where it cannot be read. A dropped SYN is retried by
/// the client after 1 s, then 3 s, 7 s...: a backlog too small for a burst shows up as
/// second-long connect times.
pub fn listen_drops() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names.split_whitespace().position(|n| n == "ListenDrops")?;
        return values.split_whitespace().nth(i)?.parse().ok();
    }
    None
}
