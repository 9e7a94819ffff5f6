"""The macOS Seatbelt profile for the python tool (run with `/usr/bin/sandbox-exec -p PROFILE`).

Modelled on Codex's base policy (openai/codex codex-rs/core/src/seatbelt_base_policy.sbpl): deny by
default; processes, sysctl reads, /dev/null and POSIX semaphores (multiprocessing) allowed; reading
only the system and the Python install; writing only the scratch dir and a private TMPDIR; network
only when the user turned it on. Paths are given resolved, as Seatbelt matches real paths
(/tmp is /private/tmp on macOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

_BASE = """\
(version 1)
(deny default)

; children inherit the profile: subprocess and multiprocessing work, inside the same box
(allow process-exec)
(allow process-fork)
(allow signal (target same-sandbox))
(allow process-info* (target same-sandbox))
(allow user-preference-read)
(allow mach-host*)

(allow sysctl-read
  (sysctl-name "hw.activecpu")
  (sysctl-name "hw.byteorder")
  (sysctl-name "hw.cachelinesize_compat")
  (sysctl-name "hw.cpufamily")
  (sysctl-name "hw.cputype")
  (sysctl-name "hw.logicalcpu")
  (sysctl-name "hw.logicalcpu_max")
  (sysctl-name "hw.machine")
  (sysctl-name "hw.memsize")
  (sysctl-name "hw.model")
  (sysctl-name "hw.ncpu")
  (sysctl-name "hw.nperflevels")
  (sysctl-name "hw.pagesize")
  (sysctl-name "hw.pagesize_compat")
  (sysctl-name "hw.physicalcpu")
  (sysctl-name "hw.physicalcpu_max")
  (sysctl-name-prefix "hw.optional.")
  (sysctl-name-prefix "hw.perflevel")
  (sysctl-name "kern.argmax")
  (sysctl-name "kern.hostname")
  (sysctl-name "kern.maxfilesperproc")
  (sysctl-name "kern.maxproc")
  (sysctl-name "kern.osproductversion")
  (sysctl-name "kern.osrelease")
  (sysctl-name "kern.ostype")
  (sysctl-name "kern.osvariant_status")
  (sysctl-name "kern.osversion")
  (sysctl-name "kern.secure_kernel")
  (sysctl-name "kern.usrstack64")
  (sysctl-name "kern.version")
  (sysctl-name "machdep.cpu.brand_string")
  (sysctl-name "sysctl.proc_cputype")
  (sysctl-name "vm.loadavg")
  (sysctl-name-prefix "kern.proc.pgrp.")
  (sysctl-name-prefix "kern.proc.pid."))

; getpwuid() and friends
(allow mach-lookup (global-name "com.apple.system.opendirectoryd.libinfo"))
; multiprocessing's SemLock
(allow ipc-posix-sem)

(allow file-write-data
  (require-all (path "/dev/null") (vnode-type CHARACTER-DEVICE)))
(allow file-read* file-write-data file-ioctl
  (literal "/dev/null") (literal "/dev/zero") (literal "/dev/random") (literal "/dev/urandom")
  (literal "/dev/stdin") (literal "/dev/stdout") (literal "/dev/stderr") (regex #"^/dev/fd/"))
; stat() anywhere (path resolution walks every parent); listing and reading stay restricted
(allow file-read-metadata)

; the system, read-only
(allow file-read*
  (literal "/")
  (subpath "/usr")
  (subpath "/bin")
  (subpath "/sbin")
  (subpath "/System")
  (subpath "/Library")
  (subpath "/private/etc")
  (subpath "/private/var/db/timezone")
  (subpath "/opt/homebrew")
  (subpath "/usr/local"))
"""

_NETWORK = """\
; network: on for this session (--python-network)
(allow network-outbound)
(allow network-inbound)
(allow system-socket)
(allow mach-lookup
  (global-name "com.apple.dnssd.service")
  (global-name "com.apple.SystemConfiguration.DNSConfiguration")
  (global-name "com.apple.SystemConfiguration.configd")
  (global-name "com.apple.networkd")
  (global-name "com.apple.trustd.agent")
  (global-name "com.apple.ocspd"))
(allow sysctl-read (sysctl-name-prefix "net.routetable."))
"""


def _quote(path: Path) -> str:
    """An SBPL string literal."""
    text = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _subpaths(paths: Sequence[Path]) -> str:
    return "\n".join(f"  (subpath {_quote(p)})" for p in paths)


def profile(*, readable: Sequence[Path], writable: Sequence[Path], network: bool) -> str:
    """The whole SBPL profile. `readable`: the Python install and the worker's directory;
    `writable`: the scratch dir and the private TMPDIR (readable too)."""
    text = _BASE
    text += f"\n; the Python install, read-only\n(allow file-read*\n{_subpaths(readable)})\n"
    both = _subpaths(writable)
    text += f"\n; the scratch dir and private TMPDIR\n(allow file-read* file-write*\n{both})\n"
    if network:
        text += "\n" + _NETWORK
    return text


def argv(
    *,
    readable: Sequence[Path],
    writable: Sequence[Path],
    network: bool,
    sandbox_exec: str = "/usr/bin/sandbox-exec",
) -> list[str]:
    """The command prefix that runs a program under the profile."""
    text = profile(readable=readable, writable=writable, network=network)
    return [sandbox_exec, "-p", text]
