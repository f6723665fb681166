"""Headless load test against a running gsv-serve, with CSV + HTML reports and a short summary.

    python loadtest/run.py --host http://127.0.0.1:8000 --users 8 --spawn-rate 4 --duration 20 \
        --out loadtest/reports

Runs Locust (this interpreter's, `python -m locust`) on loadtest/locustfile.py for `--duration`
seconds, writes `<out>/<name>_stats.csv` (and Locust's other CSVs), `<out>/<name>.html` and
`<out>/<name>_summary.json` (Locust's own console output goes to `<out>/<name>_locust.log`), then prints latency p50/p95/p99 over all HTTP requests, TTFA and RTF
per kind, requests/s and failures.

Traffic goes only to `--host`, and only to loopback unless `--allow-remote` is given.
Exit status: 0 when the run completed with a failure ratio <= --max-failure-ratio; 1 when it was
higher; 2 for a refused host or bad arguments; 3 when the run could not start (server unreachable,
Locust failed, no stats written).
"""
from __future__ import annotations

import argparse
import csv
import ipaddress
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
METRIC_TYPES = ("TTFA", "RTF")
EXIT_OK, EXIT_FAILURES, EXIT_REFUSED, EXIT_NOT_STARTED = 0, 1, 2, 3


class Refused(ValueError):
    pass


def check_host(host: str, allow_remote: bool) -> str:
    """Normalise `host` to scheme://netloc; refuse anything but http(s) and, unless allowed, loopback."""
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"--host must be an http(s) URL such as http://127.0.0.1:8000, not {host!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise Refused(f"--host must be the server root (no path or query): {host!r}")
    if not allow_remote and not is_loopback(parts.hostname):
        raise Refused(f"{parts.hostname!r} is not a loopback address; pass --allow-remote to load a remote server")
    return f"{parts.scheme}://{parts.netloc}"


def is_loopback(hostname: str) -> bool:
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False  # a name other than localhost: it could resolve anywhere


def server_reachable(host: str, timeout: float = 10.0) -> str | None:
    """None if GET /healthz answers 200, else why not."""
    try:
        with urllib.request.urlopen(f"{host}/healthz", timeout=timeout) as r:
            return None if r.status == 200 else f"/healthz answered {r.status}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{host}/healthz: {exc}"


def locust_command(args: argparse.Namespace, host: str, prefix: Path, html: Path) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(args.locustfile), "--headless", "--host", host,
            "--users", str(args.users), "--spawn-rate", str(args.spawn_rate), "--run-time", f"{args.duration}s",
            "--stop-timeout", str(args.stop_timeout), "--csv", str(prefix), "--html", str(html),
            "--only-summary", "--exit-code-on-error", "0", "--loglevel", args.loglevel]


