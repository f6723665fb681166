"""serve_app.audio_io: every output format decoded back by a real decoder, and hostile uploads."""

from __future__ import annotations

import io
import struct
from datetime import timedelta

import av
import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.audio_io import (
    AUDIO_ERROR_CODES,
    FORMATS,
    AudioInputError,
    UnsupportedFormatError,
    decode_audio,
    encode_audio,
    open_stream,
    validate_reference,
)

SR = 32000
CHUNKS_S = (0.31, 0.2, 1.1)  # uneven on purpose: none is a multiple of any codec frame
MB = 1 << 20

# |decoded - expected| duration in seconds. Lossless formats are sample exact. MP3 streams (no
# Xing/LAME gapless frame) and raw ADTS AAC keep the encoder priming + last-frame padding.
DURATION_TOL = {"wav": 0.0, "pcm": 0.0, "flac": 0.0, "ogg": 0.01, "opus": 0.01,
                "mp3": 0.1, "aac": 0.1}
OUTPUT_RATE = {"opus": 48000}
LOSSLESS = {"wav", "pcm", "flac"}


def tone(seconds: float, sr: int = SR, freq: float = 440.0) -> np.ndarray:
    """A sine with 50 ms fades (the fades give cross-correlation one clear peak)."""
    t = np.arange(int(round(seconds * sr))) / sr
    env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05) if len(t) else t
    return (0.5 * np.sin(2 * np.pi * freq * t) * env).astype(np.float32)


def best_correlation(y: np.ndarray, x: np.ndarray, max_lag: int) -> float:
    """Max normalized cross-correlation of y against x over lags in [0, max_lag] (codecs only
    ever delay the signal)."""
    best = -1.0
    for lag in range(0, max_lag + 1):
        a = y[lag:lag + len(x)]
        n = min(len(a), len(x))
        if n < len(x) // 2:
            break
        a, b = a[:n], x[:n]
        c = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
        best = max(best, c)
    return best


