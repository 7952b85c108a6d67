#!/usr/bin/env python3
"""Load benchmark: didgate (every 200 after fsync) beside nginx `return 200` (the HTTP ceiling
of the box), same machine, same run, same wrk workload.

    python3 benches/load/run.py                      # 16/64/256 connections, 10 s each
    python3 benches/load/run.py --conns 64 --seconds 30
    python3 benches/load/run.py --conns 64 --seconds 600 --idle 1000   # memory target
    python3 benches/load/run.py --bin /tmp/didgate-before --conns 64,256   # another build
    python3 benches/load/run.py --tls --conns 256    # HTTPS: didgate vs nginx, both over TLS
    python3 benches/load/run.py --tls --conns 16 --seconds 60 --idle 1000   # TLS memory target
    python3 benches/load/run.py --archive --conns 256   # recordings archiver off vs on
    python3 benches/load/run.py --forward --conns 256   # forwarding off vs on, saturated
    python3 benches/load/run.py --forward --conns 256 --pace 10   # ... at ~20,000 events/s
    python3 benches/load/run.py --consume --conns 256   # a `consume --exec --follow` beside
    python3 benches/load/run.py --nats --conns 256      # NATS JetStream publishing off vs on

It builds didgate in release mode, installs wrk and nginx from Debian when missing, starts
both servers on loopback ports of a temp directory, runs the mixed workload (70% CDR, 20%
recording, 10% SMS, every body unique) against each, and prints per connection count:
req/s, p50/p99 latency, non-2xx answers, peak RSS, fsyncs (commits) per second, events per
commit, the ratio to nginx, and the check acked <= stored <= sent (no acknowledged event
missing, nothing stored that was not sent). Every run is bounded by --seconds; the script
stops both servers itself.

With --idle N, N more keep-alive connections are opened to didgate before the load starts:
each posts one CDR, then stays open and posts another every 30 s (under the 60 s idle
timeout), so they stay open through the run. The RSS columns then show the memory target's
case, and the last lines show whether memory is flat: the RSS at the end of each quarter of
the run (total, and the anonymous part: the total also counts pages of the data file mapped
by LMDB, page cache that the gateway releases every second).

With --tls, nginx and didgate both serve HTTPS with the same self-signed P-256 certificate
(made with openssl for the run) and wrk speaks TLS to both (keep-alive, so one handshake per
connection); didgate also runs once over plain HTTP in the same run, so the table shows the
cost of TLS next to the ratio to nginx. Idle connections are then TLS connections too.

didgate runs with its recordings archiver off unless --archive is given. With --archive it
runs twice per connection count in the same run, archiver off then on, with the 20%
recording webhooks pointing at a local file server (a 64 KiB mp3 for any path), and prints
the on/off ratio of req/s and p99 and how many recordings were archived during the run.

With --forward, didgate likewise runs forwarding off then on, the "on" run with one
[[forward]] destination: a second nginx `return 200`, run at the lowest priority (the
receiver is not on the box in production). It prints the on/off ratio, the events delivered
during the load (and per second), the lag (events after the cursor, plus retries) when the
load stopped, and how long it took to drain to 0 after. With --consume, the "on" run has
`didgate consume bench --exec 'cat >/dev/null' --follow` beside it, whose cursor moves in a
short write transaction of its own at most once a second (batches of
--consume-batch events, 100 by default).

With --nats, the "on" run publishes to a local `nats-server -js` (Debian's nats-server, at
the lowest priority like the HTTP sink: the NATS servers are not on the box in production),
stream BENCH created by didgate with file storage. It prints what --forward prints, and then
measures the catch-up rate: one more run with the destination paused (`didgate pause`) during
the load, then resumed; the events published from the resume until the lag is 0, per second.

With --pace MS each connection waits MS before each request: a steady rate of about
connections * 1000 / (MS + latency) per second instead of saturation.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LUA = os.path.join(ROOT, "benches", "load", "mixed.lua")
BIN = os.path.join(ROOT, "target", "release", "didgate")


def need(tool, package):
    if shutil.which(tool):
        return
    print(f"installing {package} from Debian", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


RECORDING_BASE = None
PACE_MS = 0
# Calls stamped with the current time (--alerts), so alert windows hold the run's calls.
CALLDATE_NOW = False


def wrk(port, conns, seconds, token, run_id, scheme="http"):
    env = {**os.environ, "DIDGATE_TOKEN": token, "DIDGATE_RUN": run_id}
    if PACE_MS:
        env["DIDGATE_PACE_MS"] = str(PACE_MS)
    if RECORDING_BASE:
        env["DIDGATE_RECORDING_BASE"] = RECORDING_BASE
    if CALLDATE_NOW:
        env["DIDGATE_CALLDATE_NOW"] = "1"
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "15s", "--latency",
         "-s", LUA, f"{scheme}://127.0.0.1:{port}"],
        env=env, capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        result["p" + pct] = to_ms(re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M).group(1))
    m = re.search(r"sent (\d+) acked (\d+) other (\d+)", out)
    result.update(sent=int(m.group(1)), acked=int(m.group(2)), other=int(m.group(3)))
    errors = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = errors.group(1) if errors else ""
    return result


class Sampler(threading.Thread):
    """Peak resident memory of a process, sampled every 50 ms, and each sample's anonymous
    part with its time."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.peak_anon_kib, self.stop = pid, 0, 0, False
        self.samples = []

    def run(self):
        while not self.stop:
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    text = f.read()
                rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
                anon = int(re.search(r"RssAnon:\s+(\d+)", text).group(1))
                self.peak_kib = max(self.peak_kib, rss)
                self.peak_anon_kib = max(self.peak_anon_kib, anon)
                self.samples.append((time.monotonic(), rss, anon))
            except (OSError, AttributeError):
                pass
            time.sleep(0.05)


