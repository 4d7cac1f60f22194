#!/usr/bin/python3
"""Load test of `fedtl coordinator` (scripts/bench load): hundreds of concurrent TLS
connections on loopback, honest `fedtl worker` processes among hostile clients.

A fresh federation PKI, a small job (3 sites, 3 rounds, the built-in CNN backbone randomly
initialised, Fashion-MNIST partitions) and a coordinator process. Then:

  wave 1: CONNECTIONS hostile clients at once, no honest site. Every one must be dropped by
          the coordinator and its descriptor count must return to the baseline.
  wave 2: 3 honest `fedtl worker` processes started together with CONNECTIONS - 3 hostile
          clients (the same kinds, plus "compromised" clients holding a listed site's valid
          certificate that stall, send a bad frame header or hang up in the middle of a frame).
          The job must finish with all 3 honest sites, and no socket of a hostile client may
          remain open in the coordinator.

Hostile kinds (unauthenticated unless said): stall (TCP, nothing sent), partial_hello (the
start of a TLS ClientHello, then nothing), garbage (plaintext bytes), rst_hello (half a
ClientHello, then a TCP reset), no_cert (TLS without a client certificate), wrong_ca
(certificate of another federation's CA), midframe (a valid certificate not on the job's
list: TLS, half a frame, reset) and, in wave 2 only, compromised_{stall,badframe,midframe}.

Then the authenticated-malicious cases: one job each with the 3 honest workers and the
compromised site's kit driven by bench_malicious (bench/malicious_worker.cc): it inflates its
sample count, sends 1e30 updates, forges unmask shares, corrupts its share ciphertexts, forges
its weight coordinate or advertises a low-order key. malicious_cases_survived counts the jobs
that finished with every honest site.

Prints one JSON object: {"load": {connections, job_finished, peak_rss_mb, fd_leak, ...}}.
Details on stderr. Python's ssl module plays the TLS clients.
"""
import argparse
import json
import os
import random
import resource
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

HONEST = ["hospital-a", "hospital-b", "hospital-c"]
COMPROMISED = "hospital-d"  # listed in the job, but its "worker" is hostile


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"load_test: {' '.join(cmd)} failed:\n{r.stderr}")
    return r.stdout


# --- /proc ------------------------------------------------------------------------------

def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def socket_inodes(pid):
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(int(link[8:-1]))
    except OSError:
        pass
    return out


def tcp_table():
    """inode -> (local port, remote port, state) for TCP sockets (IPv4 and IPv6)."""
    table = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            lport = int(f[1].rsplit(":", 1)[1], 16)
            rport = int(f[2].rsplit(":", 1)[1], 16)
            table[int(f[9])] = (lport, rport, int(f[3], 16))
    return table


def peer_ports(pid):
    """Remote ports of the process's connected TCP sockets."""
    table = tcp_table()
    return [table[i][1] for i in socket_inodes(pid) if i in table and table[i][1] != 0]


