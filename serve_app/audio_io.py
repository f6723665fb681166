"""Audio containers for the HTTP ingress: encode synthesized speech, decode uploaded references.

Output side: the model produces 32 kHz mono float32 in [-1, 1]. `FORMATS` is the one table that
says, per output format, its MIME type, file extension, whether it can be streamed, and which
encoder makes it. `encode_audio` makes a whole file; `open_stream` returns a `StreamEncoder` that
turns chunks into bytes as they arrive, with one codec context per stream (never one file per
chunk). Every format is quantized to int16 (upstream's x*32768, clipped, truncated) first, so all formats carry the same
samples a WAV would.

Input side: `decode_audio` turns user-uploaded bytes into mono float32 + sample rate, in memory
only, and maps every failure to `AudioInputError` with a stable `code`. `validate_reference`
checks the decoded clip against the reference-audio rules (length, silence).

Plain numpy + soundfile + PyAV; no Ray, no Starlette.
"""

from __future__ import annotations

import io
import struct
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av
import numpy as np

from models.audio import to_int16
import soundfile as sf
import soxr

__all__ = [
    "AUDIO_ERROR_CODES",
    "FORMATS",
    "AudioInputError",
    "OutputFormat",
    "StreamEncoder",
    "UnsupportedFormatError",
    "decode_audio",
    "encode_audio",
    "get_format",
    "open_stream",
    "supported_formats",
    "validate_reference",
]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

class UnsupportedFormatError(ValueError):
    """An output format name that `FORMATS` does not know (or that cannot stream)."""

    def __init__(self, fmt: str, supported: list[str], what: str = "audio format"):
        self.format = fmt
        self.supported = list(supported)
        super().__init__(f"unsupported {what} {fmt!r}; supported: {', '.join(self.supported)}")


AUDIO_ERROR_CODES = (
    "audio_too_large",  # upload larger than the byte limit
    "audio_invalid",  # not audio, corrupt, empty, or an unsupported container/codec
    "audio_too_short",
    "audio_too_long",
    "audio_silent",
)


class AudioInputError(ValueError):
    """A user-supplied clip was rejected. `code` is stable (one of AUDIO_ERROR_CODES) and safe
    to return to clients; `message` is human-readable."""

    def __init__(self, code: str, message: str):
        assert code in AUDIO_ERROR_CODES, code
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


# --------------------------------------------------------------------------------------------
# Sample conversion
# --------------------------------------------------------------------------------------------

def _as_mono_float32(samples) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
    if x.dtype == np.int16:  # already quantized: keep the exact values
        return x.astype(np.float32) / 32768.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1], got dtype {x.dtype}")
    return x.astype(np.float32, copy=False)