IDLE_REPOST_SECONDS = 30


class IdleConnections(threading.Thread):
    """N keep-alive connections that each post one CDR, then one more every
    IDLE_REPOST_SECONDS until stopped. Counts what they sent and what was acknowledged."""

    def __init__(self, port, token, count, run_id, tls=False):
        super().__init__(daemon=True)
        self.port, self.token, self.count, self.run_id = port, token, count, run_id
        self.tls = tls
        self.sent = self.acked = 0
        self.stop = threading.Event()
        self.socks = []

    def post(self, i, sock):
        self.sent += 1
        body = ('{"event":"cdr","callid":"%s-idle-%d-%d","duration":9,"billsec":7}'
                % (self.run_id, i, self.sent)).encode()
        head = (f"POST /hooks/{self.token}/cdr HTTP/1.1\r\nHost: bench\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("closed")
            answer += chunk
        if answer.startswith(b"HTTP/1.1 2"):
            self.acked += 1

    def open_all(self):
        for i in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.settimeout(15)
            if self.tls:
                import ssl
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                sock = ctx.wrap_socket(sock, server_hostname="localhost")
            self.post(i, sock)
            self.socks.append(sock)

    def run(self):
        while not self.stop.wait(IDLE_REPOST_SECONDS):
            for i, sock in enumerate(self.socks):
                self.post(i, sock)

    def close(self):
        self.stop.set()
        self.join(timeout=60)
        for sock in self.socks:
            sock.close()


ADMIN_PORTS = {}


class ConsoleReader(threading.Thread):
    """Fetches the console's pages ten times a second until stopped (--console)."""

    PAGES = ["/", "/calls", "/sms", "/quarantine", "/alerts", "/calls?since=7d"]

    def __init__(self, admin_port):
        super().__init__(daemon=True)
        self.base = f"http://127.0.0.1:{admin_port}"
        self.stop = False
        self.pages = self.failed = 0
        self.slowest = 0.0

    def run(self):
        i = 0
        while not self.stop:
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.base + self.PAGES[i % len(self.PAGES)],
                                            timeout=10) as r:
                    r.read()
                    self.failed += r.status != 200
            except Exception:
                self.failed += 1
            took = time.monotonic() - started
            self.slowest = max(self.slowest, took)
            self.pages += 1
            i += 1
            time.sleep(max(0.0, 0.1 - took))