def status_kb(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- hostile clients --------------------------------------------------------------------

def client_hello_prefix():
    # A TLS record header announcing a 512-byte handshake message, and its first bytes.
    return b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + os.urandom(32)


PROTOCOL_VERSION = 2  # common/transport/framing.h kProtocolVersion


def frame_header(msg_type, length, magic=b"FDTL"):
    return magic + struct.pack("<HHII", PROTOCOL_VERSION, msg_type, length, 0)


def reset(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Hostile(threading.Thread):
    def __init__(self, kind, port, kits, barrier, hold_s):
        super().__init__(daemon=True)
        self.kind, self.port, self.kits, self.barrier, self.hold_s = kind, port, kits, barrier, hold_s
        self.local_port = None
        self.outcome = "not run"  # dropped | reset | still open | connect failed: ...
        self.seconds = None

    def tls(self, sock, kit):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.load_verify_locations(self.kits["ca"])
        if kit:
            ctx.load_cert_chain(kit[0], kit[1])
        return ctx.wrap_socket(sock, server_hostname="coordinator")

    def wait_dropped(self, sock, t0):
        sock.settimeout(self.hold_s)
        try:
            while True:
                data = sock.recv(4096)
                if not data:
                    self.outcome = "dropped"
                    break
        except socket.timeout:
            self.outcome = "still open"
        except (ssl.SSLError, OSError) as e:
            # A TLS alert (certificate refused) or a reset: the server ended it.
            self.outcome = "dropped" if not isinstance(e, socket.timeout) else "still open"
        self.seconds = time.monotonic() - t0
        try:
            sock.close()
        except OSError:
            pass

    def run(self):
        try:
            self.barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass
        t0 = time.monotonic()
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        except OSError as e:
            self.outcome = f"connect failed: {e}"
            return
        self.local_port = sock.getsockname()[1]
        k = self.kind
        try:
            if k == "stall":
                return self.wait_dropped(sock, t0)
            if k == "partial_hello":
                sock.sendall(client_hello_prefix())
                return self.wait_dropped(sock, t0)
            if k == "garbage":
                sock.sendall(os.urandom(4096))
                return self.wait_dropped(sock, t0)
            if k == "rst_hello":
                sock.sendall(client_hello_prefix())
                time.sleep(0.05)
                reset(sock)
                self.outcome, self.seconds = "reset", time.monotonic() - t0
                return
            kit = {"no_cert": None, "wrong_ca": self.kits["rogue"], "midframe": self.kits["intruder"]}.get(
                k, self.kits["compromised"])
            sock.settimeout(30)
            s = self.tls(sock, kit)  # TLS 1.3: the client's side completes before the server checks it
            if k in ("no_cert", "wrong_ca"):
                try:
                    s.sendall(frame_header(1, 10) + b"0123456789")
                except (ssl.SSLError, OSError):
                    pass
                return self.wait_dropped(s, t0)
            if k in ("midframe", "compromised_midframe"):
                s.sendall(frame_header(1, 1 << 20) + os.urandom(1000))
                time.sleep(0.05)
                reset(s)
                self.outcome, self.seconds = "reset", time.monotonic() - t0
                return
            if k == "compromised_badframe":
                s.sendall(frame_header(1, 16, magic=b"XXXX") + os.urandom(16))
                return self.wait_dropped(s, t0)
            if k == "compromised_stall":
                return self.wait_dropped(s, t0)
            raise ValueError(k)
        except (ssl.SSLError, OSError) as e:
            # The server refused during the handshake (e.g. the certificate): it was dropped.
            self.outcome, self.seconds = f"dropped ({type(e).__name__})", time.monotonic() - t0
            try:
                sock.close()
            except OSError:
                pass


def hostile_mix(n, with_compromised):
    """Kinds for n hostile clients. Clients that hold a handshake slot (stall, partial_hello)
    stay at half of n, below the listener's 128 concurrent handshakes for n <= 200."""
    base = [("stall", 0.35), ("partial_hello", 0.15), ("garbage", 0.15), ("no_cert", 0.10),
            ("wrong_ca", 0.10), ("midframe", 0.10), ("rst_hello", 0.05)]
    kinds = []
    if with_compromised:
        comp = max(3, n // 20)
        kinds += ["compromised_stall"] * max(1, comp // 5) + ["compromised_badframe"] * (comp * 2 // 5)
        kinds += ["compromised_midframe"] * (comp - len(kinds))
    rest = n - len(kinds)
    for kind, share in base:
        kinds += [kind] * int(rest * share)
    kinds += ["garbage"] * (n - len(kinds))
    return kinds


def run_wave(kinds, port, kits, hold_s, on_release=None):
    barrier = threading.Barrier(len(kinds) + 1)
    threads = [Hostile(k, port, kits, barrier, hold_s) for k in kinds]
    for t in threads:
        t.start()
    barrier.wait(timeout=60)
    if on_release:
        on_release()
    return threads


def summarize(threads):
    out = {}
    for t in threads:
        key = t.outcome.split(" (")[0] if t.outcome.startswith("dropped") else t.outcome
        out.setdefault(t.kind, {}).setdefault(key, 0)
        out[t.kind][key] += 1
    return out


# --- the federation ---------------------------------------------------------------------

def setup(work, fedtl, bench_tls, port, rounds, handshake_s, join_s):
    pki, rogue = f"{work}/pki", f"{work}/rogue"
    run([fedtl, "ca", "init", "--dir", pki, "--federation", "load"])
    run([fedtl, "ca", "issue", "--dir", pki, "--name", "coordinator", "--role", "coordinator"])
    for s in HONEST + [COMPROMISED, "intruder"]:
        run([fedtl, "ca", "issue", "--dir", pki, "--name", s, "--role", "worker", "--coordinator",
             f"127.0.0.1:{port}", "--coordinator-name", "coordinator"])
    run([fedtl, "ca", "init", "--dir", rogue, "--federation", "rogue"])
    run([fedtl, "ca", "issue", "--dir", rogue, "--name", "hospital-a", "--role", "worker", "--coordinator",
         f"127.0.0.1:{port}"])
    run([bench_tls, "write-cnn", f"{work}/backbone.pt", "1"])
    K = f"{pki}/kits"
    sites = HONEST + [COMPROMISED]
    with open(f"{work}/job.toml", "w") as f:
        f.write(f"""[job]
name = "load"
seed = 9
sites = {len(sites)}
rounds = {rounds}
min_sites = {len(HONEST)}
out = "{work}/out"
round_timeout_s = 120
[partition]
samples_per_site = 80
[backbone]
path = "{work}/backbone.pt"
pretrain_if_missing = false
[server]
strategy = "fedavg"
[federation]
listen = "127.0.0.1:{port}"
sites = {json.dumps(sites)}
ca_cert = "{K}/coordinator/ca.crt"
cert = "{K}/coordinator/coordinator.crt"
key = "{K}/coordinator/coordinator.key"
join_timeout_s = {join_s}
handshake_timeout_s = {handshake_s}
[secure_aggregation]
enabled = true
""")
    for i, s in enumerate(HONEST):
        with open(f"{work}/{s}.toml", "w") as f:
            f.write(f"""[site]
name = "{s}"
coordinator = "127.0.0.1:{port}"
coordinator_name = "coordinator"
ca_cert = "{K}/{s}/ca.crt"
cert = "{K}/{s}/{s}.crt"
key = "{K}/{s}/{s}.key"
cache_dir = "{work}/site-{s}"
connect_timeout_s = 10
max_backoff_s = 2
give_up_after_s = 300
[data]
source = "job-partition"
job = "{work}/job.toml"
partition_index = {i}
[policy]
min_sites = 2
max_rounds = 100
""")
    kit = lambda name, d=K: (f"{d}/{name}/{name}.crt", f"{d}/{name}/{name}.key")
    return {"ca": f"{K}/coordinator/ca.crt", "rogue": kit("hospital-a", f"{rogue}/kits"),
            "intruder": kit("intruder"), "compromised": kit(COMPROMISED)}


MALICIOUS = [  # (attack, secure aggregation on?) -- see bench/malicious_worker.cc
    ("inflate_count", False), ("huge_update", False), ("forge_shares", True),
    ("forge_ciphertext", True), ("forge_weight", True), ("low_order_key", True)]


def malicious_case(work, fedtl, malicious, attack, secure, base_port):
    """One job with the 3 honest sites and the compromised site (a valid kit) running
    bench_malicious --attack ATTACK. Returns True when the job finished with every honest site
    (coordinator and honest workers exit 0, summary lists them completed)."""
    port = free_port()
    case = f"{work}/malicious-{attack}"
    os.makedirs(case, exist_ok=True)
    sub = lambda text: text.replace(f"127.0.0.1:{base_port}", f"127.0.0.1:{port}")
    job = sub(open(f"{work}/job.toml").read())
    job = job.replace(f'out = "{work}/out"', f'out = "{case}/out"').replace("rounds = ", "rounds = 2 #", 1)
    job = job.replace("enabled = true", f"enabled = {'true' if secure else 'false'}")
    open(f"{case}/job.toml", "w").write(job)
    tomls = []
    for i, name in enumerate(HONEST + [COMPROMISED]):
        t = sub(open(f"{work}/{HONEST[0]}.toml").read()).replace(HONEST[0], name)
        t = t.replace(f'job = "{work}/job.toml"', f'job = "{case}/job.toml"').replace(
            "partition_index = 0", f"partition_index = {i}")
        open(f"{case}/{name}.toml", "w").write(t)
        tomls.append(f"{case}/{name}.toml")
    clog = open(f"{case}/coordinator.log", "w")
    coord = subprocess.Popen([fedtl, "coordinator", "--config", f"{case}/job.toml"], stdout=clog,
                             stderr=subprocess.STDOUT)
    procs = [subprocess.Popen([fedtl, "worker", "--config", t], stdout=subprocess.DEVNULL,
                              stderr=open(t + ".log", "w")) for t in tomls[:-1]]
    evil = subprocess.Popen([malicious, "--site", tomls[-1], "--attack", attack], stdout=subprocess.DEVNULL,
                            stderr=open(f"{case}/malicious.log", "w"))
    try:
        code = coord.wait(timeout=300)
        wcodes = [p.wait(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        code, wcodes = -1, [-1]
    finally:
        for p in [coord, evil] + procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    completed = []
    if os.path.exists(f"{case}/out/summary.json"):
        completed = [x["site"] for x in json.load(open(f"{case}/out/summary.json")).get("per_site", [])
                     if x.get("completed")]
    survived = code == 0 and all(c == 0 for c in wcodes) and set(HONEST) <= set(completed)
    text = open(f"{case}/coordinator.log").read()
    fate = "dropped" if f"site '{COMPROMISED}' dropped" in text else "kept"
    log(f"load: malicious case {attack}: job {'finished with the honest sites' if survived else 'FAILED'} "
        f"(coordinator exit {code}, workers {wcodes}; the attacker was {fate})")
    if not survived:
        log(text[-3000:])
    return survived


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fedtl", default="build/fedtl")
    ap.add_argument("--bench-tls", default="build/bench/bench_tls")
    ap.add_argument("--bench-malicious", default="build/bench/bench_malicious")
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--handshake-timeout", type=float, default=5)
    ap.add_argument("--join-timeout", type=float, default=30)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--reps", type=int, default=1, help="ignored (one run; scripts/bench passes it)")
    a = ap.parse_args()
    fedtl, bench_tls = os.path.abspath(a.fedtl), os.path.abspath(a.bench_tls)
    # 200 client sockets here plus the coordinator's: make sure neither side runs out.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))

    work = tempfile.mkdtemp(prefix="fedtl_load_")
    port = free_port()
    kits = setup(work, fedtl, bench_tls, port, a.rounds, a.handshake_timeout, a.join_timeout)
    hold_s = a.handshake_timeout + 20
    t_start = time.monotonic()
    clog = open(f"{work}/coordinator.log", "w")
    coord = subprocess.Popen([fedtl, "coordinator", "--config", f"{work}/job.toml"], stdout=clog,
                             stderr=subprocess.STDOUT)
    workers = []
    result = {}
    try:
        deadline = time.monotonic() + 120
        while "waiting for" not in open(f"{work}/coordinator.log").read():
            if coord.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("load_test: the coordinator did not start:\n" + open(f"{work}/coordinator.log").read())
            time.sleep(0.05)
        pid = coord.pid
        fds_before = fd_count(pid)
        rss_before, hwm_before = status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")
        log(f"load: coordinator pid {pid} listening on {port}: {fds_before} fds, {rss_before / 1024:.1f} MB RSS "
            f"(VmHWM {hwm_before / 1024:.1f} MB)")

        # Wave 1: hostile only.
        peak_fds = [fds_before]
        stop_sampling = threading.Event()

        def sample():
            while not stop_sampling.is_set():
                peak_fds[0] = max(peak_fds[0], fd_count(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t1 = time.monotonic()
        w1 = run_wave(hostile_mix(a.connections, False), port, kits, hold_s)
        for t in w1:
            t.join()
        w1_s = time.monotonic() - t1
        settle = time.monotonic() + 5
        while fd_count(pid) > fds_before and time.monotonic() < settle:
            time.sleep(0.05)
        fds_after1 = fd_count(pid)
        left1 = set(peer_ports(pid)) & {t.local_port for t in w1 if t.local_port}
        hwm1 = status_kb(pid, "VmHWM")
        rss1 = status_kb(pid, "VmRSS")
        log(f"load: wave 1 ({len(w1)} hostile) over in {w1_s:.1f} s: {summarize(w1)}; "
            f"coordinator fds {fds_before} -> peak {peak_fds[0]} -> {fds_after1}; VmHWM {hwm1 / 1024:.1f} MB, "
            f"VmRSS {rss1 / 1024:.1f} MB")

        # Wave 2: honest workers among hostile clients.
        def start_workers():
            for s in HONEST:
                workers.append(subprocess.Popen([fedtl, "worker", "--config", f"{work}/{s}.toml"],
                                                stdout=subprocess.DEVNULL,
                                                stderr=open(f"{work}/{s}.log", "w")))
        t2 = time.monotonic()
        w2 = run_wave(hostile_mix(a.connections - len(HONEST), True), port, kits, hold_s, start_workers)
        for t in w2:
            t.join()
        w2_s = time.monotonic() - t2
        hostile_ports = {t.local_port for t in w2 if t.local_port}
        time.sleep(0.5)
        alive = coord.poll() is None
        left2 = set(peer_ports(pid)) & hostile_ports if alive else set()
        fds_after2 = fd_count(pid) if alive else -1
        hwm2 = status_kb(pid, "VmHWM") if alive else 0
        log(f"load: wave 2 ({len(w2)} hostile + {len(HONEST)} workers) over in {w2_s:.1f} s: {summarize(w2)}; "
            f"coordinator {'alive' if alive else 'finished'}, fds {fds_after2}, hostile sockets left {len(left2)}")
        stop_sampling.set()

        # The job.
        _, status, usage = os.wait4(pid, 0)
        coord.returncode = os.waitstatus_to_exitcode(status)
        job_s = time.monotonic() - t_start
        wcodes = [w.wait(timeout=300) for w in workers]
        summary_path = f"{work}/out/summary.json"
        completed = []
        if os.path.exists(summary_path):
            summ = json.load(open(summary_path))
            completed = [s["site"] for s in summ.get("per_site", []) if s.get("completed")]
        finished = coord.returncode == 0 and all(c == 0 for c in wcodes) and sorted(completed) == sorted(HONEST)
        clog_text = open(f"{work}/coordinator.log").read()
        refusals = clog_text.count("refused connection from")
        cap_refusals = clog_text.count("TLS handshakes already in progress")
        drops = clog_text.count(f"site '{COMPROMISED}' dropped")
        log(f"load: job {'finished' if finished else 'FAILED'} in {job_s:.1f} s (coordinator exit {coord.returncode}, "
            f"workers {wcodes}, completed {completed}); coordinator log: {refusals} TLS refusals "
            f"({cap_refusals} for the 128-handshake cap), {drops} drops of the compromised site")
        result = {
            "connections": a.connections,
            "job_finished": 1 if finished else 0,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "fd_leak": (fds_after1 - fds_before) + len(left2),
            "fds_before": fds_before,
            "fds_peak": peak_fds[0],
            "fds_after_wave1": fds_after1,
            "hostile_sockets_left_wave1": len(left1),
            "hostile_sockets_left_wave2": len(left2),
            "rss_before_waves_mb": rss_before / 1024,
            "hwm_before_waves_mb": hwm_before / 1024,
            "hwm_after_wave1_mb": hwm1 / 1024,
            "rss_after_wave1_mb": rss1 / 1024,
            "hwm_after_wave2_mb": hwm2 / 1024,
            "wave1_seconds": w1_s,
            "wave2_seconds": w2_s,
            "job_seconds": job_s,
            "hostile_still_open": sum(t.outcome == "still open" for t in w1 + w2),
            "tls_refusals_logged": refusals,
            "handshake_cap_refusals": cap_refusals,
            "sites_completed": len(completed),
            "hostile_outcomes_wave1": summarize(w1),
            "hostile_outcomes_wave2": summarize(w2),
        }
        if not finished:
            log(clog_text[-4000:])
        # Sites holding valid kits that attack (one job each).
        cases = [malicious_case(work, fedtl, os.path.abspath(a.bench_malicious), attack, secure, port)
                 for attack, secure in MALICIOUS]
        result["malicious_cases"] = len(cases)
        result["malicious_cases_survived"] = sum(cases)
    finally:
        for p in [coord] + workers:
            if p.poll() is None:
                p.kill()
                p.wait()
        if a.keep:
            log(f"load: work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"load": result}, indent=2))


if __name__ == "__main__":
    main()