def _to_int16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 exactly as upstream serves it (`models.audio.to_int16`)."""
    return to_int16(x)


# --------------------------------------------------------------------------------------------
# Encoders (internal). Each takes float32 mono chunks and returns the bytes ready so far.
# whole_file=True may hold everything back until finish() so that containers can fix up their
# headers (exact sizes, sample counts, gapless info); whole_file=False hands bytes out as soon as
# the codec/muxer produce them.
# --------------------------------------------------------------------------------------------

class _Encoder:
    output_rate: int

    def start(self) -> bytes:
        raise NotImplementedError

    def write(self, x: np.ndarray) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError


class _Sink:
    """Append-only, non-seekable byte sink. Because it has no `seek`, PyAV muxers write strictly
    forward (no header fix-ups), so whatever has been written can be drained and sent."""

    def __init__(self):
        self._buf = bytearray()

    def write(self, data) -> int:
        self._buf += data
        return len(data)

    def drain(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


_UNKNOWN_SIZE = 0xFFFFFFFF


def _wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """44-byte PCM s16le mono RIFF header. data_bytes=None writes 0xFFFFFFFF for the RIFF and
    data sizes ("length unknown"), which libsndfile, FFmpeg and browsers read to end of stream."""
    if data_bytes is None:
        riff_size = data_size = _UNKNOWN_SIZE
    else:
        riff_size, data_size = 36 + data_bytes, data_bytes
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
            + b"data" + struct.pack("<I", data_size))


class _WavEncoder(_Encoder):
    def __init__(self, sample_rate: int, whole_file: bool):
        self.output_rate = sample_rate
        self._whole = whole_file
        self._held: list[bytes] = []

    def start(self) -> bytes:
        return b"" if self._whole else _wav_header(self.output_rate, None)

    def write(self, x: np.ndarray) -> bytes:
        data = _to_int16(x).tobytes()  # numpy int16 is little-endian on every platform we run
        if self._whole:
            self._held.append(data)
            return b""
        return data

    def finish(self) -> bytes:
        if not self._whole:
            return b""
        data = b"".join(self._held)
        self._held = []
        return _wav_header(self.output_rate, len(data)) + data


class _PcmEncoder(_Encoder):
    def __init__(self, sample_rate: int, whole_file: bool):
        self.output_rate = sample_rate

    def start(self) -> bytes:
        return b""

    def write(self, x: np.ndarray) -> bytes:
        return _to_int16(x).tobytes()

    def finish(self) -> bytes:
        return b""


class _SndfileOggVorbisEncoder(_Encoder):
    """Ogg Vorbis through libsndfile (libvorbis). PyAV's bundled FFmpeg has no libvorbis and its
    native Vorbis encoder is experimental and stereo-only. libsndfile emits Ogg pages of ~4 KB,
    so a stream lags by up to one page (~0.5 s of speech at the default quality), and the Vorbis
    headers only appear with the first samples (header() is b"")."""

    def __init__(self, sample_rate: int, whole_file: bool):
        self.output_rate = sample_rate
        self._sink = _SeekTolerantSink()
        self._file = sf.SoundFile(self._sink, "w", samplerate=sample_rate, channels=1,
                                  format="OGG", subtype="VORBIS")

    def start(self) -> bytes:
        return self._sink.drain()

    # libsndfile's Vorbis writer puts buffers proportional to one write() call on the C stack:
    # long single writes overflow it and kill the process (SIGSEGV). Feed it in small blocks.
    BLOCK_FRAMES = 4096

    def write(self, x: np.ndarray) -> bytes:
        pcm = _to_int16(x)
        for start in range(0, len(pcm), self.BLOCK_FRAMES):
            self._file.write(pcm[start:start + self.BLOCK_FRAMES])
        return self._sink.drain()

    def finish(self) -> bytes:
        self._file.close()
        return self._sink.drain()


class _SeekTolerantSink(_Sink):
    """libsndfile's virtual I/O insists on seek/tell/read even when writing Ogg; it only ever
    asks where it is. Any real move backwards would corrupt a drained stream, so it fails loudly."""

    def __init__(self):
        super().__init__()
        self._pos = 0

    def write(self, data) -> int:
        self._pos += len(data)
        return super().write(data)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset,
                  io.SEEK_END: self._pos + offset}[whence]
        if target != self._pos:
            raise OSError("stream sink cannot seek")
        return self._pos

    def read(self, size: int = -1) -> bytes:
        return b""


class _PyAVEncoder(_Encoder):
    """One PyAV codec context + one in-memory muxer per file/stream.

    Streams write to a non-seekable sink with `flush_packets=1`, so each packet reaches the sink
    as soon as the muxer has it and `write()` can return it. Whole files write to a seekable
    BytesIO so muxers can go back and fill in headers (FLAC STREAMINFO sample count + MD5, the MP3
    Xing/LAME frame with encoder delay/padding for gapless decoding).
    """

    def __init__(self, sample_rate: int, whole_file: bool, *, muxer: str, codec: str,
                 bit_rate: int | None = None, rate: int | None = None,
                 stream_mux_options: dict[str, str] | None = None):
        self.output_rate = rate or sample_rate
        self._whole = whole_file
        # Resampling happens before the codec (in float) with soxr HQ, the same resampler the
        # model side uses; the stream object keeps its filter state across chunks.
        self._resampler = (None if self.output_rate == sample_rate else
                           soxr.ResampleStream(sample_rate, self.output_rate, 1,
                                               dtype="float32", quality="HQ"))
        self._out = io.BytesIO() if whole_file else _Sink()
        options = {} if whole_file else {"flush_packets": "1", **(stream_mux_options or {})}
        self._container = av.open(self._out, "w", format=muxer, options=options)
        self._stream = self._container.add_stream(codec, rate=self.output_rate)
        ctx = self._stream.codec_context
        ctx.layout = "mono"
        formats = [f.name for f in ctx.codec.audio_formats or []]
        # Prefer feeding int16 directly; codecs that only take float (AAC) get int16/32768.
        self._sample_fmt = next((f for f in ("s16", "s16p") if f in formats), "fltp")
        ctx.format = self._sample_fmt
        if bit_rate:
            ctx.bit_rate = bit_rate
        self._pts = 0

    def _drain(self) -> bytes:
        return b"" if self._whole else self._out.drain()

    def start(self) -> bytes:
        # Opens the codec (so codec headers/extradata exist) and writes the container header.
        self._container.start_encoding()
        return self._drain()

    def _encode(self, x: np.ndarray | None) -> None:
        if x is not None and len(x):
            q = _to_int16(x)
            if self._sample_fmt == "fltp":
                arr = (q.astype(np.float32) / 32768.0).reshape(1, -1)
            else:
                arr = q.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(arr, format=self._sample_fmt, layout="mono")
            frame.sample_rate = self.output_rate
            frame.time_base = Fraction(1, self.output_rate)
            frame.pts = self._pts
            self._pts += arr.shape[1]
            # PyAV re-blocks arbitrary chunk lengths into the codec's frame size internally.
            self._container.mux(self._stream.encode(frame))
        elif x is None:
            self._container.mux(self._stream.encode(None))

    def write(self, x: np.ndarray) -> bytes:
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        self._encode(x)
        return self._drain()

    def finish(self) -> bytes:
        if self._resampler is not None:
            self._encode(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        self._encode(None)
        self._container.close()
        if self._whole:
            return self._out.getvalue()
        return self._out.drain()


def _pyav(**kwargs) -> Callable[[int, bool], _Encoder]:
    return lambda sample_rate, whole_file: _PyAVEncoder(sample_rate, whole_file, **kwargs)


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# The format table
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OutputFormat:
    name: str
    media_type: str  # HTTP Content-Type
    extension: str  # with the dot
    streamable: bool
    encoder: Callable[[int, bool], _Encoder]  # (input sample_rate, whole_file) -> encoder


# Ogg muxer: close a page every 100 ms when streaming (default is 1 s), so a chunk's audio
# leaves the server with the chunk; costs ~2.6 kbps of page headers (~33 B per page).
_OGG_STREAM = {"page_duration": "100000"}

_TABLE = [
    OutputFormat("wav", "audio/wav", ".wav", True, _WavEncoder),
    OutputFormat("pcm", "audio/pcm", ".pcm", True, _PcmEncoder),  # raw s16le mono
    OutputFormat("flac", "audio/flac", ".flac", True, _pyav(muxer="flac", codec="flac")),
    OutputFormat("mp3", "audio/mpeg", ".mp3", True,
                 _pyav(muxer="mp3", codec="libmp3lame", bit_rate=96_000)),
    # Opus only runs at 48/24/16/12/8 kHz: 32 kHz is resampled to 48 kHz.
    OutputFormat("opus", "audio/ogg; codecs=opus", ".opus", True,
                 _pyav(muxer="ogg", codec="libopus", bit_rate=64_000, rate=48_000,
                       stream_mux_options=_OGG_STREAM)),
    OutputFormat("ogg", "audio/ogg; codecs=vorbis", ".ogg", True, _SndfileOggVorbisEncoder),
]
if _has_encoder("aac"):  # FFmpeg's native AAC encoder, raw ADTS frames
    _TABLE.append(OutputFormat("aac", "audio/aac", ".aac", True,
                               _pyav(muxer="adts", codec="aac", bit_rate=96_000)))

FORMATS: dict[str, OutputFormat] = {f.name: f for f in _TABLE}


def supported_formats(streaming: bool = False) -> list[str]:
    return [name for name, f in FORMATS.items() if f.streamable or not streaming]


def get_format(fmt: str, streaming: bool = False) -> OutputFormat:
    """Look a format up by name (case-insensitive); UnsupportedFormatError if unknown."""
    spec = FORMATS.get(str(fmt).strip().lower())
    if spec is None or (streaming and not spec.streamable):
        raise UnsupportedFormatError(
            fmt, supported_formats(streaming), "streaming format" if streaming else "audio format")
    return spec


def _check_rate(sample_rate: int) -> int:
    if int(sample_rate) != sample_rate or not 1000 <= sample_rate <= 384_000:
        raise ValueError(f"bad sample rate {sample_rate!r}")
    return int(sample_rate)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encode a whole clip (mono float32 in [-1, 1]) into one file of format `fmt`."""
    spec = get_format(fmt)
    x = _as_mono_float32(samples)
    enc = spec.encoder(_check_rate(sample_rate), True)
    return enc.start() + enc.write(x) + enc.finish()