def real_decode(fmt: str, data: bytes, streamed: bool) -> tuple[np.ndarray, int]:
    """Decode with an independent decoder: soundfile for wav/flac/ogg, PyAV (FFmpeg) for the rest.
    A streamed FLAC carries "total samples unknown" in STREAMINFO, which libsndfile cannot step
    through (it reports 2**63-1 frames and its seek fails), so FFmpeg reads that one."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, SR
    if fmt in ("wav", "ogg") or (fmt == "flac" and not streamed):
        y, sr = sf.read(io.BytesIO(data), dtype="float32")
        return y, sr
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1) for f in c.decode(stream)]
        dtype_scale = 32768.0 if frames and frames[0].dtype == np.int16 else 1.0
        return np.concatenate(frames).astype(np.float32) / dtype_scale, stream.rate


def stream_encode(fmt: str, x: np.ndarray, take_header: bool = True) -> tuple[bytes, list[bytes]]:
    enc = open_stream(fmt, SR)
    parts = [enc.header()] if take_header else []
    i = 0
    for seconds in CHUNKS_S:
        n = int(round(seconds * SR))
        parts.append(enc.feed(x[i:i + n]))
        i += n
    assert i == len(x)
    parts.append(enc.close())
    return b"".join(parts), parts


def check_roundtrip(fmt: str, data: bytes, x: np.ndarray, streamed: bool) -> None:
    y, sr = real_decode(fmt, data, streamed)
    assert sr == OUTPUT_RATE.get(fmt, SR)
    expected = len(x) / SR
    assert abs(len(y) / sr - expected) <= DURATION_TOL[fmt] + 1.5 / sr, (len(y) / sr, expected)
    reference = tone(expected, sr)  # the same analytic signal at the decoded rate
    corr = best_correlation(y, reference, max_lag=int(0.1 * sr))
    assert corr > (0.9999 if fmt in LOSSLESS else 0.98), corr


# ------------------------------------------------------------------------------ output table

def test_format_table_has_required_formats_and_fields():
    assert {"wav", "pcm", "flac", "mp3", "opus", "ogg"} <= set(FORMATS)
    for name, spec in FORMATS.items():
        assert spec.name == name
        assert spec.media_type.startswith("audio/")
        assert spec.extension.startswith(".")
        assert spec.streamable is True
    assert FORMATS["mp3"].media_type == "audio/mpeg"
    assert FORMATS["opus"].media_type.startswith("audio/ogg")


def test_unknown_format_raises_with_supported_list():
    with pytest.raises(UnsupportedFormatError) as exc:
        encode_audio(tone(0.1), SR, "m4b")
    assert isinstance(exc.value, ValueError)
    assert "wav" in exc.value.supported and "opus" in exc.value.supported
    with pytest.raises(UnsupportedFormatError):
        open_stream("xyz", SR)


def test_format_names_are_case_insensitive():
    assert encode_audio(tone(0.1), SR, "WAV")[:4] == b"RIFF"


# ------------------------------------------------------------------------------ whole files

@pytest.mark.parametrize("fmt", list(FORMATS))
def test_encode_whole_file_decodes_back(fmt):
    x = tone(1.61)
    check_roundtrip(fmt, encode_audio(x, SR, fmt), x, streamed=False)


def test_int16_conversion_is_upstreams_truncation_with_clipping():
    x = np.array([0.0, 0.5, 1.0, 1.5, -1.5, -1.0, np.nan, 1e-5, 0.99999, -0.00004], np.float32)
    pcm = np.frombuffer(encode_audio(x, SR, "pcm"), "<i2")
    assert pcm.tolist() == [0, 16384, 32767, 32767, -32768, -32768, 0, 0, 32767, -1]


def test_whole_wav_header_has_exact_sizes():
    data = encode_audio(tone(0.5), SR, "wav")
    riff_size, = struct.unpack("<I", data[4:8])
    data_size, = struct.unpack("<I", data[40:44])
    assert riff_size == len(data) - 8 and data_size == len(data) - 44 == int(0.5 * SR) * 2


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_encode_empty_input_does_not_raise(fmt):
    assert isinstance(encode_audio(np.zeros(0, np.float32), SR, fmt), bytes)


def test_encode_rejects_multichannel_input():
    with pytest.raises(ValueError):
        encode_audio(np.zeros((2, 100), np.float32), SR, "wav")


# ------------------------------------------------------------------------------ streaming

@pytest.mark.parametrize("fmt", list(FORMATS))
def test_stream_uneven_chunks_decodes_back(fmt):
    x = tone(sum(CHUNKS_S))
    data, _ = stream_encode(fmt, x)
    check_roundtrip(fmt, data, x, streamed=True)


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac"])
def test_lossless_stream_equals_whole_file_samples(fmt):
    x = tone(sum(CHUNKS_S))
    streamed, _ = stream_encode(fmt, x)
    whole = encode_audio(x, SR, fmt)
    y_stream, _ = real_decode(fmt, streamed, streamed=True)
    y_whole, _ = real_decode(fmt, whole, streamed=False)
    np.testing.assert_array_equal(y_stream, y_whole)


def test_stream_wav_header_says_unknown_length_and_soundfile_reads_it():
    x = tone(sum(CHUNKS_S))
    data, parts = stream_encode("wav", x)
    header = parts[0]
    assert len(header) == 44 and header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", header[4:8])[0] == 0xFFFFFFFF
    assert header[36:40] == b"data" and struct.unpack("<I", header[40:44])[0] == 0xFFFFFFFF
    y, sr = sf.read(io.BytesIO(data), dtype="int16")
    assert sr == SR and len(y) == len(x)
    # A client that stopped after the first chunk still holds a readable file.
    y_partial, _ = sf.read(io.BytesIO(parts[0] + parts[1]), dtype="int16")
    assert len(y_partial) == int(round(CHUNKS_S[0] * SR))


@pytest.mark.parametrize("fmt,magic", [("flac", b"fLaC"), ("opus", b"OggS"), ("mp3", b"ID3")])
def test_stream_header_is_the_container_header(fmt, magic):
    header = open_stream(fmt, SR).header()
    assert header.startswith(magic)


def test_opus_stream_header_holds_opushead_at_48k():
    header = open_stream("opus", SR).header()
    i = header.index(b"OpusHead")
    assert struct.unpack("<I", header[i + 12:i + 16])[0] == 48000  # input sample rate field


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_stream_hands_out_audio_before_close(fmt):
    """Bytes flow per chunk (one encoder per stream), not all at close."""
    rng = np.random.default_rng(0)
    enc = open_stream(fmt, SR)
    enc.header()
    fed = [len(enc.feed((0.3 * rng.standard_normal(SR // 2)).astype(np.float32)))
           for _ in range(6)]
    tail = len(enc.close())
    assert sum(1 for n in fed if n > 0) >= 5, fed
    assert sum(fed) > tail


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_stream_header_is_prepended_if_never_taken(fmt):
    x = tone(sum(CHUNKS_S))
    with_header, _ = stream_encode(fmt, x, take_header=True)
    without, _ = stream_encode(fmt, x, take_header=False)
    if fmt == "opus":  # Ogg stream serial numbers are random: compare lengths and start
        assert len(with_header) == len(without) and without[:4] == b"OggS"
    elif fmt == "ogg":
        assert abs(len(with_header) - len(without)) < 16 and without[:4] == b"OggS"
    else:
        assert with_header == without


def test_stream_close_is_idempotent_and_feed_after_close_fails():
    enc = open_stream("mp3", SR)
    enc.feed(tone(0.2))
    assert enc.close()
    assert enc.close() == b""
    with pytest.raises(RuntimeError):
        enc.feed(tone(0.1))


def test_stream_reports_media_type_and_output_rate():
    enc = open_stream("opus", SR)
    assert enc.media_type == FORMATS["opus"].media_type
    assert enc.output_sample_rate == 48000
    assert open_stream("mp3", SR).output_sample_rate == SR


# ------------------------------------------------------------------------------ input decoding

def _pyav_file(x: np.ndarray, sr: int, muxer: str, codec: str, rate: int) -> bytes:
    """Mono/stereo float32 [channels, n] -> file through PyAV (for m4a and webm uploads)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer) as c:
        s = c.add_stream(codec, rate=rate)
        layout = "stereo" if x.shape[0] == 2 else "mono"
        s.codec_context.layout = layout
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, np.float32), format="fltp",
                                           layout=layout)
        frame.sample_rate, frame.pts = sr, 0
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return buf.getvalue()


