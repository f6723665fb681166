"""`python -m models.synthesize` writes a playable 32 kHz WAV (demo model, offline)."""
import soundfile as sf
import torch

from models.synthesize import main


def test_cli_writes_a_32khz_wav(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "out.wav"
    main(["--demo", "--text", "Good morning.", "--lang", "en", "--out", str(out), "--seed", "3"])
    samples, sr = sf.read(out)
    assert sr == 32000 and len(samples) > 32000 * 0.3