class StreamEncoder:
    """Incremental encoder for one streamed response.

    Send `header()`, then whatever each `feed(chunk)` returns (may be b"": codecs and Ogg pages
    hold a little audio back), then `close()`. Everything returned, concatenated, is one valid
    file. If `feed`/`close` run before `header()` was taken, the header is prepended to their
    output, so no byte is ever lost. Not thread-safe; one per stream.
    """

    def __init__(self, spec: OutputFormat, sample_rate: int):
        self.format = spec
        self.sample_rate = _check_rate(sample_rate)
        self._enc = spec.encoder(self.sample_rate, False)
        self._pending = self._enc.start()
        self._closed = False

    @property
    def media_type(self) -> str:
        return self.format.media_type

    @property
    def output_sample_rate(self) -> int:
        """Sample rate inside the container (48000 for opus, else the input rate)."""
        return self._enc.output_rate

    def _take_pending(self) -> bytes:
        out, self._pending = self._pending, b""
        return out

    def header(self) -> bytes:
        return self._take_pending()

    def feed(self, samples) -> bytes:
        if self._closed:
            raise RuntimeError("feed() after close()")
        x = _as_mono_float32(samples)
        return self._take_pending() + self._enc.write(x)

    def close(self) -> bytes:
        """Flush the codec and finish the container. Safe to call twice (second call -> b"")."""
        if self._closed:
            return b""
        self._closed = True
        return self._take_pending() + self._enc.finish()


