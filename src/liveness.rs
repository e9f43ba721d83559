//! Whether a journal's owner still runs.
//!
//! A pid names one process only within one pid namespace of one boot of one
//! host. Build containers with host networking share the hostname but each
//! has its own pid namespace: there, another container's pid 57 is nobody,
//! or someone else. So the owner records where its pid is counted
//! ([`PidScope`]), and its pid decides only where that scope is ours;
//! everywhere else the lease does.

use crate::journal::Owner;

/// Whether a journal's owner still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// An owner whose pid cannot be checked from here (another host, pid
    /// namespace or boot, or a journal that does not say) stopped renewing
    /// its lease.
    Expired,
    /// The owner's pid can be checked from here, and its process is gone.
    OwnerDead,
}

impl Liveness {
    pub fn name(self) -> &'static str {
        match self {
            Liveness::Live => "live",
            Liveness::Expired => "expired",
            Liveness::OwnerDead => "owner-dead",
        }
    }
}

/// Where a pid names one process: a host, a pid namespace on it, one boot
/// of its kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidScope {
    pub host: String,
    /// `pid:[INODE]`, as `readlink /proc/self/ns/pid` prints it.
    pub pid_ns: Option<String>,
    /// `/proc/sys/kernel/random/boot_id`: new at every boot.
    pub boot_id: Option<String>,
}

impl PidScope {
    /// This process's scope, as its machine tells it.
    pub fn here() -> PidScope {
        crate::machine::current().pid_scope()
    }

    /// Whether `owner`'s pid names the same process here as where it was
    /// recorded: same host, pid namespace and boot, each known on both
    /// sides.
    pub fn can_check(&self, owner: &Owner) -> bool {
        let known_and_equal =
            |theirs: &Option<String>, ours: &Option<String>| theirs.is_some() && theirs == ours;
        owner.host == self.host
            && known_and_equal(&owner.pid_ns, &self.pid_ns)
            && known_and_equal(&owner.boot_id, &self.boot_id)
    }
}

/// The decision, from facts only. Where the owner's pid can be checked
/// (see [`PidScope::can_check`]) its process decides (restic's rule for
/// stale locks): a running owner keeps its journal even if a renewal is
/// late, a dead one loses it at once. Elsewhere only the lease tells.
/// `pid_running` is asked only where the pid means something.
pub fn judge(
    owner: &Owner,
    here: &PidScope,
    pid_running: impl FnOnce() -> bool,
    now: i64,
    lease_expires_at: i64,
) -> Liveness {
    if here.can_check(owner) {
        if pid_running() {
            Liveness::Live
        } else {
            Liveness::OwnerDead
        }
    } else if now >= lease_expires_at {
        Liveness::Expired
    } else {
        Liveness::Live
    }
}

/// `pid:[DIGITS]`, as the kernel names a pid namespace.
pub fn is_pid_namespace(ns: &str) -> bool {
    ns.strip_prefix("pid:[")
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|inode| {
            (1..=20).contains(&inode.len()) && inode.bytes().all(|b| b.is_ascii_digit())
        })
}

