"""Measuring on a device over SSH: `gtnpipe bench ARTIFACT --remote USER@HOST` and
`gtnpipe latency-table --device NAME --remote USER@HOST`.

The system OpenSSH client does the work (`ssh`, `scp`), so the user's ~/.ssh/config, keys, agent and jump hosts
apply as they do in a shell; `--ssh-option` adds `-o` options (they come first: ssh keeps the first value it
gets for an option, so they override gtnpipe's defaults below). One round trip:

1. connect: `ssh TARGET <gtnpipe> --version` (BatchMode: a password prompt fails instead of waiting for a
   keyboard that CI does not have);
2. gtnpipe, version: the device has a gtnpipe (`--remote-gtnpipe` says where), of this one's version (the artifact
   and kit formats are defined by it);
3. runtime: `gtnpipe devices runtimes --json` there must list the artifact's (or profile's) runtime as installed;
4. copy: `scp -r` of the folder into a fresh `mktemp -d` on the device;
5. run: the torch-free `gtnpipe bench DIR --json` (or `latency-table --kit DIR --json`) there;
6. fetch: `scp` of the file it wrote (bench.json, or the table) back, written atomically here.

The remote temporary folder is removed at the end, whatever happened. Each failure is a RemoteError naming the
step and what to do. Torch-free: this module needs only the OpenSSH client.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtnpipe import __version__
from gtnpipe.errors import GtnpipeError
from gtnpipe.fsutil import atomic_write_bytes

__all__ = ["DEFAULT_SSH_OPTIONS", "Remote", "RemoteError", "STEPS", "bench_remote"]

STEPS = ("connect", "gtnpipe", "version", "runtime", "copy", "run", "fetch")
# Appended after the user's options (ssh keeps the first value given): no prompts, and a dead link fails in about
# a minute instead of hanging a CI job until its limit
DEFAULT_SSH_OPTIONS = ("BatchMode=yes", "ConnectTimeout=20", "ServerAliveInterval=15", "ServerAliveCountMax=4")
SSH_FAILED = 255  # ssh's own exit status when it could not connect or authenticate
NOT_FOUND = 127  # the remote shell's: command not found
TAIL_CHARS = 1500  # how much of a remote command's stderr an error quotes


class RemoteError(GtnpipeError):
    """A step of a remote benchmark or calibration failed (`step` is one of STEPS)."""

    def __init__(self, target: str, step: str, message: str) -> None:
        assert step in STEPS, step
        self.target, self.step = target, step
        super().__init__(f"remote {target}, step '{step}': {message}")


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= TAIL_CHARS else "..." + text[-TAIL_CHARS:]


@dataclass(frozen=True)
class Remote:
    """A device reachable by ssh as `target` (USER@HOST, or a Host alias of ~/.ssh/config)."""

    target: str
    ssh_options: tuple[str, ...] = ()  # each an ssh -o option, "Port=2222" or "IdentityFile=~/.ssh/jetson"
    # the gtnpipe command on the device, as its shell reads it (a non-interactive ssh session has a short PATH:
    # give the venv's path, e.g. ~/venv/bin/gtnpipe); passed unquoted, so ~ and $HOME expand there
    gtnpipe: str = "gtnpipe"

    def __post_init__(self) -> None:
        if not self.target or self.target.startswith("-") or any(c.isspace() for c in self.target):
            raise GtnpipeError(f"--remote {self.target!r}: give the device as USER@HOST (or a Host of ~/.ssh/config)")
        for option in self.ssh_options:
            if "=" not in option or option.startswith("-"):
                raise GtnpipeError(f"--ssh-option {option!r}: give one ssh -o option as NAME=VALUE, e.g. Port=2222 or "
                                   "IdentityFile=~/.ssh/device_key")

    def _options(self) -> list[str]:
        return [arg for option in (*self.ssh_options, *DEFAULT_SSH_OPTIONS) for arg in ("-o", option)]

    def _ssh(self, step: str, command: str) -> subprocess.CompletedProcess[str]:
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise RemoteError(self.target, "connect", f"the OpenSSH client ({tool}) is not installed here; install it "
                                  "(Debian/Ubuntu: apt-get install openssh-client)")
        done = subprocess.run(["ssh", *self._options(), self.target, command], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if done.returncode == SSH_FAILED:
            raise RemoteError(self.target, "connect" if step in ("connect", "gtnpipe") else step,
                              f"ssh could not reach or log in to {self.target}: {_tail(done.stderr)}. Check that "
                              f"'ssh {self.target} true' works without a prompt (a key in ssh-agent or ~/.ssh/config; "
                              "--ssh-option NAME=VALUE passes ssh -o options such as Port or IdentityFile)")
        return done

    def gtnpipe_command(self, *args: str) -> str:
        return " ".join([self.gtnpipe, *(shlex.quote(a) for a in args)])

    def run_gtnpipe(self, step: str, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        done = self._ssh(step, self.gtnpipe_command(*args))
        if done.returncode == NOT_FOUND:
            raise RemoteError(self.target, step, f"there is no {self.gtnpipe!r} on the device ({_tail(done.stderr)}); "
                              f"install the same gtnpipe there (make wheel, copy build/dist/gtnpipe-{__version__}-*.whl, "
                              "pip install 'gtnpipe-*.whl[onnx]' with the device's runtime extra), or give its path with "
                              "--remote-gtnpipe ~/venv/bin/gtnpipe (a non-interactive ssh session does not read ~/.bashrc)")
        if done.returncode not in ok:
            raise RemoteError(self.target, step, f"'{self.gtnpipe_command(*args)}' exited {done.returncode} on the device: "
                              f"{_tail(done.stderr) or _tail(done.stdout)}")
        return done

    def check(self, runtime: str, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
        """Steps connect, version and runtime: the device's `gtnpipe devices runtimes --json`."""
        say(f"{self.target}: connecting")
        seen = self.run_gtnpipe("gtnpipe", "--version").stdout.strip()
        if seen != f"gtnpipe {__version__}":
            raise RemoteError(self.target, "version", f"the device runs {seen or 'an unknown gtnpipe'!r}, this host "
                              f"gtnpipe {__version__}: the artifact and kit formats belong to one version. Install "
                              f"gtnpipe {__version__} on the device (make wheel here, then pip install the wheel there)")
        info = json.loads(self.run_gtnpipe("runtime", "devices", "runtimes", "--json").stdout)
        found = info["runtimes"].get(runtime)
        if found is None or not found["installed"]:
            why = found["error"] if found else f"the device's gtnpipe knows no runtime {runtime!r}"
            raise RemoteError(self.target, "runtime", f"{runtime} is missing on the device: {why}")
        say(f"{self.target}: gtnpipe {__version__}, {runtime} {found['version']}, {info['machine']}")
        return dict(info)

    @contextmanager
    def temp_dir(self) -> Iterator[str]:
        """A fresh folder on the device (`mktemp -d`), removed at the end."""
        done = self._ssh("copy", "mktemp -d -t gtnpipe.XXXXXXXX")
        path = done.stdout.strip()
        if done.returncode != 0 or not path.startswith("/"):
            raise RemoteError(self.target, "copy", f"could not make a temporary folder on the device (mktemp -d: "
                              f"{_tail(done.stderr) or path!r}); check that its /tmp (or $TMPDIR) is writable")
        try:
            yield path
        finally:
            subprocess.run(["ssh", *self._options(), self.target, f"rm -rf -- {shlex.quote(path)}"], capture_output=True,
                           stdin=subprocess.DEVNULL)

    def _scp(self, step: str, sources: list[str], dest: str, what: str) -> None:
        done = subprocess.run(["scp", "-q", "-r", *self._options(), *sources, dest], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RemoteError(self.target, step, f"scp of {what} failed: {_tail(done.stderr)}. Check the device's free "
                              "disk space and that its sshd allows scp/sftp (Subsystem sftp)")

    def put(self, local: Path, remote_dir: str) -> str:
        """Copy a local file or folder into `remote_dir`; its path there."""
        self._scp("copy", [str(local)], f"{self.target}:{remote_dir}/", str(local))
        return f"{remote_dir}/{Path(local).name}"

    def fetch(self, remote_path: str) -> bytes:
        """One remote file's bytes (the caller writes them atomically where they belong)."""
        with tempfile.TemporaryDirectory(prefix="gtnpipe-fetch-") as scratch:
            staged = Path(scratch) / Path(remote_path).name
            self._scp("fetch", [f"{self.target}:{remote_path}"], str(staged), remote_path)
            return staged.read_bytes()


def bench_remote(folder: Path, remote: Remote, *, runs: int = 200, warmup: int = 20, threads: int | None = None,
                 say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """`gtnpipe bench` of an artifact folder on the device: bench.json comes back beside the manifest here.

    The folder is checked here first (schema, every sha256), so a broken artifact is not copied; the device checks
    it again after the copy. A verdict that fails (exit 3 there) still brings bench.json back."""
    from gtnpipe.deploy.device_bench import BENCH_FAILED_EXIT, BENCH_FILE
    from gtnpipe.deploy.manifest import load_manifest, verify_files

    folder = Path(folder)
    manifest = load_manifest(folder)
    verify_files(folder, manifest)
    remote.check(manifest["runtime"]["name"], say)
    with remote.temp_dir() as tmp:
        say(f"{remote.target}: copying {folder} to {tmp}")
        there = remote.put(folder, tmp)
        say(f"{remote.target}: gtnpipe bench ({warmup} warmup and {runs} timed runs)")
        args = ["bench", there, "--json", "--runs", str(runs), "--warmup", str(warmup)]
        done = remote.run_gtnpipe("run", *args, *(["--threads", str(threads)] if threads else []),
                                  ok=(0, BENCH_FAILED_EXIT))
        data = remote.fetch(f"{there}/{BENCH_FILE}")
    result: dict[str, Any] = json.loads(data)
    if result != json.loads(done.stdout):
        raise RemoteError(remote.target, "fetch", f"the fetched {BENCH_FILE} is not what the device's bench printed; "
                          "run the command again")
    atomic_write_bytes(folder / BENCH_FILE, data)
    return result
