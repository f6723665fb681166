"""Safe loading of upstream checkpoint files (models/checkpoints.py)."""

import os
import shutil
from collections import OrderedDict

import pytest
import torch

from models.checkpoints import (
    CheckpointError,
    UnsupportedVersionError,
    file_sha256,
    load_gpt_checkpoint,
    load_sovits_checkpoint,
)

GPT_FILE = "harness_tiny_seed1234-e15.ckpt"
SOVITS_FILE = "harness_tiny_seed1234_e8_s240.pth"


class _Evil:
    """Pickles into a call of os.system that would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class HParams:  # pickled as tests.test_checkpoints.HParams: admitted as a harmless shim
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _save(obj, path, **kw):
    torch.save(obj, path, **kw)
    return path


def _with_header(src, dst, header: bytes):
    data = src.read_bytes()
    dst.write_bytes(header + data[2:])
    return dst


@pytest.mark.parametrize("protocol", [2, 4])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = _save(
        OrderedDict(weight={}, config=_Evil(marker), info="x"),
        tmp_path / "evil.pth",
        pickle_protocol=protocol,
    )
    with pytest.raises(CheckpointError) as err:
        load_sovits_checkpoint(path)
    assert str(path) in str(err.value)
    if protocol == 2:  # protocol-2 globals are named in the error (posix.system / os.system)
        assert "system" in str(err.value)
    assert not marker.exists()


def test_code_inside_hparams_config_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    cfg = HParams(model=HParams(x=_Evil(marker)), data=HParams())
    path = _save(OrderedDict(weight={}, config=cfg, info="x"), tmp_path / "evil2.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_sovits_checkpoint(path)
    assert not marker.exists()


def test_gpt_loader_refuses_code_too(tmp_path):
    marker = tmp_path / "pwned"
    path = _save(OrderedDict(weight={}, config={"model": {}}, info=_Evil(marker)), tmp_path / "e.ckpt")
    with pytest.raises(CheckpointError):
        load_gpt_checkpoint(path)
    assert not marker.exists()


def test_hparams_config_becomes_plain_dict(tmp_path):
    emb = torch.zeros(732, 4, dtype=torch.float16)
    cfg = HParams(model=HParams(inter_channels=16, lst=[1, 2]), data=HParams(hop_length=640))
    path = _save(OrderedDict(weight={"enc_p.text_embedding.weight": emb}, config=cfg, info="i"),
                 tmp_path / "ok.pth")
    ckpt = load_sovits_checkpoint(path)
    assert ckpt.config == {"model": {"inter_channels": 16, "lst": [1, 2]}, "data": {"hop_length": 640}}
    assert ckpt.version == "v2"
    assert ckpt.weights["enc_p.text_embedding.weight"].dtype == torch.float16


def test_tiny_gpt_checkpoint_loads(tiny_ckpt_dir):
    ckpt = load_gpt_checkpoint(tiny_ckpt_dir / GPT_FILE)
    assert ckpt.info == "GPT-e15"
    assert ckpt.config["model"]["EOS"] == 1024
    assert ckpt.config["data"]["max_sec"] == 54
    assert len(ckpt.weights) == 31
    assert ckpt.weights["model.ar_predict_layer.weight"].shape == (1025, 32)
    assert all(v.dtype == torch.float16 for v in ckpt.weights.values())


def test_tiny_sovits_checkpoint_loads_as_v2(tiny_ckpt_dir):
    ckpt = load_sovits_checkpoint(tiny_ckpt_dir / SOVITS_FILE)
    assert ckpt.version == "v2"  # although upstream's size heuristic says v1
    assert ckpt.header == b"PK"
    assert ckpt.info == "8epoch_240iteration"
    assert ckpt.config["model"]["inter_channels"] == 16
    assert ckpt.config["data"]["hop_length"] == 640
    assert isinstance(ckpt.config["train"], dict)
    assert len(ckpt.weights) == 439
    assert not any("enc_q" in k for k in ckpt.weights)


@pytest.mark.parametrize("header,version", [(b"05", "v2Pro"), (b"03", "v3"), (b"04", "v4")])
def test_later_version_headers_are_unsupported(tiny_ckpt_dir, tmp_path, header, version):
    path = _with_header(tiny_ckpt_dir / SOVITS_FILE, tmp_path / "tagged.pth", header)
    with pytest.raises(UnsupportedVersionError, match=f"is a {version} SoVITS checkpoint"):
        load_sovits_checkpoint(path)


def test_v2_header_copy_loads_as_v2(tiny_ckpt_dir, tmp_path):
    path = _with_header(tiny_ckpt_dir / SOVITS_FILE, tmp_path / "tagged01.pth", b"01")
    ckpt = load_sovits_checkpoint(path)
    assert ckpt.version == "v2" and ckpt.header == b"01"
    assert ckpt.weights["enc_p.text_embedding.weight"].shape == (732, 192)


@pytest.mark.parametrize("key", ["cfm.estimator.proj.weight", "sv_emb.weight"])
def test_later_version_weights_are_unsupported(tmp_path, key):
    weights = {"enc_p.text_embedding.weight": torch.zeros(732, 4), key: torch.zeros(2)}
    path = _save(OrderedDict(weight=weights, config={"model": {}}, info=""), tmp_path / "v3.pth")
    with pytest.raises(UnsupportedVersionError, match="supports v1/v2 only"):
        load_sovits_checkpoint(path)


def test_v1_decided_by_embedding_rows(tmp_path):
    weights = {"enc_p.text_embedding.weight": torch.zeros(322, 4, dtype=torch.float16)}
    path = _save(OrderedDict(weight=weights, config={"model": {}}, info=""), tmp_path / "v1.pth")
    assert load_sovits_checkpoint(path).version == "v1"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_gpt_checkpoint(tmp_path / "absent.ckpt")


def test_not_a_zip(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_sovits_checkpoint(path)


def test_truncated_file(tiny_ckpt_dir, tmp_path):
    data = (tiny_ckpt_dir / GPT_FILE).read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        load_gpt_checkpoint(path)


def test_file_sha256_is_content_hash(tiny_ckpt_dir, tmp_path):
    src = tiny_ckpt_dir / GPT_FILE
    copy = tmp_path / "copy.ckpt"
    shutil.copy(src, copy)
    digest = file_sha256(src)
    assert digest == file_sha256(copy) and len(digest) == 64