/// A boot id as the kernel prints it: a lowercase UUID.
pub fn is_boot_id(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// This process's scope, read from the kernel.
pub(crate) fn read_scope() -> PidScope {
    PidScope {
        host: hostname(),
        pid_ns: std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .and_then(|link| link.to_str().map(str::to_string))
            .filter(|ns| is_pid_namespace(ns)),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|id| id.trim().to_string())
            .filter(|id| is_boot_id(id)),
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Whether `owner.pid` runs and is the process that recorded itself as
/// `owner`. Dead: gone, a zombie (a killed process its parent has not
/// reaped yet: `kill(pid, 0)` still succeeds on it), or another process
/// (a reused pid, see [`is_recorded_owner`]).
pub(crate) fn process_running(owner: &Owner) -> bool {
    let Ok(pid) = libc::pid_t::try_from(owner.pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    let stat = ProcStat::of(pid);
    exists
        && !stat.as_ref().is_some_and(|s| matches!(s.state, 'Z' | 'X'))
        && stat.is_none_or(|s| {
            is_recorded_owner(
                owner,
                &Started {
                    ticks: s.start_ticks,
                    at: s.started_at(),
                },
            )
        })
}

/// When the process that holds a pid now started, as its kernel tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// Clock ticks since boot: independent of the wall clock.
    pub ticks: u64,
    /// Unix seconds, from the boot time the kernel keeps as wall-clock
    /// seconds: a step of the clock (NTP, a VM resumed) moves it.
    pub at: Option<i64>,
}

/// Whether the process that `started` so is the one that recorded itself as
/// `owner`. Its start ticks decide; an older alitx's owner has none, and
/// only a process started after the owner recorded itself (with 2 s for
/// rounding) is another one.
pub fn is_recorded_owner(owner: &Owner, started: &Started) -> bool {
    match owner.start_ticks {
        Some(ticks) => ticks == started.ticks,
        None => started.at.is_none_or(|at| at <= owner.started_at + 2),
    }
}

/// This process's start in clock ticks since boot.
pub(crate) fn own_start_ticks() -> Option<u64> {
    ProcStat::of(std::process::id() as libc::pid_t).map(|s| s.start_ticks)
}

/// What /proc/<pid>/stat (Linux) tells about a process.
struct ProcStat {
    /// `R`, `S`, `D`, ... ; `Z` zombie, `X` dead.
    state: char,
    /// Start time in clock ticks since boot (field 22).
    start_ticks: u64,
}

impl ProcStat {
    fn of(pid: libc::pid_t) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields are counted after the command name, which may itself
        // contain spaces and parentheses.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let start_ticks = fields.nth(18)?.parse().ok()?;
        Some(ProcStat { state, start_ticks })
    }

    /// The start time in Unix seconds.
    fn started_at(&self) -> Option<i64> {
        let boot: i64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| boot + (self.start_ticks / hz as u64) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::test_journal;
    use std::time::Duration;

    const NS: &str = "pid:[4026531836]";
    const OTHER_NS: &str = "pid:[4026532179]";
    const BOOT: &str = "09c0b6a8-3b80-4c38-8141-e1f0a65b92d9";
    const OTHER_BOOT: &str = "7d1e2f3a-0000-4c38-8141-e1f0a65b92d9";

    fn scope(host: &str, pid_ns: Option<&str>, boot_id: Option<&str>) -> PidScope {
        PidScope {
            host: host.into(),
            pid_ns: pid_ns.map(str::to_string),
            boot_id: boot_id.map(str::to_string),
        }
    }

    #[test]
    fn the_pid_decides_only_in_the_owners_own_scope() {
        use Liveness::*;
        let here = scope("node", Some(NS), Some(BOOT));
        let (now, live_lease, expired_lease) = (1000, 1060, 990);
        // (owner's scope, pid running, lease expires at, expected)
        let table = [
            // Same host, namespace and boot: the process decides.
            (scope("node", Some(NS), Some(BOOT)), true, live_lease, Live),
            (
                scope("node", Some(NS), Some(BOOT)),
                true,
                expired_lease,
                Live,
            ),
            (
                scope("node", Some(NS), Some(BOOT)),
                false,
                live_lease,
                OwnerDead,
            ),
            (
                scope("node", Some(NS), Some(BOOT)),
                false,
                expired_lease,
                OwnerDead,
            ),
            // Another container on this host: its pid means nothing here.
            (
                scope("node", Some(OTHER_NS), Some(BOOT)),
                false,
                live_lease,
                Live,
            ),
            (
                scope("node", Some(OTHER_NS), Some(BOOT)),
                true,
                expired_lease,
                Expired,
            ),
            // Before a reboot: the pid may be anyone's now.
            (
                scope("node", Some(NS), Some(OTHER_BOOT)),
                true,
                expired_lease,
                Expired,
            ),
            (
                scope("node", Some(NS), Some(OTHER_BOOT)),
                false,
                live_lease,
                Live,
            ),
            // Another host.
            (
                scope("other", Some(NS), Some(BOOT)),
                false,
                live_lease,
                Live,
            ),
            (
                scope("other", Some(NS), Some(BOOT)),
                true,
                expired_lease,
                Expired,
            ),
            // An older alitx's journal says neither: the lease decides.
            (scope("node", None, None), false, live_lease, Live),
            (scope("node", None, None), true, expired_lease, Expired),
            (scope("node", Some(NS), None), false, live_lease, Live),
            (
                scope("node", None, Some(BOOT)),
                true,
                expired_lease,
                Expired,
            ),
        ];
        for (i, (theirs, running, lease, expected)) in table.into_iter().enumerate() {
            let mut owner = test_journal().owner;
            (owner.host, owner.pid_ns, owner.boot_id) =
                (theirs.host, theirs.pid_ns, theirs.boot_id);
            assert_eq!(
                judge(&owner, &here, || running, now, lease),
                expected,
                "row {i}"
            );
        }
        // Where this process cannot read its own scope, no pid is checked.
        let mut owner = test_journal().owner;
        (owner.host, owner.pid_ns, owner.boot_id) = ("node".into(), None, None);
        let unknown = scope("node", None, None);
        assert_eq!(judge(&owner, &unknown, || false, now, live_lease), Live);
        assert_eq!(
            judge(&owner, &unknown, || true, now, expired_lease),
            Expired
        );
    }

    #[test]
    fn the_start_ticks_tell_the_owner_whatever_the_clock_did() {
        let recorded_at = 1_000_000;
        let owner = |start_ticks| Owner {
            started_at: recorded_at,
            start_ticks,
            ..test_journal().owner
        };
        let started = |ticks, at| Started {
            ticks,
            at: Some(recorded_at + at),
        };
        // (recorded ticks, the process holding the pid now, expected)
        let table = [
            // The owner itself, as the boot time read back places it: at
            // its start, or moved by a clock step of 10 s either way.
            (Some(500), started(500, -5), true),
            (Some(500), started(500, 10), true),
            (Some(500), started(500, -3600), true),
            // Another process with the owner's pid, before or after it.
            (Some(500), started(900, 10), false),
            (Some(500), started(400, -5), false),
            // An older alitx's owner: the wall clock decides, and a step
            // makes it look reused.
            (None, started(500, -5), true),
            (None, started(500, 2), true),
            (None, started(500, 10), false),
            (
                None,
                Started {
                    ticks: 500,
                    at: None,
                },
                true,
            ),
        ];
        for (i, (ticks, now, expected)) in table.into_iter().enumerate() {
            assert_eq!(is_recorded_owner(&owner(ticks), &now), expected, "row {i}");
        }
    }

    #[test]
    fn this_process_knows_its_scope() {
        let here = PidScope::here();
        assert!(
            here.pid_ns.as_deref().is_some_and(is_pid_namespace),
            "{here:?}"
        );
        assert!(here.boot_id.as_deref().is_some_and(is_boot_id), "{here:?}");
        assert!(here.can_check(&test_journal().owner));
    }

    #[test]
    fn namespace_and_boot_id_shapes() {
        assert!(is_pid_namespace(NS));
        assert!(is_boot_id(BOOT));
        for bad in [
            "",
            "pid:[]",
            "pid:[12a]",
            "net:[4026531836]",
            "pid:[1] ",
            "pid:[123456789012345678901]",
        ] {
            assert!(!is_pid_namespace(bad), "{bad:?}");
        }
        for bad in [
            "",
            "09c0b6a8-3b80-4c38-8141-e1f0a65b92d",
            "09C0B6A8-3B80-4C38-8141-E1F0A65B92D9",
            "09c0b6a8x3b80-4c38-8141-e1f0a65b92d9",
            "../../../../../../../../etc/passwd!!",
        ] {
            assert!(!is_boot_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_zombie_owner_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie, which `kill(pid, 0)` still finds.
        let zombie = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            ProcStat::of(pid as libc::pid_t).is_some_and(|s| s.state == 'Z')
        });
        assert!(zombie, "the child never became a zombie");
        let mut j = test_journal();
        j.owner.pid = pid;
        assert_eq!(j.liveness(), Liveness::OwnerDead);
        child.wait().unwrap();
        assert_eq!(j.liveness(), Liveness::OwnerDead);
    }
}
