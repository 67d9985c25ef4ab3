//! The process sandbox both binaries put themselves in once their
//! listeners are bound and their libraries loaded, before they touch
//! untrusted bytes (feature `sandbox`; Linux only):
//!
//! 1. `no_new_privs`: no exec of a set-uid program can raise privileges;
//! 2. Landlock: the file system shrinks to the paths given, read-only or
//!    read-write ([`Rules`]); everything else is refused with `EACCES`;
//! 3. seccomp-bpf: system calls a server never needs are refused with
//!    `EPERM` ([`DENIED`]), and so are sockets of families other than Unix,
//!    IPv4 and IPv6.
//!
//! The seccomp filter is a deny-list, not an allow-list: ONNX Runtime (and
//! the CUDA libraries it loads), wasmtime and glibc use a wide and changing
//! set of calls (`mmap` flavours, `futex`, `clone3`, `rseq`, `ioctl` on
//! device files, `membarrier`, `sched_*`, `io_uring` in some builds), and
//! an allow-list that misses one kills a request path that was never
//! exercised in a test. What an attacker who runs code in the process wants
//! first (exec a shell, trace or read another process, load a kernel
//! module, change mounts or namespaces, raw or packet sockets, BPF) is
//! refused. Landlock applies to the calling thread and the threads it
//! starts afterwards, so [`apply`] must run before any other thread exists
//! (the async runtime's included); the seccomp filter is synchronised to
//! every thread anyway.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Always; a kernel without Landlock or seccomp is an error.
    On,
    /// Never.
    Off,
    /// Wherever the kernel supports it (the default): what could not be
    /// applied is reported, not an error.
    #[default]
    Auto,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            other => Err(format!("{other:?} is not on, off or auto")),
        }
    }
}

/// The file-system rules: what stays reachable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Files and folders (and everything beneath) that may be read.
    pub read: Vec<PathBuf>,
    /// Files and folders that may be read and written (created, removed).
    pub write: Vec<PathBuf>,
}

impl Rules {
    /// What every process needs: the dynamic loader's libraries and the
    /// name service files (resolving an etcd host name), `/proc` and
    /// `/sys` (CPU counts, cgroup limits, ONNX Runtime's CPU detection),
    /// `/dev/null` and the random devices, for reading.
    pub fn base() -> Self {
        let read = [
            "/lib",
            "/lib64",
            "/usr/lib",
            "/usr/lib64",
            "/etc/ld.so.cache",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/nsswitch.conf",
            "/etc/gai.conf",
            "/etc/host.conf",
            "/etc/localtime",
            "/proc",
            "/sys",
            "/dev/null",
            "/dev/urandom",
            "/dev/random",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        Self {
            read,
            write: Vec::new(),
        }
    }

    /// Adds a path that may be read.
    pub fn read(mut self, path: impl AsRef<Path>) -> Self {
        self.read.push(path.as_ref().to_path_buf());
        self
    }

    /// Adds a path that may be read and written.
    pub fn write(mut self, path: impl AsRef<Path>) -> Self {
        self.write.push(path.as_ref().to_path_buf());
        self
    }
}

/// What [`apply`] did, for the start-up log line and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// Landlock: `full`, `partial` (an older kernel: some rights not
    /// enforced), or `off`.
    pub landlock: &'static str,
    /// The seccomp filter is installed.
    pub seccomp: bool,
    /// Why something was not applied (kernel support).
    pub missing: Vec<String>,
}

impl Report {
    /// Whether any layer is in force.
    pub fn enabled(&self) -> bool {
        self.no_new_privs || self.landlock != "off" || self.seccomp
    }
}

/// The sandbox state as the readiness answers show it (`/readyz` of the
/// gateway, `/v2/health/ready` of the engine): `report` is what [`apply`]
/// gave, `None` when the process did not enter the sandbox.
pub fn detail(report: Option<&Report>) -> serde_json::Value {
    match report {
        Some(r) => serde_json::json!({
            "enabled": r.enabled(),
            "no_new_privs": r.no_new_privs,
            "landlock": r.landlock,
            "seccomp": r.seccomp,
        }),
        None => serde_json::json!({ "enabled": false }),
    }
}