def make_upload(kind: str, seconds: float = 2.0, sr: int = 44100) -> tuple[bytes, int]:
    """A stereo clip (both channels the same tone) in `kind`; returns (bytes, decoded rate)."""
    mono = tone(seconds, sr)
    stereo = np.stack([mono, mono])
    if kind in ("wav", "flac", "ogg", "mp3"):
        fmt = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}[kind]
        buf = io.BytesIO()
        sf.write(buf, stereo.T, sr, format=fmt)
        return buf.getvalue(), sr
    if kind == "m4a":
        return _pyav_file(stereo, sr, "ipod", "aac", sr), sr
    if kind == "webm":
        return _pyav_file(stereo, sr, "webm", "libopus", 48000), 48000
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["wav", "flac", "ogg", "mp3", "m4a", "webm"])
def test_decode_stereo_44k1_uploads(kind):
    data, expected_sr = make_upload(kind)
    y, sr = decode_audio(data, max_bytes=10 * MB)
    assert sr == expected_sr and y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) / sr - 2.0) <= 0.06, len(y) / sr
    assert best_correlation(y, tone(2.0, sr), max_lag=int(0.1 * sr)) > 0.98


def test_decode_downmixes_by_averaging_channels():
    left = tone(1.0, 44100)
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, np.zeros_like(left)]).T, 44100, format="WAV", subtype="FLOAT")
    y, sr = decode_audio(buf.getvalue(), max_bytes=10 * MB)
    assert sr == 44100
    np.testing.assert_allclose(y, 0.5 * left, atol=1e-6)


@pytest.mark.parametrize("fmt", ["flac", "opus", "mp3", "aac"])
def test_decode_reads_our_own_streams(fmt):
    """Includes the unknown-length FLAC stream that needs the FFmpeg fallback."""
    data, _ = stream_encode(fmt, tone(sum(CHUNKS_S)))
    y, sr = decode_audio(data, max_bytes=10 * MB)
    assert sr == OUTPUT_RATE.get(fmt, SR)
    assert abs(len(y) / sr - sum(CHUNKS_S)) <= DURATION_TOL[fmt] + 0.01


def test_decode_too_large():
    data, _ = make_upload("wav")
    with pytest.raises(AudioInputError) as exc:
        decode_audio(data, max_bytes=len(data) - 1)
    assert exc.value.code == "audio_too_large"
    decode_audio(data, max_bytes=len(data))  # the limit itself is allowed


@pytest.mark.parametrize("data", [b"", bytearray()])
def test_decode_empty(data):
    with pytest.raises(AudioInputError) as exc:
        decode_audio(data, max_bytes=MB)
    assert exc.value.code == "audio_invalid"


def test_decode_refuses_a_path_string():
    with pytest.raises(AudioInputError) as exc:
        decode_audio("/etc/passwd", max_bytes=MB)  # type: ignore[arg-type]
    assert exc.value.code == "audio_invalid"


def test_decode_random_bytes():
    data = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    with pytest.raises(AudioInputError) as exc:
        decode_audio(data, max_bytes=MB)
    assert exc.value.code == "audio_invalid"


def test_decode_text_is_invalid():
    with pytest.raises(AudioInputError) as exc:
        decode_audio(b"<html><body>not audio</body></html>" * 20, max_bytes=MB)
    assert exc.value.code == "audio_invalid"


@pytest.mark.parametrize("kind,keep", [("wav", 44), ("flac", 60), ("mp3", 100), ("ogg", 100),
                                       ("m4a", 100), ("webm", 100)])
def test_decode_truncated_header_is_invalid(kind, keep):
    data, _ = make_upload(kind)
    with pytest.raises(AudioInputError) as exc:
        decode_audio(data[:keep], max_bytes=MB)
    assert exc.value.code == "audio_invalid"