def metric(proc, name):
    """A value of didgate's /metrics, or None."""
    import urllib.request
    try:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{ADMIN_PORTS[proc.pid]}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def start_didgate(data, port, token, config=None):
    # The admin listener on a free port too, so a gateway already running here is no obstacle.
    extra = ["--config", config] if config else []
    admin = free_port()
    proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data", data,
                             "--token", token, "--admin-listen", f"127.0.0.1:{admin}"]
                            + extra,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ADMIN_PORTS[proc.pid] = admin
    for line in proc.stdout:
        # The last start-up line (older builds printed the URLs last).
        if "`didgate urls` prints them" in line or line.startswith("didgate: sms"):
            break
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc


def stop_didgate(proc):
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    proc.wait(timeout=30)
    m = re.search(r"stopped: (\d+) commits, (\d+) events", err)
    if not m:
        sys.exit(f"didgate did not stop cleanly:\n{err}")
    return int(m.group(1)), int(m.group(2))


FILE_SERVER = r"""
import http.server, sys
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 255
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "audio/mpeg")
        self.send_header("Content-Length", str(len(MP3)))
        self.end_headers()
        self.wfile.write(MP3)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def start_file_server():
    """A local stand-in for S3: any GET gets the same 64 KiB mp3. S3 is not on the box in
    production, so the stand-in runs at the lowest priority: the on/off ratio then measures
    what the archiver costs ingest, not what the stand-in costs the two shared cores."""
    port = free_port()
    proc = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", FILE_SERVER, str(port)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port


def archived(data):
    out = subprocess.run([BIN, "recordings", "--state", "fetched", "--data", data],
                         capture_output=True, text=True).stdout
    return max(0, len(out.splitlines()) - 1)


def stored_events(data):
    out = subprocess.run([BIN, "stats", "--json", "--data", data], capture_output=True,
                         text=True, check=True).stdout
    doc = json.loads(out)
    return doc["events"] + sum(doc["duplicates"].values()) + doc["quarantined"]


def catch_up(data, port, token, config, conns, seconds, scheme):
    """Load with the destination paused, then resume it: (events waiting at the resume,
    events published until the lag is 0, seconds that took)."""
    proc = start_didgate(data, port, token, config)
    dest = 'dest="bench"'
    # A new destination's state is stored with the writer's first commit.
    time.sleep(1)
    subprocess.run([BIN, "pause", "--dest", "bench", "--data", data], check=True,
                   capture_output=True)
    time.sleep(0.5)
    wrk(port, conns, seconds, token, f"c{conns}-{time.time()}", scheme)
    queued = metric(proc, f"didgate_forward_lag_events{{{dest}}}") or 0
    before = metric(proc, f"didgate_forward_delivered_total{{{dest}}}") or 0
    subprocess.run([BIN, "resume", "--dest", "bench", "--data", data], check=True,
                   capture_output=True)
    started = time.monotonic()
    while time.monotonic() - started < 120:
        if (metric(proc, f"didgate_forward_lag_events{{{dest}}}") or 0) == 0:
            break
        time.sleep(0.02)
    took = time.monotonic() - started
    published = (metric(proc, f"didgate_forward_delivered_total{{{dest}}}") or 0) - before
    stop_didgate(proc)
    return queued, published, took


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", default="16,64,256", help="comma-separated connection counts")
    ap.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    ap.add_argument("--idle", type=int, default=0,
                    help="extra keep-alive connections held open during each didgate run")
    ap.add_argument("--bin", help="a didgate binary to measure instead of building this tree's "
                    "(e.g. a copy of the previous build, to compare two builds in one session)")
    ap.add_argument("--archive", action="store_true",
                    help="recordings archiver off and on, same run, recordings from a local server")
    ap.add_argument("--forward", action="store_true",
                    help="forwarding off and on, same run, to a local nginx return 200")
    ap.add_argument("--nats", action="store_true",
                    help="NATS JetStream publishing off and on, same run, to a local "
                         "nats-server -js; then the catch-up rate after a pause")
    ap.add_argument("--dest-extra", default="", metavar="TOML",
                    help="with --forward or --nats: more keys for the destination, e.g. "
                         "'max_in_flight = 256'")
    ap.add_argument("--consume", action="store_true",
                    help="without and with a `consume --exec --follow` beside didgate")
    ap.add_argument("--consume-batch", type=int, default=100, metavar="N",
                    help="with --consume: events per batch (one command run each)")
    ap.add_argument("--pace", type=int, default=0, metavar="MS",
                    help="each connection waits MS between requests: a steady rate (e.g. "
                    "--conns 256 --pace 10 for about 20,000/s) instead of saturation")
    ap.add_argument("--pairs", type=int, default=1,
                    help="with --archive, --forward or --consume: this many off/on pairs, "
                    "alternating which runs first; req/s are the means, and each pair's ratio "
                    "is printed (2-core machines are noisy: 3 or more for a figure to quote)")
    ap.add_argument("--alerts", action="store_true",
                    help="[[alert]] rules off and on, same run: the packaged examples' five "
                         "types evaluated every second (60 times the default) over calls "
                         "stamped with the current time")
    ap.add_argument("--console", action="store_true",
                    help="without and with the web console being read: its pages fetched "
                         "ten times a second through the run (a hundred times what one "
                         "operator does)")
    ap.add_argument("--tls", action="store_true",
                    help="HTTPS: nginx and didgate over TLS, plus didgate plain in the same run")
    args = ap.parse_args()
    # A NATS destination is a forward destination: the same runs, the same figures.
    args.forward = args.forward or args.nats
    global BIN, PACE_MS, CALLDATE_NOW
    PACE_MS = args.pace
    CALLDATE_NOW = args.alerts
    if args.bin:
        BIN = os.path.abspath(args.bin)
    conns = [int(c) for c in args.conns.split(",")]

    need("wrk", "wrk")
    need("nginx", "nginx-light")
    if not args.bin:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="didgate-load-")
    runs = iter(range(1_000_000))

    def fresh_data():
        # Every didgate run starts on an empty store: a run after another on the same store
        # meets a larger B-tree and file, which alone cost the later run up to 10% (an A/A
        # comparison showed it), and would be charged to whatever that run measures.
        return os.path.join(work, f"data-{next(runs)}")
    nginx_port, didgate_port = free_port(), free_port()
    scheme, listen_ssl = "http", ""
    tls_section = ""
    if args.tls:
        need("openssl", "openssl")
        cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        scheme = "https"
        listen_ssl = (f" ssl; ssl_certificate {cert}; ssl_certificate_key {key}; "
                      "ssl_protocols TLSv1.2 TLSv1.3")
        tls_section = f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
    configs = {}
    sink_port = free_port()
    forward = (f'[[forward]]\nname = "bench"\nurl = "{scheme}://127.0.0.1:{sink_port}/in"\n'
               if args.forward else "")
    if args.nats:
        forward = (f'[[forward]]\nname = "bench"\ntype = "nats"\n'
                   f'url = "nats://127.0.0.1:{sink_port}"\nstream = "BENCH"\n'
                   f'create_stream = true\nsubjects = ["didlogic.>"]\n')
    if args.dest_extra:
        forward += args.dest_extra.replace("\\n", "\n") + "\n"
    if args.alerts:
        # Every rule type, as the packaged examples write them, judged every second.
        forward += ('[[alert]]\nname = "no-cdr"\ntype = "silence"\nkind = "cdr"\n'
                    'duration = "3h"\n'
                    '[[alert]]\nname = "premium"\ntype = "off_hours"\n'
                    'prefixes = ["1900", "1976", "1809", "1876", "44"]\n'
                    'hours = "08:00-08:01"\n'
                    '[[alert]]\nname = "short-calls"\ntype = "burst"\nmax_calls = 20\n'
                    'window = "10m"\nmax_billsec = 10\n'
                    '[[alert]]\nname = "asr"\ntype = "asr_below"\nthreshold_percent = 40\n'
                    'window = "1h"\nmin_attempts = 20\n'
                    '[[alert]]\nname = "recordings"\ntype = "recording_missing"\n'
                    'delay = "1m"\nwindow = "1h"\n')
    archive_off_section = "[recordings]\nenabled = false\n"
    archive_on_section = ("[recordings]\nallow_http = true\n"
                          "allow_private_addresses = [\"127.0.0.1/32\"]\n"
                          "disk_margin_bytes = 0\n")
    for name, recordings in (("off", archive_off_section),
                             ("on", archive_on_section if args.archive
                              else archive_off_section)):
        path = os.path.join(work, f"didgate-{name}.toml")
        with open(path, "w") as f:
            top = 'alert_interval = "1s"\n' if args.alerts and name == "on" else ""
            f.write(top + recordings + tls_section + (forward if name == "on" else ""))
        configs[name] = path
    global RECORDING_BASE
    files = None
    if args.archive:
        files, files_port = start_file_server()
        RECORDING_BASE = f"http://127.0.0.1:{files_port}/rec/"
    plain_config = os.path.join(work, "didgate-plain.toml")
    with open(plain_config, "w") as f:
        f.write("[recordings]\nenabled = false\n")
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  server {{ listen 127.0.0.1:{nginx_port}{listen_ssl}; location / {{ return 200 "stored\\n"; }} }}
}}
""")
    nginx = subprocess.Popen(["nginx", "-c", f"{work}/nginx.conf", "-p", work, "-g", "daemon off;"])
    sink = None
    if args.nats:
        nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.path.exists(nats_bin):
            need("nats-server", "nats-server")
            nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
        sink = subprocess.Popen(["nice", "-n", "19", nats_bin, "-js", "-a", "127.0.0.1",
                                 "-p", str(sink_port), "-sd", f"{work}/nats"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elif args.forward:
        # The destination: another nginx `return 200`, at the lowest priority. The operator's
        # receiver is not on the box in production, so the on/off ratio must measure what
        # forwarding costs ingest, not what the stand-in receiver costs the two shared cores.
        os.makedirs(f"{work}/sink", exist_ok=True)
        with open(os.path.join(work, "sink", "nginx.conf"), "w") as f:
            f.write(f"""worker_processes auto;
pid {work}/sink/nginx.pid;
error_log {work}/sink/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000;
  server {{ listen 127.0.0.1:{sink_port}{listen_ssl}; location / {{ return 200 "ok\\n"; }} }}
}}
""")
        sink = subprocess.Popen(["nice", "-n", "19", "nginx", "-c", f"{work}/sink/nginx.conf",
                                 "-p", f"{work}/sink", "-g", "daemon off;"])
    token = "loadbench" + str(int(time.time())) + "abcdefgh"
    rows = []
    catchup = None
    try:
        time.sleep(0.5)
        for c in conns:
            base = wrk(nginx_port, c, args.seconds, token, f"n{c}-{time.time()}", scheme)
            plain = None
            if args.tls:
                proc = start_didgate(fresh_data(), didgate_port, token, plain_config)
                plain = wrk(didgate_port, c, args.seconds, token, f"p{c}-{time.time()}")
                stop_didgate(proc)
            compare = args.archive or args.forward or args.consume or args.alerts or args.console

            def off_run():
                proc = start_didgate(fresh_data(), didgate_port, token, configs["off"])
                result = wrk(didgate_port, c, args.seconds, token, f"o{c}-{time.time()}", scheme)
                stop_didgate(proc)
                return result

            def on_run():
                data = fresh_data()
                proc = start_didgate(data, didgate_port, token,
                                     configs["on" if args.archive or args.forward or args.alerts
                                             else "off"])
                consumer = None
                if args.consume:
                    consumer = subprocess.Popen([BIN, "consume", "bench", "--exec",
                                                 "cat >/dev/null", "--follow", "--batch",
                                                 str(args.consume_batch), "--data", data],
                                                stderr=subprocess.DEVNULL)
                delivered_before = metric(
                    proc, 'didgate_forward_delivered_total{dest="bench"}') or 0
                sampler = Sampler(proc.pid)
                sampler.start()
                idle = IdleConnections(didgate_port, token, args.idle, f"i{c}-{time.time()}",
                                       args.tls)
                idle.open_all()
                idle.start()
                reader = ConsoleReader(ADMIN_PORTS[proc.pid]) if args.console else None
                if reader:
                    reader.start()
                load_started = time.monotonic()
                ours = wrk(didgate_port, c, args.seconds, token, f"d{c}-{time.time()}", scheme)
                if reader:
                    reader.stop = True
                    reader.join()
                    print(f"console: {reader.pages} pages read during the run, "
                          f"{reader.failed} not 200, slowest {reader.slowest * 1000:.0f} ms",
                          file=sys.stderr)
                drain = None
                if args.forward:
                    # Lag: events after the cursor plus retries waiting, when the load
                    # stopped; then the seconds until both are 0 (bounded).
                    def lag():
                        return ((metric(proc, 'didgate_forward_lag_events{dest="bench"}') or 0)
                                + (metric(proc, 'didgate_forward_retrying{dest="bench"}') or 0))
                    delivered = (metric(proc, 'didgate_forward_delivered_total{dest="bench"}')
                                 or 0) - delivered_before
                    at_end, stopped = lag(), time.monotonic()
                    while lag() > 0 and time.monotonic() - stopped < 120:
                        time.sleep(0.1)
                    drain = (delivered, at_end, time.monotonic() - stopped, lag())
                if consumer:
                    consumer.terminate()
                    consumer.wait(timeout=30)
                idle.close()
                sampler.stop = True
                sampler.join()
                commits, events = stop_didgate(proc)
                stored = stored_events(data)
                fetched = archived(data) if args.archive else 0
                sent, acked = ours["sent"] + idle.sent, ours["acked"] + idle.acked
                ok = acked <= stored <= sent and ours["other"] == 0
                quarters = []
                for q in (1, 2, 3, 4):
                    until = load_started + args.seconds * q / 4
                    during = [(rss, anon) for t, rss, anon in sampler.samples
                              if load_started <= t <= until]
                    quarters.append(f"{during[-1][0] / 1024:.0f} ({during[-1][1] / 1024:.1f})"
                                    if during else "-")
                return (ours, sampler, commits, events, stored, ok, quarters, (sent, acked),
                        fetched, drain)

            # Off and on alternate their order pair by pair, so neither always runs second.
            offs, ons = [], []
            for i in range(args.pairs if compare else 1):
                if not compare:
                    ons.append(on_run())
                elif i % 2 == 0:
                    offs.append(off_run())
                    ons.append(on_run())
                else:
                    ons.append(on_run())
                    offs.append(off_run())
            (ours, sampler, commits, events, stored, ok, quarters, (sent, acked), fetched,
             drain) = ons[-1]
            ok = all(r[5] for r in ons)
            archive_off = None
            if compare:
                archive_off = dict(offs[-1])
                archive_off["rps"] = sum(o["rps"] for o in offs) / len(offs)
                archive_off["pairs"] = [on[0]["rps"] / off["rps"] for on, off in zip(ons, offs)]
                ours = dict(ours)
                ours["rps"] = sum(on[0]["rps"] for on in ons) / len(ons)
            rows.append((c, base, ours, sampler, commits, events, stored, ok, quarters,
                         (sent, acked), plain, archive_off, fetched, drain))
        if args.nats:
            catchup = catch_up(fresh_data(), didgate_port, token, configs["on"], conns[-1],
                               args.seconds, scheme)
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        if sink:
            sink.terminate()
            sink.wait(timeout=10)

    print(f"\nmixed workload, {args.seconds} s per run, wrk -t2 on the same 2 cores"
          + (", nginx and didgate over TLS" if args.tls else "")
          + (f", plus {args.idle} idle keep-alive connections to didgate" if args.idle else "")
          + "\n")
    print("| conns | server | req/s | p50 ms | p99 ms | non-2xx | peak RSS MiB (anon) "
          "| fsyncs/s | events/commit | vs nginx | sent / acked / stored |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    all_ok = True
    tls_kind = " (TLS)" if args.tls else ""
    side = ("archiver" if args.archive else "NATS publishing" if args.nats
            else "forwarding" if args.forward
            else "consumer" if args.consume else "alerts" if args.alerts
            else "console" if args.console else "")
    kind = tls_kind + (f", {side} on" if side else "")
    for (c, base, ours, sampler, commits, events, stored, ok, _, (sent, acked), plain,
         archive_off, _, _) in rows:
        all_ok &= ok
        print(f"| {c} | nginx return 200{tls_kind} | {base['rps']:.0f} | {base['p50']:.2f} | "
              f"{base['p99']:.2f} | {base['other']} | | | | 1.00 | |")
        if archive_off:
            print(f"| {c} | didgate durable, {side} off | {archive_off['rps']:.0f} | "
                  f"{archive_off['p50']:.2f} | {archive_off['p99']:.2f} | "
                  f"{archive_off['other']} | | | | {archive_off['rps'] / base['rps']:.2f} | |")
        if plain:
            print(f"| {c} | didgate durable, plain HTTP | {plain['rps']:.0f} | "
                  f"{plain['p50']:.2f} | {plain['p99']:.2f} | {plain['other']} | | | | "
                  f"{plain['rps'] / base['rps']:.2f} | |")
        per_commit = events / commits if commits else 0
        print(f"| {c} | didgate durable{kind} | {ours['rps']:.0f} | {ours['p50']:.2f} | "
              f"{ours['p99']:.2f} | {ours['other']} | {sampler.peak_kib / 1024:.0f} "
              f"({sampler.peak_anon_kib / 1024:.0f}) | {commits / args.seconds:.0f} | "
              f"{per_commit:.1f} | {ours['rps'] / base['rps']:.2f} | "
              f"{sent} / {acked} / {stored} {'ok' if ok else 'MISMATCH'} |")
    if args.tls:
        print("\ndidgate TLS / didgate plain, same run: " + ", ".join(
            f"{r[0]} conns {r[2]['rps'] / r[10]['rps']:.2f}" for r in rows))
    if args.archive:
        print("\narchiver on / off, same run: " + ", ".join(
            f"{r[0]} conns req/s {r[2]['rps'] / r[11]['rps']:.2f} "
            f"p99 {r[2]['p99'] / max(r[11]['p99'], 0.001):.2f} "
            f"({r[12]} recordings archived during the run)" for r in rows))
        files.terminate()
    if args.forward or args.consume:
        print(f"\n{side} on / off, same run: " + ", ".join(
            f"{r[0]} conns req/s {r[2]['rps'] / r[11]['rps']:.2f} "
            f"(pairs: {' '.join(f'{x:.2f}' for x in r[11]['pairs'])}) "
            f"p99 {r[2]['p99'] / max(r[11]['p99'], 0.001):.2f}" for r in rows))
    if args.forward:
        for r in rows:
            delivered, at_end, took, left = r[13]
            print(f"  {r[0]} conns: {delivered:.0f} events delivered during the load "
                  f"({delivered / args.seconds:.0f}/s), lag {at_end:.0f} when it stopped, "
                  f"{'0' if left == 0 else f'still {left:.0f}'} after {took:.1f} s")
    if args.nats:
        queued, published, took = catchup
        print(f"\ncatch-up after a pause: {queued:.0f} events waiting, {published:.0f} "
              f"published in {took:.2f} s = {published / max(took, 0.001):.0f} events/s")
    print("\nRSS MiB (anonymous) at the end of each quarter of the didgate run:")
    for c, *_, quarters, _, _, _, _, _ in rows:
        print(f"  {c} conns: " + " / ".join(quarters))
    shutil.rmtree(work, ignore_errors=True)
    if not all_ok:
        sys.exit("stored/acknowledged check failed")


if __name__ == "__main__":
    main()
