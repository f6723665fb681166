"""Copy configs/gpu.yaml into k8s/rayservice.yaml's serveConfigV2 (run after editing the profile).

    python k8s/sync_serve_config.py

tests/test_cluster_config.py fails when the two drift apart.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "  serveConfigV2: |\n"


def main() -> None:
    manifest = (ROOT / "k8s" / "rayservice.yaml").read_text()
    head, _, tail = manifest.partition(MARKER)
    lines = tail.split("\n")
    end = next(i for i, line in enumerate(lines) if line and not line.startswith("    "))
    profile = [line for line in (ROOT / "configs" / "gpu.yaml").read_text().split("\n") if not line.startswith("#")]
    embedded = "\n".join(("    " + line) if line else "" for line in profile).rstrip() + "\n"
    (ROOT / "k8s" / "rayservice.yaml").write_text(head + MARKER + embedded + "\n".join(lines[end:]))


if __name__ == "__main__":
    main()