def test_decode_truncated_wav_payload_gives_the_audio_that_is_there():
    data, _ = make_upload("wav")  # 2 s stereo 16-bit at 44.1 kHz
    y, sr = decode_audio(data[:44 + 44100 * 4], max_bytes=MB)
    assert len(y) == sr == 44100


def test_decode_stops_at_max_seconds():
    data, _ = make_upload("flac", seconds=3.0)
    with pytest.raises(AudioInputError) as exc:
        decode_audio(data, max_bytes=MB, max_seconds=2.0)
    assert exc.value.code == "audio_too_long"
    data, _ = make_upload("m4a", seconds=3.0)  # the FFmpeg path stops too
    with pytest.raises(AudioInputError) as exc:
        decode_audio(data, max_bytes=MB, max_seconds=2.0)
    assert exc.value.code == "audio_too_long"


def test_decode_rejects_non_finite_float_wav():
    x = tone(1.0)
    x[100] = np.nan
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioInputError) as exc:
        decode_audio(buf.getvalue(), max_bytes=MB)
    assert exc.value.code == "audio_invalid"


@pytest.mark.parametrize("playlist", [
    b"ffconcat version 1.0\nfile seg.wav\n",
    b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\nseg.wav\n"
    b"#EXT-X-ENDLIST\n",
])
def test_decode_never_opens_files_named_inside_the_upload(playlist, tmp_path, monkeypatch):
    # FFmpeg's concat/hls demuxers would read seg.wav from the working directory.
    sf.write(tmp_path / "seg.wav", tone(4.0), SR)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AudioInputError) as exc:
        decode_audio(playlist, max_bytes=MB)
    assert exc.value.code == "audio_invalid"


def test_audio_input_error_carries_code_and_message():
    err = AudioInputError("audio_silent", "quiet")
    assert isinstance(err, ValueError) and err.code == "audio_silent" and err.message == "quiet"


# ------------------------------------------------------------------------------ reference rules

def test_validate_reference_accepts_a_normal_clip():
    validate_reference(tone(5.0), SR)


@pytest.mark.parametrize("seconds,code", [(2.9, "audio_too_short"), (10.1, "audio_too_long")])
def test_validate_reference_length(seconds, code):
    with pytest.raises(AudioInputError) as exc:
        validate_reference(tone(seconds), SR)
    assert exc.value.code == code


def test_validate_reference_bounds_are_inclusive():
    validate_reference(tone(3.0), SR)
    validate_reference(tone(10.0), SR)


@pytest.mark.parametrize("scale", [0.0, 5e-4])
def test_validate_reference_silent(scale):
    with pytest.raises(AudioInputError) as exc:
        validate_reference(tone(5.0) * scale, SR)
    assert exc.value.code == "audio_silent"


def test_validate_reference_custom_limits():
    validate_reference(tone(1.0), SR, min_seconds=0.5, max_seconds=2.0)


# ------------------------------------------------------------------------------ fuzzing

_FUZZ = settings(max_examples=300, deadline=timedelta(seconds=3), derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])

# Magic numbers that steer the bytes into each parser's deeper code.
_MAGICS = [b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00", b"fLaC\x00\x00\x00\x22",
           b"OggS\x00\x02", b"ID3\x03\x00\x00\x00\x00\x00\x00", b"\xff\xfb\x90\x00",
           b"\x00\x00\x00\x20ftypM4A ",
           b"\x1aE\xdf\xa3", b"FORM\x00\x00\x00\x00AIFF", b"\xff\xf1\x50\x80"]


def _only_audio_input_errors(data: bytes) -> None:
    try:
        y, sr = decode_audio(data, max_bytes=64 * 1024, max_seconds=30.0)
    except AudioInputError as e:
        assert e.code in AUDIO_ERROR_CODES
    else:
        assert y.dtype == np.float32 and y.ndim == 1 and len(y) > 0 and sr > 0
        assert np.all(np.isfinite(y))


@_FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes(data):
    _only_audio_input_errors(data)


@_FUZZ
@given(st.sampled_from(_MAGICS), st.binary(max_size=4096))
def test_fuzz_bytes_behind_a_real_magic_number(magic, tail):
    _only_audio_input_errors(magic + tail)


_VALID = {kind: make_upload(kind, seconds=0.5, sr=16000)[0]
          for kind in ("wav", "flac", "ogg", "mp3", "m4a", "webm")}


@settings(max_examples=300, deadline=timedelta(seconds=3), derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_VALID)),
       st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=12),
       st.integers(0, 1 << 20))
def test_fuzz_corrupted_real_files(kind, edits, cut):
    data = bytearray(_VALID[kind])
    for pos, value in edits:
        data[pos % len(data)] = value
    _only_audio_input_errors(bytes(data[: max(1, cut % (len(data) + 1))]))
