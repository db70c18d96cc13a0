"""A real OpenSSH server on 127.0.0.1 for the tests of `--remote` (tests/test_remote.py), with throwaway keys.

Debian's openssh-server, which `make setup` installs. The server runs as this user, on a free port, from its own
config in a temporary folder: its own host key, one authorized client key, no passwords, no PAM. It logs in only
this user (an sshd that is not root cannot switch users). `options` are the ssh -o options a client needs to reach
it with that key (gtnpipe's --ssh-option; given first, they win over anything in ~/.ssh/config).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it, even for one non-root user
INSTALL = "run 'make setup' (it installs Debian's openssh-server and makes /run/sshd)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalSshd:
    def __init__(self, root: Path) -> None:
        assert SSHD.is_file(), f"{SSHD} is missing: {INSTALL}"
        if not PRIVSEP_DIR.is_dir() and os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755)
        assert PRIVSEP_DIR.is_dir(), f"{PRIVSEP_DIR} is missing: {INSTALL}"
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"gtnpipe-test-{name}", "-f",
                            str(root / name)], check=True, capture_output=True)
        shutil.copyfile(root / "client_key.pub", root / "authorized_keys")
        self.port = _free_port()
        self.remote_tmp = root / "remote-tmp"
        self.remote_tmp.mkdir()
        config = root / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "StrictModes no",  # the keys live under /tmp, which is world-writable
            "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",  # scp speaks SFTP since OpenSSH 9
            f"SetEnv TMPDIR={self.remote_tmp}",  # where the sessions' mktemp -d goes: a test can see it removed
        ]) + "\n")
        self.log = (root / "sshd.log").open("w")
        self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.target = f"{getpass.getuser()}@127.0.0.1"
        self.options = (f"Port={self.port}", f"IdentityFile={root / 'client_key'}", "IdentitiesOnly=yes",
                        "StrictHostKeyChecking=no", f"UserKnownHostsFile={root / 'known_hosts'}", "LogLevel=ERROR")
        self._wait_until_listening()

    def _wait_until_listening(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"sshd exited {self.process.returncode}: {(self.root / 'sshd.log').read_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"sshd did not listen on 127.0.0.1:{self.port} within {timeout_s} s")

    def cli_options(self) -> list[str]:
        """`--ssh-option NAME=VALUE` for each option, as the gtnpipe command line takes them."""
        return [arg for option in self.options for arg in ("--ssh-option", option)]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