def open_stream(fmt: str, sample_rate: int) -> StreamEncoder:
    return StreamEncoder(get_format(fmt, streaming=True), sample_rate)


# --------------------------------------------------------------------------------------------
# Input decoding
# --------------------------------------------------------------------------------------------

# Containers PyAV may open for uploads. Anything else (notably `concat`/`hls`, which would open
# other files or URLs named inside the upload, or image/subtitle demuxers) is refused before
# probing finishes.
_INPUT_DEMUXERS = "wav,w64,flac,ogg,mp3,aac,mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,aiff,caf"
# libsndfile only sees the containers it is best at, recognised by their first bytes. It also
# speaks a dozen legacy formats nobody uploads (less parser surface without them), and MP3 is
# left to FFmpeg on purpose: soundfile re-seeks after every read and libsndfile's MP3 seek is
# approximate, so reading in blocks spliced the audio (measured: a 0.3 RMS glitch at each block
# edge), and its mpg123 prints notes to stderr on every odd file.
_SNDFILE_MAGICS = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM")
_MAX_CHANNELS = 16
_MIN_RATE, _MAX_RATE = 4000, 384_000
_READ_BLOCK = 1 << 16  # frames per soundfile read: bounds each allocation
_DECODE_TIME_LIMIT_S = 20.0  # wall-clock cap on the PyAV decode loop


def _too_long(max_seconds: float) -> AudioInputError:
    return AudioInputError("audio_too_long", f"audio is longer than {max_seconds:g} s")


def _check_header(sample_rate: int, channels: int) -> None:
    if not _MIN_RATE <= sample_rate <= _MAX_RATE:
        raise AudioInputError("audio_invalid", f"unsupported sample rate {sample_rate}")
    if not 1 <= channels <= _MAX_CHANNELS:
        raise AudioInputError("audio_invalid", f"unsupported channel count {channels}")


