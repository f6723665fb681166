// gsv-serve playground: plain JavaScript, no dependencies, served by the ingress itself.
//
// Speaking uses POST /v1/audio/speech with {"stream": true, "response_format": "pcm"}: the body is
// raw s16le mono at the rate in the X-Sample-Rate header, so every chunk can be scheduled on a
// Web Audio clock the moment it arrives (playback starts long before synthesis ends). The other
// formats are fetched as whole files, decoded by the browser, and downloaded as received.
// Stop aborts the fetch; the server notices the disconnect and stops synthesising.
"use strict";

(() => {
  const FALLBACK_RATE = 32000;
  const KEY_STORAGE = "gsv-serve.api-key"; // sessionStorage only: gone when the tab closes
  const LANGUAGES = [
    ["auto", "Auto-detect"], ["en", "English"], ["zh", "Chinese (with English)"], ["ja", "Japanese"],
    ["ko", "Korean"], ["yue", "Cantonese"], ["all_zh", "Chinese only"], ["all_ja", "Japanese only"],
    ["all_ko", "Korean only"], ["all_yue", "Cantonese only"], ["auto_yue", "Auto-detect (Cantonese)"],
  ];
  const EXTENSIONS = { wav: "wav", flac: "flac", mp3: "mp3", ogg: "ogg", opus: "opus", aac: "aac" };

  const $ = (id) => document.getElementById(id);
  const el = {
    modelLine: $("model-line"), demoWarning: $("demo-warning"),
    authCard: $("auth-card"), authReason: $("auth-reason"), authForm: $("auth-form"), apiKey: $("api-key"),
    text: $("text"), textCount: $("text-count"), voice: $("voice"), language: $("language"),
    format: $("format"), speed: $("speed"), speedValue: $("speed-value"), seed: $("seed"),
    speak: $("speak"), stop: $("stop"), status: $("status"), speakError: $("speak-error"),
    result: $("result"), waveform: $("waveform"),
    ttfa: $("stat-ttfa"), total: $("stat-total"), duration: $("stat-duration"), rtf: $("stat-rtf"),
    version: $("stat-version"), seedOut: $("stat-seed"),
    replay: $("replay"), download: $("download"), reuseSeed: $("reuse-seed"),
    uploadForm: $("upload-form"), uploadFile: $("upload-file"), uploadTranscript: $("upload-transcript"),
    uploadLanguage: $("upload-language"), uploadName: $("upload-name"), uploadSubmit: $("upload-submit"),
    uploadStatus: $("upload-status"), uploadError: $("upload-error"),
  };

  const state = {
    modelId: null,
    controller: null, // AbortController of the speech request in flight
    player: null, // StreamPlayer of the current result
    audio: null, // {kind: "pcm", chunks: Int16Array[], rate} or {kind: "file", blob, ext, buffer}
    seed: null,
    voiceLabel: "voice",
  };

  // ------------------------------------------------------------------------------ API access

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders() {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  // fetch + the API's error shape: any non-2xx becomes an ApiError with the server's own message.
  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}), ...authHeaders() };
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "network_error", `Could not reach the server (${err.message}).`);
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async function errorFrom(response) {
    let code = `http_${response.status}`;
    let message = `The server answered ${response.status} ${response.statusText}`.trim() + ".";
    try {
      const body = await response.json();
      if (body && body.error && typeof body.error.message === "string") {
        message = body.error.message;
        code = body.error.code || code;
      } else if (body && typeof body.message === "string") {
        message = body.message;
      } else if (body && typeof body.detail === "string") {
        message = body.detail;
      }
    } catch (_) {
      // not JSON: keep the status line
    }
    if (response.status === 401) askForKey(message);
    return new ApiError(response.status, code, message);
  }

  // ------------------------------------------------------------------------------ messages

  function showError(box, err) {
    box.replaceChildren();
    const text = document.createElement("span");
    text.className = "error-message";
    text.textContent = readable(err);
    box.append(text);
    if (err instanceof ApiError && err.code) {
      const code = document.createElement("code");
      code.className = "error-code";
      code.textContent = err.status ? `${err.status} ${err.code}` : err.code;
      box.append(" ", code);
    }
    box.hidden = false;
  }

  function readable(err) {
    if (err instanceof ApiError) {
      if (err.status === 401) return `${sentence(err.message)} Enter an API key above, then try again.`;
      return sentence(err.message);
    }
    return sentence(err && err.message ? err.message : String(err));
  }

  function sentence(message) {
    const s = String(message || "Something went wrong").trim();
    const first = s.charAt(0).toUpperCase() + s.slice(1);
    return /[.!?]$/.test(first) ? first : `${first}.`;
  }

  function clearError(box) {
    box.hidden = true;
    box.replaceChildren();
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  // ------------------------------------------------------------------------------ auth

  function askForKey(message) {
    const hadKey = sessionStorage.getItem(KEY_STORAGE) !== null;
    sessionStorage.removeItem(KEY_STORAGE); // a refused key is not kept
    el.authReason.textContent = hadKey
      ? `The server refused that key: ${sentence(message)}`
      : `This server needs an API key: ${sentence(message)}`;
    el.authCard.hidden = false;
    el.apiKey.focus();
  }

  el.authForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = el.apiKey.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    el.apiKey.value = "";
    el.authCard.hidden = true;
    clearError(el.speakError);
    loadServerInfo();
  });

  // ------------------------------------------------------------------------------ model + voices

  async function loadModel() {
    const body = await (await api("/v1/models")).json();
    const model = body.data && body.data[0];
    if (!model) throw new ApiError(0, "no_model", "the server lists no model");
    state.modelId = model.id;
    el.modelLine.textContent = `Model ${model.id} \u00b7 version ${model.version}`;
    el.demoWarning.hidden = !model.demo;
  }

  async function loadVoices(select) {
    const body = await (await api("/v1/voices")).json();
    const voices = body.data || [];
    const previous = select || el.voice.value;
    el.voice.replaceChildren();
    if (!voices.length) {
      el.voice.append(new Option("No voices yet: add one below", ""));
      return;
    }
    for (const v of voices) {
      const name = v.name || v.id;
      const label = `${name} \u2014 ${v.language}, ${Number(v.duration_s).toFixed(1)} s`;
      el.voice.append(new Option(label, v.id));
    }
    const ids = voices.map((v) => v.id);
    el.voice.value = ids.includes(previous) ? previous : ids.includes("demo") ? "demo" : ids[0];
  }

  async function loadServerInfo() {
    const results = await Promise.allSettled([loadModel(), loadVoices()]);
    const failed = results.find((r) => r.status === "rejected");
    if (!failed) {
      document.body.dataset.ready = "true";
      return;
    }
    const needsKey = failed.reason instanceof ApiError && failed.reason.status === 401;
    el.modelLine.textContent = needsKey ? "Waiting for an API key\u2026" : "Could not read the server's model and voices.";
    el.voice.replaceChildren(new Option("\u2013", ""));
    if (!needsKey) showError(el.speakError, failed.reason);
  }

  // ------------------------------------------------------------------------------ playback

  let audioContext = null;

  // Created on the first click (browsers allow audio after a user gesture). null when this
  // browser has no audio output: the page still streams, measures, draws and downloads.
  function getAudioContext() {
    if (!audioContext) {
      try {
        audioContext = new AudioContext();
      } catch (_) {
        return null;
      }
    }
    if (audioContext.state === "suspended") audioContext.resume().catch(() => {});
    return audioContext;
  }

  // Schedules PCM chunks back to back on the audio clock as they arrive.
  class StreamPlayer {
    constructor(ctx, rate) {
      this.ctx = ctx;
      this.rate = rate;
      this.startAt = null; // audio-clock time of the first sample
      this.endAt = 0; // audio-clock time the last scheduled chunk ends
      this.sources = new Set();
    }

    push(samples) {
      if (!this.ctx || !samples.length) return;
      const buffer = this.ctx.createBuffer(1, samples.length, this.rate);
      buffer.getChannelData(0).set(samples);
      // a small lead keeps the first chunk whole; later chunks join seamlessly unless we ran dry
      const at = Math.max(this.endAt, this.ctx.currentTime + 0.05);
      this.play(buffer, at);
    }

    playBuffer(buffer) {
      if (this.ctx) this.play(buffer, this.ctx.currentTime + 0.05);
    }

    play(buffer, at) {
      const source = this.ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(this.ctx.destination);
      source.onended = () => this.sources.delete(source);
      source.start(at);
      this.sources.add(source);
      if (this.startAt === null) this.startAt = at;
      this.endAt = at + buffer.duration;
    }

    get playing() {
      return this.ctx !== null && this.sources.size > 0 && this.ctx.currentTime < this.endAt;
    }

    stop() {
      for (const source of this.sources) {
        try {
          source.stop();
        } catch (_) {
          // never started
        }
      }
      this.sources.clear();
      this.endAt = 0;
    }
  }

  // ------------------------------------------------------------------------------ waveform

  const waveform = {
    chunks: [], // Float32Array pieces, in order
    length: 0,
    pending: false,

    reset() {
      this.chunks = [];
      this.length = 0;
      this.request();
    },

    append(samples) {
      this.chunks.push(samples);
      this.length += samples.length;
      this.request();
    },

    set(samples) {
      this.chunks = [samples];
      this.length = samples.length;
      this.request();
    },

    request() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.draw();
      });
    },

    draw() {
      const canvas = el.waveform;
      const ratio = window.devicePixelRatio || 1;
      const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
      const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
      if (canvas.width !== width || canvas.height !== height) {
        canvas.width = width;
        canvas.height = height;
      }
      const g = canvas.getContext("2d");
      const style = getComputedStyle(canvas);
      g.clearRect(0, 0, width, height);
      const mid = height / 2;
      g.fillStyle = style.getPropertyValue("--wave-axis").trim() || "#ccd";
      g.fillRect(0, Math.floor(mid), width, Math.max(1, Math.round(ratio)));
      if (!this.length) return;

      // min/max per pixel column, walking the chunks without concatenating them
      const perColumn = this.length / width;
      const played = playedFraction();
      const waveColor = style.color;
      const playedColor = style.getPropertyValue("--wave-played").trim() || waveColor;
      let chunk = 0;
      let offset = 0;
      for (let x = 0; x < width; x++) {
        const end = Math.min(this.length, Math.round((x + 1) * perColumn));
        let lo = 1;
        let hi = -1;
        let index = Math.round(x * perColumn);
        if (index >= end) continue;
        while (index < end) {
          while (index - offset >= this.chunks[chunk].length) {
            offset += this.chunks[chunk].length;
            chunk += 1;
          }
          const v = this.chunks[chunk][index - offset];
          if (v < lo) lo = v;
          if (v > hi) hi = v;
          index += 1;
        }
        const top = mid - Math.max(hi, 0.004) * mid * 0.95;
        const bottom = mid - Math.min(lo, -0.004) * mid * 0.95;
        g.fillStyle = played !== null && x / width < played ? playedColor : waveColor;
        g.fillRect(x, top, 1, Math.max(1, bottom - top));
      }
    },
  };

  // fraction of the result already heard, for the cursor colour (null: not playing)
  function playedFraction() {
    const p = state.player;
    if (!p || !p.ctx || p.startAt === null || !waveform.length) return null;
    const rate = state.audio && state.audio.rate ? state.audio.rate : FALLBACK_RATE;
    const heard = (p.ctx.currentTime - p.startAt) * rate;
    return Math.max(0, Math.min(1, heard / waveform.length));
  }

  function animatePlayback() {
    if (state.player && (state.player.playing || state.controller)) {
      waveform.draw();
      requestAnimationFrame(animatePlayback);
    } else {
      waveform.request();
    }
  }

  // ------------------------------------------------------------------------------ speaking

  function readPcm(bytes, carry) {
    // bytes may split a sample; the odd byte waits for the next chunk
    let data = bytes;
    if (carry) {
      data = new Uint8Array(bytes.length + 1);
      data[0] = carry[0];
      data.set(bytes, 1);
    }
    const count = data.length >> 1;
    const view = new DataView(data.buffer, data.byteOffset, count * 2);
    const ints = new Int16Array(count);
    const floats = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      const v = view.getInt16(i * 2, true); // s16le
      ints[i] = v;
      floats[i] = v / 32768;
    }
    return { ints, floats, carry: data.length & 1 ? data.slice(data.length - 1) : null };
  }

  function seconds(ms) {
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
  }

  function resetResult() {
    for (const node of [el.ttfa, el.total, el.duration, el.rtf, el.version, el.seedOut]) node.textContent = "\u2013";
    el.replay.disabled = true;
    el.download.disabled = true;
    el.reuseSeed.disabled = true;
    state.audio = null;
    state.seed = null;
    delete el.result.dataset.firstAudio;
    waveform.reset();
  }

  function setBusy(busy) {
    el.speak.disabled = busy;
    el.stop.disabled = !busy;
    if (busy) el.result.dataset.state = "speaking";
  }

  function requestBody(format) {
    const body = {
      input: el.text.value,
      voice: el.voice.value,
      language: el.language.value,
      response_format: format,
      speed: Number(el.speed.value),
      stream: format === "pcm",
    };
    if (state.modelId) body.model = state.modelId;
    if (el.seed.value.trim() !== "") body.seed = Number(el.seed.value);
    return body;
  }

  async function speak() {
    if (state.controller) return;
    stopPlayback();
    clearError(el.speakError);
    resetResult();
    const format = el.format.value;
    const controller = new AbortController();
    state.controller = controller;
    state.voiceLabel = (el.voice.value || "voice").replace(/[^A-Za-z0-9_-]+/g, "_");
    const ctx = getAudioContext();
    const player = new StreamPlayer(ctx, FALLBACK_RATE);
    state.player = player;
    setBusy(true);
    setStatus("Sending\u2026");
    const started = performance.now();
    let received = 0; // samples
    let rate = FALLBACK_RATE;
    try {
      const response = await api("/v1/audio/speech", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(requestBody(format)),
        signal: controller.signal,
      });
      rate = Number(response.headers.get("X-Sample-Rate")) || FALLBACK_RATE;
      player.rate = rate;
      el.version.textContent = response.headers.get("X-Model-Version") || "unknown";
      state.seed = response.headers.get("X-Seed");
      el.seedOut.textContent = state.seed || "\u2013";
      el.reuseSeed.disabled = !state.seed;

      if (format === "pcm") {
        const chunks = [];
        state.audio = { kind: "pcm", chunks, rate };
        const reader = response.body.getReader();
        let carry = null;
        requestAnimationFrame(animatePlayback);
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          const pcm = readPcm(value, carry);
          carry = pcm.carry;
          if (!pcm.ints.length) continue;
          if (!received) {
            el.ttfa.textContent = seconds(performance.now() - started);
            el.result.dataset.firstAudio = "true";
          }
          received += pcm.ints.length;
          chunks.push(pcm.ints);
          player.push(pcm.floats);
          waveform.append(pcm.floats);
          el.duration.textContent = `${(received / rate).toFixed(2)} s`;
          setStatus(`Streaming\u2026 ${(received / rate).toFixed(1)} s of audio`);
        }
      } else {
        setStatus("Synthesising the whole file\u2026");
        const blob = await response.blob();
        el.ttfa.textContent = "\u2013 (whole file)";
        state.audio = { kind: "file", blob, ext: EXTENSIONS[format] || format, rate };
        try {
          const buffer = await decodeFile(ctx, blob);
          received = Math.round(buffer.duration * rate);
          state.audio.buffer = buffer;
          waveform.set(buffer.getChannelData(0));
          player.playBuffer(buffer);
          requestAnimationFrame(animatePlayback);
          el.duration.textContent = `${buffer.duration.toFixed(2)} s`;
        } catch (_) {
          showError(el.speakError, new Error(`this browser cannot play ${format.toUpperCase()}; Download still saves the file`));
        }
      }
      const elapsed = performance.now() - started;
      el.total.textContent = seconds(elapsed);
      if (received) {
        const rtf = elapsed / 1000 / (received / rate);
        el.rtf.textContent = rtf < 1 ? `${rtf.toFixed(2)} (${(1 / rtf).toFixed(1)}\u00d7 real time)` : rtf.toFixed(2);
      }
      finish("done", received ? "Done." : "Done: the server sent no audio.");
    } catch (err) {
      if (err.name === "AbortError") {
        el.total.textContent = `${seconds(performance.now() - started)} (stopped)`;
        finish("stopped", received ? `Stopped after ${(received / rate).toFixed(1)} s of audio.` : "Stopped.");
      } else {
        if (received) err = new Error(`the stream broke off after ${(received / rate).toFixed(1)} s of audio (${err.message})`);
        showError(el.speakError, err);
        finish("error", "Failed.");
      }
    }
  }

  function decodeFile(ctx, blob) {
    if (!ctx) return Promise.reject(new Error("no audio output"));
    return blob.arrayBuffer().then((bytes) => ctx.decodeAudioData(bytes));
  }

  function finish(outcome, message) {
    state.controller = null;
    setBusy(false);
    el.result.dataset.state = outcome;
    el.result.dataset.playback = audioContext ? audioContext.state : "unavailable";
    setStatus(message);
    const hasAudio = state.audio && (state.audio.kind === "file" || state.audio.chunks.length > 0);
    el.download.disabled = !hasAudio;
    el.replay.disabled = !(hasAudio && getAudioContext() && (state.audio.kind === "pcm" || state.audio.buffer));
    waveform.request();
  }

  function stop() {
    if (state.controller) state.controller.abort(); // the server stops work when we disconnect
    stopPlayback();
  }

  function stopPlayback() {
    if (state.player) state.player.stop();
  }

  function replay() {
    if (!state.audio) return;
    stopPlayback();
    const ctx = getAudioContext();
    const player = new StreamPlayer(ctx, state.audio.rate);
    state.player = player;
    if (state.audio.kind === "pcm") {
      const all = joinInt16(state.audio.chunks);
      const floats = new Float32Array(all.length);
      for (let i = 0; i < all.length; i++) floats[i] = all[i] / 32768;
      player.push(floats);
    } else if (state.audio.buffer) {
      player.playBuffer(state.audio.buffer);
    }
    requestAnimationFrame(animatePlayback);
  }

  // ------------------------------------------------------------------------------ download

  function joinInt16(chunks) {
    const total = chunks.reduce((n, c) => n + c.length, 0);
    const out = new Int16Array(total);
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }

  // 44-byte RIFF header + s16le mono samples
  function wavBlob(chunks, rate) {
    const samples = joinInt16(chunks);
    const header = new DataView(new ArrayBuffer(44));
    const ascii = (at, s) => [...s].forEach((ch, i) => header.setUint8(at + i, ch.charCodeAt(0)));
    const dataBytes = samples.length * 2;
    ascii(0, "RIFF");
    header.setUint32(4, 36 + dataBytes, true);
    ascii(8, "WAVE");
    ascii(12, "fmt ");
    header.setUint32(16, 16, true); // fmt chunk size
    header.setUint16(20, 1, true); // PCM
    header.setUint16(22, 1, true); // mono
    header.setUint32(24, rate, true);
    header.setUint32(28, rate * 2, true); // byte rate
    header.setUint16(32, 2, true); // block align
    header.setUint16(34, 16, true); // bits per sample
    ascii(36, "data");
    header.setUint32(40, dataBytes, true);
    const body = new DataView(new ArrayBuffer(dataBytes));
    for (let i = 0; i < samples.length; i++) body.setInt16(i * 2, samples[i], true);
    return new Blob([header.buffer, body.buffer], { type: "audio/wav" });
  }

  function download() {
    const audio = state.audio;
    if (!audio) return;
    const blob = audio.kind === "pcm" ? wavBlob(audio.chunks, audio.rate) : audio.blob;
    const ext = audio.kind === "pcm" ? "wav" : audio.ext;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `gsv-${state.voiceLabel}-${state.seed || "audio"}.${ext}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  }

  // ------------------------------------------------------------------------------ upload

  el.uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(el.uploadError);
    el.uploadStatus.textContent = "Uploading\u2026";
    el.uploadSubmit.disabled = true;
    const form = new FormData();
    // every check (length, format, silence, language, name) is the API's, with its messages
    if (el.uploadFile.files.length) form.append("file", el.uploadFile.files[0]);
    form.append("transcript", el.uploadTranscript.value);
    form.append("language", el.uploadLanguage.value);
    form.append("name", el.uploadName.value);
    try {
      const voice = await (await api("/v1/voices", { method: "POST", body: form })).json();
      el.uploadStatus.textContent = `Added voice \u201c${voice.name || voice.id}\u201d.`;
      el.uploadForm.reset();
      el.uploadLanguage.value = "en";
      await loadVoices(voice.id);
    } catch (err) {
      el.uploadStatus.textContent = "";
      showError(el.uploadError, err);
    } finally {
      el.uploadSubmit.disabled = false;
    }
  });

  // ------------------------------------------------------------------------------ wiring

  function fillLanguages(select, chosen) {
    for (const [code, label] of LANGUAGES) select.append(new Option(`${label} (${code})`, code));
    select.value = chosen;
  }

  function updateCount() {
    const n = el.text.value.length;
    el.textCount.textContent = `${n} character${n === 1 ? "" : "s"}`;
  }

  fillLanguages(el.language, "auto");
  fillLanguages(el.uploadLanguage, "en");
  updateCount();
  el.text.addEventListener("input", updateCount);
  el.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) speak();
  });
  el.speed.addEventListener("input", () => {
    el.speedValue.textContent = `${Number(el.speed.value).toFixed(2)}\u00d7`;
  });
  el.speak.addEventListener("click", speak);
  el.stop.addEventListener("click", stop);
  el.replay.addEventListener("click", replay);
  el.download.addEventListener("click", download);
  el.reuseSeed.addEventListener("click", () => {
    if (state.seed) el.seed.value = state.seed;
  });
  window.addEventListener("resize", () => waveform.request());
  loadServerInfo();
})();