# ---------------------------------------------------------------------------------- reading results
def read_stats(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


def summarise(rows: list[dict[str, str]], summary_json: Path) -> dict:
    """Figures for the report. Counts, failures and requests/s come from the stats CSV (HTTP rows
    only); latency percentiles over all HTTP requests from the locustfile's summary JSON when it is
    there (exact), else from Locust's Aggregated row (which also counts the custom metrics)."""
    http_rows = [r for r in rows if r["Name"] != "Aggregated" and r["Type"] not in METRIC_TYPES]
    requests = sum(int(r["Request Count"]) for r in http_rows)
    failures = sum(int(r["Failure Count"]) for r in http_rows)
    rps = sum(_num(r["Requests/s"]) or 0.0 for r in http_rows)
    latency, source = None, "locustfile summary (HTTP requests only)"
    if summary_json.exists():
        http = json.loads(summary_json.read_text())["http"]
        latency = {k: http.get(k) for k in ("p50", "p95", "p99")}
    if latency is None:
        aggregated = next((r for r in rows if r["Name"] == "Aggregated"), None)
        source = "Locust Aggregated row (includes TTFA/RTF events)"
        latency = {k: _num(aggregated[f"{k[1:]}%"]) if aggregated else None for k in ("p50", "p95", "p99")}
    metrics: dict[str, dict[str, dict]] = {t: {} for t in METRIC_TYPES}
    for r in rows:
        if r["Type"] in METRIC_TYPES:
            scale = 1000.0 if r["Type"] == "RTF" else 1.0  # RTF is recorded x1000
            metrics[r["Type"]][r["Name"]] = {"count": int(r["Request Count"]),
                                            **{f"p{q}": (_num(r[f"{q}%"]) or 0.0) / scale for q in (50, 95, 99)}}
    endpoints = {r["Name"]: {"count": int(r["Request Count"]), "failures": int(r["Failure Count"]),
                             "p50": _num(r["50%"]), "p95": _num(r["95%"]), "p99": _num(r["99%"])}
                 for r in http_rows}
    return {"requests": requests, "failures": failures, "failure_ratio": failures / requests if requests else 0.0,
            "rps": rps, "latency_ms": latency, "latency_source": source, "endpoints": endpoints, **metrics}


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report(summary: dict, args: argparse.Namespace, host: str, files: list[Path]) -> str:
    lat = summary["latency_ms"]
    lines = [
        f"gsv-serve load test: {args.users} users, {args.duration} s, against {host}",
        f"requests: {summary['requests']}  failures: {summary['failures']} "
        f"({100 * summary['failure_ratio']:.1f} %)  requests/s: {summary['rps']:.2f}",
        f"latency ms (all HTTP): p50 {_fmt(lat['p50'])}  p95 {_fmt(lat['p95'])}  p99 {_fmt(lat['p99'])}"
        f"   [{summary['latency_source']}]",
    ]
    for name, e in sorted(summary["endpoints"].items()):
        lines.append(f"  {name:<40} n={e['count']:<5} fail={e['failures']:<4} "
                     f"p50 {_fmt(e['p50'])}  p95 {_fmt(e['p95'])}  p99 {_fmt(e['p99'])}")
    lines.append("TTFA ms (time to first audio byte, streamed):" if summary["TTFA"] else
                 "TTFA ms: no streamed request completed")
    for name, m in sorted(summary["TTFA"].items()):
        lines.append(f"  {name:<40} n={m['count']:<5} p50 {m['p50']:.0f}  p95 {m['p95']:.0f}  p99 {m['p99']:.0f}")
    lines.append("RTF (wall s / audio s; < 1 is faster than real time):" if summary["RTF"] else
                 "RTF: no request with audio completed")
    for name, m in sorted(summary["RTF"].items()):
        lines.append(f"  {name:<40} n={m['count']:<5} p50 {m['p50']:.3f}  p95 {m['p95']:.3f}  p99 {m['p99']:.3f}")
    lines.append("reports: " + ", ".join(str(f) for f in files if f.exists()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="http://127.0.0.1:8000", help="server root URL")
    p.add_argument("--users", type=int, default=8, help="concurrent simulated users")
    p.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second")
    p.add_argument("--duration", type=int, default=20, help="seconds of load")
    p.add_argument("--stop-timeout", type=int, default=30,
                   help="seconds users get to finish their request when the time is up")
    p.add_argument("--out", type=Path, default=HERE / "reports", help="report folder")
    p.add_argument("--name", default="gsv", help="report file name prefix")
    p.add_argument("--max-failure-ratio", type=float, default=0.05,
                   help="exit 1 when failed/all HTTP requests is above this")
    p.add_argument("--allow-remote", action="store_true", help="allow a host that is not loopback")
    p.add_argument("--locustfile", type=Path, default=HERE / "locustfile.py")
    p.add_argument("--loglevel", default="WARNING", help="Locust's log level")
    args = p.parse_args(argv)
    if args.users < 1 or args.spawn_rate <= 0 or args.duration < 1 or args.stop_timeout < 0:
        p.error("--users, --spawn-rate and --duration must be positive")
    if not 0.0 <= args.max_failure_ratio <= 1.0:
        p.error("--max-failure-ratio must be within [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        host = check_host(args.host, args.allow_remote)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    problem = server_reachable(host)
    if problem:
        print(f"could not start: the server is not answering ({problem})", file=sys.stderr)
        return EXIT_NOT_STARTED

    args.out.mkdir(parents=True, exist_ok=True)
    prefix, html = args.out / args.name, args.out / f"{args.name}.html"
    stats_csv, summary_json = Path(f"{prefix}_stats.csv"), Path(f"{prefix}_summary.json")
    for stale in (stats_csv, summary_json, html):
        stale.unlink(missing_ok=True)
    locust_log = args.out / f"{args.name}_locust.log"
    command = locust_command(args, host, prefix, html)
    print(f"running Locust for {args.duration} s ({args.users} users) against {host}; its log: {locust_log}",
          flush=True)
    started = time.monotonic()
    try:
        with locust_log.open("w", encoding="utf-8") as log:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=args.duration + args.stop_timeout + 120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"could not run Locust: {exc}", file=sys.stderr)
        return EXIT_NOT_STARTED
    if proc.returncode != 0 or not stats_csv.exists():
        tail = locust_log.read_text(encoding="utf-8", errors="replace")[-3000:]
        print(f"could not start: Locust exited with {proc.returncode} after {time.monotonic() - started:.0f} s "
              f"and {'wrote' if stats_csv.exists() else 'did not write'} {stats_csv}\n{tail}", file=sys.stderr)
        return EXIT_NOT_STARTED

    summary = summarise(read_stats(stats_csv), summary_json)
    print(report(summary, args, host, [stats_csv, html, summary_json, locust_log]), flush=True)
    if summary["requests"] == 0:
        print("warning: no HTTP request completed in the run", file=sys.stderr)
    if summary["failure_ratio"] > args.max_failure_ratio:
        print(f"FAIL: failure ratio {summary['failure_ratio']:.3f} > {args.max_failure_ratio}", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
