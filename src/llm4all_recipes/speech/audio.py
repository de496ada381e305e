"""Audio in: any container FFmpeg reads (m4a/AAC, wav, mp3, flac, ogg ...), decoded and resampled by PyAV
(FFmpeg's libavcodec + libswresample, bundled in the `av` wheels) to mono float32 at Whisper's 16 kHz.

Every failure is an `AudioError` naming the file: not audio / corrupt, no audio stream, no samples, or a
sample rate outside `RATES` (below 8 kHz speech is not intelligible to a 16 kHz model; above 192 kHz is not
audio an ASR corpus holds). A stage counts these per file and goes on with the other calls.
"""

from pathlib import Path

import numpy as np

SAMPLING_RATE = 16_000  # Whisper's feature extractor
RATES = (8_000, 192_000)  # accepted input sample rates (Hz), inclusive
EXTENSIONS = (".m4a", ".wav", ".flac", ".mp3", ".ogg", ".opus", ".webm", ".mp4")


class AudioError(Exception):
    """An audio file that cannot be used; `str()` names the file."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def decode(source: str | Path | bytes, sampling_rate: int = SAMPLING_RATE, name: str | None = None) -> np.ndarray:
    """The first audio stream of a file (or of encoded bytes, called `name` in errors) as mono float32 samples
    in [-1, 1] at `sampling_rate`."""
    import io

    import av

    path = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except FileNotFoundError:
        raise AudioError(path, "no such file") from None
    except av.FFmpegError as exc:
        raise AudioError(path, f"not a readable audio file ({exc.strerror or exc})") from None
    with container:
        if not container.streams.audio:
            raise AudioError(path, "no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        if not rate or not RATES[0] <= rate <= RATES[1]:
            raise AudioError(path, f"sample rate {rate} Hz is not supported (accepted: {RATES[0]}–{RATES[1]} Hz)")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]  # flush
        except av.FFmpegError as exc:
            raise AudioError(path, f"corrupt audio ({exc.strerror or exc})") from None
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise AudioError(path, "no audio samples")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def find_audio(folder: Path) -> Path | None:
    """`<folder>/<folder name><ext>` for the first of EXTENSIONS present (simsamu layout), else None."""
    for ext in EXTENSIONS:
        path = folder / f"{folder.name}{ext}"
        if path.is_file():
            return path
    return None


def cut(samples: np.ndarray, start: float, end: float, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Samples between `start` and `end` seconds (clipped to the audio)."""
    a = max(0, round(start * sampling_rate))
    b = min(len(samples), round(end * sampling_rate))
    return samples[a:b]


def write_wav(path: str | Path, samples: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> None:
    """16-bit PCM mono WAV (tests and benchmarks write their synthetic audio with it)."""
    import wave

    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sampling_rate)
        f.writeframes(pcm.tobytes())


def write_m4a(path: str | Path, samples: np.ndarray, sampling_rate: int, bit_rate: int | None = None) -> None:
    """Mono AAC in an MP4 container (the simsamu format), encoded by PyAV (`bit_rate` in bit/s: FFmpeg's default
    when None)."""
    import fractions

    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=sampling_rate, layout="mono")
        if bit_rate:
            stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(
            np.asarray(samples, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = sampling_rate, 0, fractions.Fraction(1, sampling_rate)
        # frames of the encoder's size, timestamps from 0: the muxer then records the encoder's priming delay
        resampler = av.AudioResampler(
            format=stream.codec_context.format,
            layout="mono",
            rate=sampling_rate,
            frame_size=stream.codec_context.frame_size,
        )
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(chunk):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