def _decode_soundfile(data: bytes, max_seconds: float) -> tuple[np.ndarray, int] | None:
    """libsndfile (wav/flac/ogg and friends). None when it should not or cannot read the bytes."""
    if not data.startswith(_SNDFILE_MAGICS):
        return None
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception:
        return None
    blocks: list[np.ndarray] = []
    try:
        with f:
            sr, ch = int(f.samplerate), int(f.channels)
            _check_header(sr, ch)
            limit = int(max_seconds * sr)
            total = 0
            while True:
                block = f.read(_READ_BLOCK, dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.append(block.mean(axis=1) if ch > 1 else block[:, 0])
                total += len(block)
                if total > limit:
                    raise _too_long(max_seconds)
    except AudioInputError:
        raise
    except Exception:
        # Header parsed but the payload is not readable this way (e.g. a FLAC stream of unknown
        # length, which libsndfile cannot step through): let FFmpeg try.
        return None
    if not blocks:
        return None
    return np.concatenate(blocks), sr


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    arr = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: (1, n * channels) interleaved
        arr = arr.reshape(-1, channels).T
    kind = arr.dtype
    if kind == np.uint8:
        arr = (arr.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(kind, np.integer):
        arr = arr.astype(np.float32) / float(np.iinfo(kind).max + 1)
    else:
        arr = arr.astype(np.float32)
    return arr.mean(axis=0) if arr.shape[0] > 1 else arr[0]


def _decode_pyav(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """FFmpeg fallback (m4a/aac, webm/opus, anything libsndfile rejects), in memory, bounded."""
    deadline = time.monotonic() + _DECODE_TIME_LIMIT_S
    try:
        container = av.open(io.BytesIO(data), "r",
                            options={"format_whitelist": _INPUT_DEMUXERS},
                            metadata_errors="replace")
    except Exception as e:
        raise AudioInputError("audio_invalid", "not a readable audio file") from e
    chunks: list[np.ndarray] = []
    sr = None
    try:
        with container:
            if not container.streams.audio:
                raise AudioInputError("audio_invalid", "no audio stream found")
            stream = container.streams.audio[0]
            total = limit = 0
            for packet in container.demux(stream):
                if time.monotonic() > deadline:
                    raise AudioInputError("audio_invalid", "audio took too long to decode")
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    continue  # one corrupt packet: skip it, as players do
                for frame in frames:
                    if sr is None:
                        sr = int(frame.sample_rate)
                        _check_header(sr, frame.layout.nb_channels)
                        limit = int(max_seconds * sr)
                    elif frame.sample_rate != sr:
                        raise AudioInputError("audio_invalid", "sample rate changes mid-stream")
                    if not 1 <= frame.layout.nb_channels <= _MAX_CHANNELS:
                        raise AudioInputError("audio_invalid", "unsupported channel count")
                    chunks.append(_frame_to_mono(frame))
                    total += frame.samples
                    if total > limit:
                        raise _too_long(max_seconds)
    except AudioInputError:
        raise
    except Exception as e:
        raise AudioInputError("audio_invalid", "corrupt audio file") from e
    if sr is None or not chunks:
        raise AudioInputError("audio_invalid", "no audio could be decoded")
    return np.concatenate(chunks), sr


def decode_audio(data: bytes, max_bytes: int, *, max_seconds: float = 60.0
                 ) -> tuple[np.ndarray, int]:
    """Decode an uploaded clip to (mono float32 samples, sample rate), never touching the disk.

    Tries libsndfile first (wav/flac/ogg/aiff), then FFmpeg via PyAV restricted to audio
    containers (mp3, m4a, webm, ...). Channels are averaged. Raises only AudioInputError:
    `audio_too_large` (> max_bytes), `audio_too_long` (decodes past max_seconds; decoding stops
    there, which bounds work on highly compressible uploads), `audio_invalid` (anything else).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioInputError("audio_invalid", "audio must be bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise AudioInputError("audio_too_large",
                              f"audio is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise AudioInputError("audio_invalid", "audio is empty")
    result = _decode_soundfile(data, max_seconds)
    if result is None:
        result = _decode_pyav(data, max_seconds)
    samples, sr = result
    if samples.size == 0:
        raise AudioInputError("audio_invalid", "audio has no samples")
    if not np.all(np.isfinite(samples)):
        raise AudioInputError("audio_invalid", "audio contains NaN or infinite samples")
    return np.ascontiguousarray(samples, dtype=np.float32), sr


def validate_reference(samples: np.ndarray, sr: int, min_seconds: float = 3.0,
                       max_seconds: float = 10.0, *, min_peak: float = 1e-3,
                       min_rms: float = 1e-4) -> None:
    """Reference-clip rules: length within [min_seconds, max_seconds] and not (near) silent."""
    x = np.asarray(samples, dtype=np.float32)
    seconds = x.size / sr
    if seconds < min_seconds:
        raise AudioInputError("audio_too_short",
                              f"reference audio is {seconds:.2f} s; it must be at least "
                              f"{min_seconds:g} s")
    if seconds > max_seconds:
        raise AudioInputError("audio_too_long",
                              f"reference audio is {seconds:.2f} s; it must be at most "
                              f"{max_seconds:g} s")
    peak = float(np.max(np.abs(x)))
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if peak < min_peak or rms < min_rms:
        raise AudioInputError("audio_silent", "reference audio is silent")
