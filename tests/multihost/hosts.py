"""Two test hosts on one machine: network namespaces on a private bridge, an sshd in each, and a shared
MLflow tracking server backed by PostgreSQL on the bridge address.

Layout (``N`` is chosen at random among the 10.213.N.0/24 subnets this machine does not use yet)::

    root namespace: bridge smzbr-<suffix> 10.213.N.254  <- PostgreSQL, mlflow server
      |- veth -> namespace smz-<suffix>-a: eth0 10.213.N.1, lo  <- sshd, horovodrun, rank 0
      |- veth -> namespace smz-<suffix>-b: eth0 10.213.N.2, lo  <- sshd, rank 1 (started over ssh)

The namespaces have no default route: whatever runs in them reaches only this subnet. Every daemon is
started here and stopped by :class:`contextlib.ExitStack` callbacks, which also kill any process left in the
namespaces and delete the links and namespaces, whether the test passed or failed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.workers import mpijob
from tests.workers.launch import VENV_BIN, horovod_environment

INTERFACE = "eth0"  # the same name inside every namespace, as on the nodes of a real cluster
SUBNET_PREFIX = "10.213"
BRIDGE_HOST_NUMBER = 254
SSH_PORT = 22
SSHD = Path("/usr/sbin/sshd")
SSHD_PRIVILEGE_SEPARATION_DIRECTORY = Path("/run/sshd")
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-test-system-deps.sh"
POSTGRES_OS_USER = "postgres"
POSTGRES_ROLE = "mlflow"
POSTGRES_DATABASE = "mlflow"
STARTUP_SECONDS = 90.0
STOP_SECONDS = 15.0


def run(command: Sequence[str | os.PathLike[str]], **options: object) -> subprocess.CompletedProcess:
    """Run a command to completion; raise with its output if it fails."""
    arguments = [os.fspath(part) for part in command]
    result = subprocess.run(arguments, capture_output=True, text=True, **options)
    if result.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(arguments)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def unavailable_reason() -> str | None:
    """Why two namespaced hosts cannot be built here, or None. Installs sshd first if it is missing."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces and run sshd (run the tests as root, as CI does)"
    if shutil.which("ip") is None or not SSHD.exists():
        subprocess.run([str(INSTALL_SCRIPT)], check=False)
    if shutil.which("ip") is None:
        return "iproute2's `ip` is missing and scripts/install-test-system-deps.sh could not install it"
    probe = f"smz-probe-{secrets.token_hex(3)}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if created.returncode != 0:
        return f"`ip netns add` is not permitted on this machine: {created.stderr.strip()}"
    run(["ip", "netns", "delete", probe])
    if not SSHD.exists():
        return f"{SSHD} is missing and scripts/install-test-system-deps.sh could not install openssh-server"
    return None


# ----------------------------------------------------------------------------------------------------------
# Network


@dataclass(frozen=True)
class Host:
    """One test host: a network namespace whose ``eth0`` holds ``address``."""

    name: str
    namespace: str
    address: str
    interface: str = INTERFACE

    def command(self, command: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``command`` run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.namespace, *(os.fspath(part) for part in command)]


@dataclass(frozen=True)
class Network:
    bridge: str
    address: str  # the root namespace's address on the bridge, where the shared services listen
    subnet: ipaddress.IPv4Network
    hosts: tuple[Host, ...]


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network of the root namespace's addresses and routes."""
    networks = []
    for line in run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
        networks.append(ipaddress.ip_interface(line.split()[3]).network)
    for line in run(["ip", "-4", "route", "show"]).stdout.splitlines():
        destination = line.split()[0]
        if destination != "default":
            networks.append(ipaddress.ip_network(destination, strict=False))
    return networks


def choose_subnet() -> ipaddress.IPv4Network:
    """A random 10.213.N.0/24 that overlaps nothing this machine already uses (e.g. a parallel test run)."""
    used = used_networks()
    candidates = [ipaddress.ip_network(f"{SUBNET_PREFIX}.{number}.0/24") for number in range(1, 250)]
    free = [subnet for subnet in candidates if not any(subnet.overlaps(network) for network in used)]
    if not free:
        raise RuntimeError(f"every {SUBNET_PREFIX}.N.0/24 subnet is in use on this machine")
    return random.choice(free)