/// System calls refused with `EPERM` (see the module documentation).
#[cfg(target_os = "linux")]
pub const DENIED: &[(&str, i64)] = &[
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("setns", libc::SYS_setns),
    ("unshare", libc::SYS_unshare),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("quotactl", libc::SYS_quotactl),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
];

/// Puts the calling process in the sandbox (`mode` permitting). Call it
/// before starting any thread. `Err` only for `Mode::On` on a kernel that
/// cannot, or for rules that cannot be built.
#[cfg(target_os = "linux")]
pub fn apply(mode: Mode, rules: &Rules, allow_perf: bool) -> Result<Report, String> {
    use landlock::{
        ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, path_beneath_rules,
    };

    let mut report = Report {
        landlock: "off",
        ..Report::default()
    };
    if mode == Mode::Off {
        return Ok(report);
    }
    // Landlock binds the calling thread and the threads it starts later,
    // not threads already running: say so rather than pretend.
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count);
    if threads > 1 {
        let why = format!("Landlock binds only new threads: {threads} were already running");
        if mode == Mode::On {
            return Err(why);
        }
        report.missing.push(why);
    }
    let abi = ABI::V5;
    let level = if mode == Mode::On {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let landlock = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(&rules.read, AccessFs::from_read(abi))))
        .and_then(|r| r.add_rules(path_beneath_rules(&rules.write, AccessFs::from_all(abi))))
        .and_then(|r| r.restrict_self());
    match landlock {
        Ok(status) => {
            report.no_new_privs = status.no_new_privs;
            report.landlock = match status.ruleset {
                RulesetStatus::FullyEnforced => "full",
                RulesetStatus::PartiallyEnforced => "partial",
                RulesetStatus::NotEnforced => {
                    report.missing.push("Landlock (kernel support)".to_owned());
                    "off"
                }
            };
        }
        Err(e) if mode == Mode::On => return Err(format!("Landlock: {e}")),
        Err(e) => report.missing.push(format!("Landlock: {e}")),
    }
    // Installing the filter sets no_new_privs first (seccomp requires it).
    match seccomp_filter(allow_perf).and_then(|f| {
        seccompiler::apply_filter_all_threads(&f).map_err(|e| format!("seccomp: {e}"))
    }) {
        Ok(()) => {
            report.seccomp = true;
            report.no_new_privs = true;
        }
        Err(e) if mode == Mode::On => return Err(e),
        Err(e) => report.missing.push(e),
    }
    Ok(report)
}

/// Not Linux: nothing to apply; `Mode::On` is an error.
#[cfg(not(target_os = "linux"))]
pub fn apply(mode: Mode, _rules: &Rules, _allow_perf: bool) -> Result<Report, String> {
    match mode {
        Mode::On => Err("the sandbox needs Linux (Landlock and seccomp)".to_owned()),
        _ => Ok(Report {
            landlock: "off",
            missing: vec!["Landlock and seccomp (not Linux)".to_owned()],
            ..Report::default()
        }),
    }
}

#[cfg(target_os = "linux")]
fn seccomp_filter(allow_perf: bool) -> Result<seccompiler::BpfProgram, String> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .filter(|(name, _)| !(allow_perf && *name == "perf_event_open"))
        .map(|&(_, nr)| (nr, Vec::new()))
        .collect();
    // socket(family, ...) for any family but Unix, IPv4 and IPv6.
    let not = |family: i32| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, family as u64)
            .map_err(|e| format!("seccomp rule: {e}"))
    };
    let other_family = SeccompRule::new(vec![
        not(libc::AF_UNIX)?,
        not(libc::AF_INET)?,
        not(libc::AF_INET6)?,
    ])
    .map_err(|e| format!("seccomp rule: {e}"))?;
    rules.insert(libc::SYS_socket, vec![other_family]);
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e}"))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("seccomp filter: {e}"))
}

/// `NoNewPrivs` and `Seccomp` of `/proc/<pid>/status` (`self` for this
/// process): how to check a running process from outside.
pub fn proc_status(pid: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("NoNewPrivs:")?, field("Seccomp:")?))
}