def build_network(stack: contextlib.ExitStack, host_count: int = 2) -> Network:
    """A bridge in the root namespace and ``host_count`` namespaced hosts attached to it."""
    suffix = secrets.token_hex(3)
    subnet = choose_subnet()
    bridge = f"smzbr-{suffix}"
    run(["ip", "link", "add", bridge, "type", "bridge"])
    stack.callback(delete_link, bridge)
    address = str(subnet.network_address + BRIDGE_HOST_NUMBER)
    run(["ip", "addr", "add", f"{address}/{subnet.prefixlen}", "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])
    hosts = tuple(add_host(stack, bridge, subnet, suffix, index) for index in range(host_count))
    return Network(bridge, address, subnet, hosts)


def add_host(
    stack: contextlib.ExitStack, bridge: str, subnet: ipaddress.IPv4Network, suffix: str, index: int
) -> Host:
    letter = "abcdefgh"[index]
    host = Host(f"host-{letter}", f"smz-{suffix}-{letter}", str(subnet.network_address + index + 1))
    run(["ip", "netns", "add", host.namespace])
    veth = f"smzv-{suffix}-{letter}"
    stack.callback(delete_namespace, host.namespace, veth)
    # The peer is created directly inside the namespace, so every host's interface can be named eth0.
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", INTERFACE, "netns", host.namespace])
    run(["ip", "link", "set", veth, "master", bridge, "up"])
    run(host.command(["ip", "addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", INTERFACE]))
    run(host.command(["ip", "link", "set", INTERFACE, "up"]))
    run(host.command(["ip", "link", "set", "lo", "up"]))
    return host


def namespace_pids(namespace: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def delete_namespace(namespace: str, veth: str) -> None:
    """Kill every process still inside (daemons, orphaned ranks), then delete the veth pair and namespace."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        for pid in namespace_pids(namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_number)
        deadline = time.monotonic() + STOP_SECONDS / 3
        while namespace_pids(namespace) and time.monotonic() < deadline:
            time.sleep(0.1)
    delete_link(veth)  # deleting the namespace alone frees its veth asynchronously
    subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)


# ----------------------------------------------------------------------------------------------------------
# Daemons


def option_list(options: dict[str, object]) -> list[str]:
    """``{"--port": 5000}`` -> ``["--port", "5000"]``."""
    return [
        os.fspath(part) if isinstance(part, os.PathLike) else str(part)
        for item in options.items()
        for part in item
    ]


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    condition: Callable[[], bool], process: subprocess.Popen, log: Path, what: str, timeout: float
) -> None:
    """Poll ``condition`` until it holds; raise with the daemon's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}; {log}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s; {log}:\n{log_tail(log)}")
        time.sleep(0.2)


def start_daemon(
    stack: contextlib.ExitStack,
    command: Sequence[str | os.PathLike[str]],
    log: Path,
    stop_signal: int = signal.SIGTERM,
    **options: object,
) -> subprocess.Popen:
    """Start ``command`` in its own process group, output to ``log``; the stack stops the whole group."""
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [os.fspath(part) for part in command],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **options,
        )
    stack.callback(stop_process_group, process, stop_signal)
    return process


def stop_process_group(process: subprocess.Popen, stop_signal: int) -> None:
    """Signal the group led by ``process`` (its server workers too); SIGKILL it if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, stop_signal)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# ----------------------------------------------------------------------------------------------------------
# ssh


@dataclass(frozen=True)
class SshClient:
    """A client key authorized on every test host and an ``ssh`` that never touches ~/.ssh.

    horovodrun runs ``ssh`` from ``PATH``: ``bin_dir`` holds a wrapper that adds ``-F config`` (no known_hosts
    file, no host key prompt, batch mode, this key only).
    """

    key: Path
    authorized_keys: Path
    host_key: Path
    config: Path
    bin_dir: Path


def make_ssh_client(directory: Path) -> SshClient:
    directory.mkdir(parents=True, exist_ok=True)
    key, host_key = directory / "client_key", directory / "host_key"
    for path in (key, host_key):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", path])
    authorized_keys = directory / "authorized_keys"
    shutil.copyfile(key.with_suffix(".pub"), authorized_keys)
    config = directory / "ssh_config"
    config.write_text(
        f"Host {SUBNET_PREFIX}.*\n"
        f"  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  BatchMode yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
        encoding="utf-8",
    )
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {shlex.quote(str(config))} "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    return SshClient(key, authorized_keys, host_key, config, bin_dir)


def start_sshd(stack: contextlib.ExitStack, host: Host, client: SshClient, directory: Path) -> Path:
    """Run ``sshd -D`` inside ``host``'s namespace on its address; return its log (one line per login)."""
    SSHD_PRIVILEGE_SEPARATION_DIRECTORY.mkdir(mode=0o755, exist_ok=True)
    config = directory / f"sshd-{host.name}.conf"
    config.write_text(
        f"ListenAddress {host.address}\nPort {SSH_PORT}\nHostKey {client.host_key}\n"
        f"AuthorizedKeysFile {client.authorized_keys}\nPidFile {directory / f'sshd-{host.name}.pid'}\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nLogLevel INFO\n"
        "Subsystem sftp internal-sftp\n",  # for dvc-ssh remotes
        encoding="utf-8",
    )
    log = directory / f"sshd-{host.name}.log"
    process = start_daemon(stack, host.command([SSHD, "-D", "-e", "-f", config]), log)
    wait_until(lambda: port_open(host.address, SSH_PORT), process, log, f"sshd on {host.name}", 30)
    return log


# ----------------------------------------------------------------------------------------------------------
# PostgreSQL and the MLflow tracking server


def postgres_bin_dir() -> Path:
    """The directory of PostgreSQL's server programs (initdb, postgres, pg_isready, createdb)."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    if not installed:
        raise FileNotFoundError(
            "PostgreSQL's initdb was not found on PATH or in /usr/lib/postgresql/*/bin; "
            "run scripts/install-test-system-deps.sh as root"
        )
    return installed[-1].parent


AS_POSTGRES = {"user": POSTGRES_OS_USER, "group": POSTGRES_OS_USER, "extra_groups": []}


def init_postgres(bin_dir: Path, root: Path, subnet: ipaddress.IPv4Network) -> str:
    """``initdb`` into ``root/data`` as the ``postgres`` user: role mlflow with a new password (returned),
    trusted on the Unix socket, password-checked over TCP from ``subnet`` only."""
    shutil.chown(root, POSTGRES_OS_USER, POSTGRES_OS_USER)
    password = secrets.token_hex(16)
    password_file = root / "password"
    password_file.write_text(password + "\n", encoding="utf-8")
    shutil.chown(password_file, POSTGRES_OS_USER, POSTGRES_OS_USER)
    data = root / "data"
    initdb = [bin_dir / "initdb", "-D", data, "-U", POSTGRES_ROLE, f"--pwfile={password_file}"]
    authentication = ["--auth-local=trust", "--auth-host=scram-sha-256"]
    run([*initdb, *authentication, "-E", "UTF8", "--no-locale"], cwd=root, **AS_POSTGRES)
    with (data / "pg_hba.conf").open("a", encoding="utf-8") as handle:
        handle.write(f"host {POSTGRES_DATABASE} {POSTGRES_ROLE} {subnet} scram-sha-256\n")
    return password


def start_postgres(stack: contextlib.ExitStack, network: Network, log: Path) -> str:
    """A throwaway PostgreSQL cluster on the bridge address; returns its SQLAlchemy URI (password auth).

    PostgreSQL refuses to run as root, so it runs as the ``postgres`` user in a directory of its own
    (pytest's tmp_path is private to root).
    """
    bin_dir = postgres_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="summarizer-postgres-"))
    stack.callback(shutil.rmtree, root, ignore_errors=True)
    password = init_postgres(bin_dir, root, network.subnet)
    port = free_port(network.address)
    settings = [f"listen_addresses={network.address}", f"port={port}", f"unix_socket_directories={root}"]
    command = [bin_dir / "postgres", "-D", root / "data"]
    command += [part for setting in settings for part in ("-c", setting)]
    # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for clients to disconnect).
    process = start_daemon(stack, command, log, signal.SIGINT, cwd=root, **AS_POSTGRES)
    ready = [bin_dir / "pg_isready", "-q", "-h", root, "-p", str(port)]
    wait_until(lambda: subprocess.run(ready, check=False).returncode == 0, process, log, "PostgreSQL", 60)
    createdb = [bin_dir / "createdb", "-h", root, "-p", str(port), "-U", POSTGRES_ROLE, POSTGRES_DATABASE]
    run(createdb, cwd=root, **AS_POSTGRES)
    return f"postgresql+psycopg2://{POSTGRES_ROLE}:{password}@{network.address}:{port}/{POSTGRES_DATABASE}"


def server_healthy(uri: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_mlflow_server(
    stack: contextlib.ExitStack, backend_uri: str, address: str, artifacts: Path, log: Path
) -> str:
    """``mlflow server`` on ``address`` over PostgreSQL, serving artifacts itself; returns its http URI."""
    port = free_port(address)
    options = {
        "--backend-store-uri": backend_uri,
        "--artifacts-destination": artifacts,
        "--host": address,
        "--port": port,
        "--workers": 1,
    }
    command = [VENV_BIN / "mlflow", "server", *option_list(options)]
    process = start_daemon(stack, command, log, env=no_proxy_environment(address))
    uri = f"http://{address}:{port}"
    wait_until(lambda: server_healthy(uri), process, log, "mlflow server", STARTUP_SECONDS)
    return uri


def no_proxy_environment(*addresses: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the test addresses exempt from any proxy."""
    environment = dict(os.environ if base is None else base)
    exempt = ",".join(addresses)
    return {**environment, "NO_PROXY": exempt, "no_proxy": exempt}


# ----------------------------------------------------------------------------------------------------------
# The whole cluster


@dataclass(frozen=True)
class Cluster:
    network: Network
    ssh: SshClient
    sshd_logs: dict[str, Path]  # by host name
    tracking_uri: str
    directory: Path

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.network.hosts

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """What horovodrun needs: the ssh wrapper and the venv on PATH, the repository importable."""
        base = horovod_environment()
        values = {
            "PATH": f"{self.ssh.bin_dir}{os.pathsep}{base['PATH']}",
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            **(extra or {}),
        }
        return no_proxy_environment(
            self.network.address, *(host.address for host in self.hosts), base=base | values
        )

    def horovodrun_command(self, arguments: Sequence[str]) -> list[str]:
        """``horovodrun --gloo`` launched from inside host A, one slot on each host: ``python ARGUMENTS``."""
        options = {
            "-np": len(self.hosts),
            "-H": ",".join(f"{host.address}:1" for host in self.hosts),
            "--network-interfaces": INTERFACE,
            "--ssh-identity-file": self.ssh.key,
            "--ssh-port": SSH_PORT,
            "--start-timeout": 60,
        }
        command = [
            VENV_BIN / "horovodrun",
            "--gloo",
            "--verbose",
            *option_list(options),
            sys.executable,
            *arguments,
        ]
        return [str(part) for part in self.hosts[0].command(command)]

    def horovodrun(
        self,
        arguments: Sequence[str],
        cwd: Path,
        extra_environment: dict[str, str] | None = None,
        timeout: float = 240,
    ) -> subprocess.CompletedProcess:
        """Run :meth:`horovodrun_command` to its end."""
        return subprocess.run(
            self.horovodrun_command(arguments),
            cwd=cwd,
            env=self.environment(extra_environment),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def mpirun(
        self,
        cwd: Path,
        exports: Sequence[str] = (),
        extra_environment: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
        timeout: float = 240,
    ) -> subprocess.CompletedProcess:
        """deploy/mpijob.yaml's launcher (``mpirun`` and the train command) started from inside host A.

        As under the MPI Operator: a hostfile with one slot per host, ranks started over ssh (here the test
        key's wrapper as ``plm_rsh_agent``), MPI's TCP traffic on ``eth0``. ``cwd`` is the run directory;
        ``wrapper`` (e.g. ``sh -c ...``) is put before the train command's ``python``.
        """
        hostfile = mpijob.write_hostfile(cwd / "hostfile", {host.address: 1 for host in self.hosts})
        agent = {"plm_rsh_agent": str(self.ssh.bin_dir / "ssh")}
        command = mpijob.launcher(len(self.hosts), hostfile, INTERFACE, exports, mca=agent)
        python = command.index("python")
        command[python:python] = list(wrapper)
        base = mpijob.launcher_environment(self.tracking_uri, extra_environment)
        environment = {**base, "PATH": f"{self.ssh.bin_dir}{os.pathsep}{base['PATH']}"}
        addresses = (self.network.address, *(host.address for host in self.hosts))
        return subprocess.run(
            self.hosts[0].command(command),
            cwd=cwd,
            env=no_proxy_environment(*addresses, base=environment),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logins(self, host: Host) -> list[str]:
        """The public-key logins the host's sshd has accepted so far."""
        text = self.sshd_logs[host.name].read_text(encoding="utf-8", errors="replace")
        return [line for line in text.splitlines() if line.startswith("Accepted publickey")]


@contextlib.contextmanager
def two_hosts(directory: Path) -> Iterator[Cluster]:
    """Build the two hosts, their sshds, PostgreSQL and the mlflow server; tear all down on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        network = build_network(stack)
        ssh = make_ssh_client(directory / "ssh")
        sshd_logs = {host.name: start_sshd(stack, host, ssh, directory) for host in network.hosts}
        backend_uri = start_postgres(stack, network, directory / "postgres.log")
        artifacts = directory / "mlartifacts"
        artifacts.mkdir()
        tracking_uri = start_mlflow_server(
            stack, backend_uri, network.address, artifacts, directory / "mlflow-server.log"
        )
        yield Cluster(network, ssh, sshd_logs, tracking_uri, directory)
