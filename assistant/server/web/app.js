// The daemon's browser page: microphone -> /v1/realtime (GA events, pcm16 24 kHz), reply audio played as it
// streams, transcripts, state and a latency waterfall per turn. Plain JS, no build step.
"use strict";

const RATE = 24000; // the Realtime audio format: pcm16 mono at 24 kHz, both ways
const STAGES = ["transcript", "response", "text", "audio", "plays", "done"];
const $ = (id) => document.getElementById(id);

const page = {
  ws: null, ctx: null, mic: null, node: null, sending: false, nextPlay: 0, sources: [],
  turns: [], turn: null, chunks: 0, audioSeconds: 0, current: null, responding: false,
};
window.assistantPage = page; // for people (and tests) poking at it from the console

function token() {
  const fromUrl = new URLSearchParams(location.hash.slice(1) || location.search).get("token");
  if (fromUrl) localStorage.setItem("assistant-token", fromUrl);
  return $("token").value || fromUrl || localStorage.getItem("assistant-token") || "";
}

function setState(state) {
  $("state").textContent = state;
  $("state").dataset.state = state;
}

function say(text) { $("message").textContent = text; }

function send(event) {
  if (page.ws && page.ws.readyState === WebSocket.OPEN) page.ws.send(JSON.stringify(event));
}

function b64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function pcm16(float32) {
  const out = new Int16Array(float32.length);
  for (let i = 0; i < float32.length; i++) out[i] = Math.max(-1, Math.min(1, float32[i])) * 0x7fff;
  return new Uint8Array(out.buffer);
}

function float32(base64) {
  const raw = atob(base64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  const ints = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  const out = new Float32Array(ints.length);
  for (let i = 0; i < ints.length; i++) out[i] = ints[i] / 0x8000;
  return out;
}

// ---- the session -------------------------------------------------------------------------------------------

function sessionUpdate() {
  const detection = $("handsfree").checked
    ? { type: "server_vad", silence_duration_ms: 500, create_response: true, interrupt_response: true }
    : null;
  const output = { format: { type: "audio/pcm", rate: RATE } };
  if ($("voice").value) output.voice = $("voice").value;
  send({
    type: "session.update",
    session: {
      type: "realtime",
      audio: { input: { format: { type: "audio/pcm", rate: RATE }, turn_detection: detection }, output },
    },
  });
  $("ptt").disabled = $("handsfree").checked;
  page.sending = $("handsfree").checked;
}

async function start() {
  say("");
  page.ctx = new AudioContext({ sampleRate: RATE });
  await page.ctx.resume();
  try {
    page.mic = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
  } catch (e) {
    say(`no microphone: ${e.message}; allow this page to use it`);
    release();
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const protocols = ["realtime"];
  const offered = token();
  if (offered) protocols.push("token." + offered);
  const ws = new WebSocket(`${scheme}://${location.host}/v1/realtime`, protocols);
  page.ws = ws;
  ws.onopen = () => { setState("listening"); sessionUpdate(); capture(); };
  ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  ws.onclose = (e) => {
    if (page.ws === ws) release(); // however it ended, the next click on Start starts afresh
    setState("disconnected");
    if (e.code !== 1000) {
      // a browser sees no handshake status: a refused token, a full daemon and a stopped one all read 1006
      const why = offered
        ? "the daemon refused the connection or went away: check the token, and the daemon's log"
        : "without a token here, open this page as /#token=<the daemon's token> or paste it into the token box";
      say(`disconnected (${e.code}${e.reason ? ": " + e.reason : ""}); ${why}`);
      $("token-label").hidden = false;
    }
    $("connect").textContent = "Start";
  };
  $("connect").textContent = "Stop";
}

function stop() {
  if (page.ws) page.ws.close(1000);
  release();
}

// The microphone, the audio graph and the socket of one session; a dropped connection frees them as Stop does
// (else Start only stopped the dead session, the browser kept the microphone, and each start made a context).
function release() {
  silence();
  if (page.node) page.node.disconnect();
  if (page.mic) page.mic.getTracks().forEach((t) => t.stop());
  if (page.ctx) page.ctx.close();
  page.ws = page.node = page.mic = page.ctx = null;
  page.sending = page.responding = false;
}

function capture() {
  const source = page.ctx.createMediaStreamSource(page.mic);
  // ScriptProcessor needs no separate worklet module; 2048 samples = 85 ms per append
  const node = page.ctx.createScriptProcessor(2048, 1, 1);
  node.onaudioprocess = (e) => {
    if (page.sending) send({ type: "input_audio_buffer.append", audio: b64(pcm16(e.inputBuffer.getChannelData(0))) });
  };
  source.connect(node);
  node.connect(page.ctx.destination); // a ScriptProcessor only runs when connected; it outputs silence
  page.node = node;
}

// ---- playback ----------------------------------------------------------------------------------------------

function play(base64) {
  const samples = float32(base64);
  if (!samples.length) return;
  const buffer = page.ctx.createBuffer(1, samples.length, RATE);
  buffer.copyToChannel(samples, 0);
  const src = page.ctx.createBufferSource();
  src.buffer = buffer;
  src.connect(page.ctx.destination);
  const at = Math.max(page.ctx.currentTime + 0.02, page.nextPlay);
  src.start(at);
  page.nextPlay = at + buffer.duration;
  page.sources.push(src);
  src.onended = () => { page.sources = page.sources.filter((s) => s !== src); };
  page.chunks += 1;
  page.audioSeconds += buffer.duration;
  $("audio-stats").textContent = `${page.chunks} audio chunks scheduled, ${page.audioSeconds.toFixed(2)} s`;
  return performance.now() + (at - page.ctx.currentTime) * 1000; // when it starts playing, on the page clock
}

function silence() {
  page.sources.forEach((s) => { try { s.stop(); } catch (e) { /* already ended */ } });
  page.sources = [];
  page.nextPlay = 0;
}

// ---- events ------------------------------------------------------------------------------------------------

function newTurn() {
  const turn = { n: page.turns.length + 1, t0: performance.now(), at: {} };
  page.turns.push(turn);
  page.turn = turn;
  return turn;
}

function mark(stage, when) {
  const turn = page.turn;
  if (!turn || turn.at[stage] !== undefined) return;
  turn.at[stage] = (when ?? performance.now()) - turn.t0;
  drawTurn(turn);
}

function logLine(who, text) {
  const li = document.createElement("li");
  li.className = who;
  li.textContent = text;
  $("log").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function onEvent(ev) {
  switch (ev.type) {
    case "error":
      say(`${ev.error.code || ev.error.type}: ${ev.error.message}`);
      break;
    case "input_audio_buffer.speech_started":
      silence(); // the user talks over the reply: stop playing it
      setState("user speaking");
      break;
    case "input_audio_buffer.speech_stopped":
      newTurn();
      setState("thinking");
      break;
    case "conversation.item.input_audio_transcription.delta":
      $("partial").textContent += ev.delta;
      break;
    case "conversation.item.input_audio_transcription.completed":
      $("partial").textContent = "";
      logLine("user", ev.transcript);
      mark("transcript");
      break;
    case "response.created":
      page.responding = true;
      if (!page.turn || page.turn.at.done !== undefined) newTurn(); // a reply without speech (text, manual)
      mark("response");
      page.current = logLine("assistant", "");
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      if (page.current) page.current.textContent += ev.delta;
      mark("text");
      break;
    case "response.output_audio.delta": {
      mark("audio");
      const startsAt = play(ev.delta);
      mark("plays", startsAt);
      setState("speaking");
      break;
    }
    case "response.done":
      page.responding = false;
      mark("done");
      setState(page.sending || $("handsfree").checked ? "listening" : "idle");
      break;
    default:
      break;
  }
}

function drawTurn(turn) {
  let row = document.querySelector(`#latency tr[data-turn="${turn.n}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.turn = turn.n;
    row.innerHTML = "<td></td>" + STAGES.map((s) => `<td data-stage="${s}"></td>`).join("")
      + '<td class="waterfall"><div class="bars"></div></td>';
    row.firstChild.textContent = turn.n;
    $("latency").tBodies[0].append(row);
  }
  const total = Math.max(1, ...Object.values(turn.at));
  const bars = row.querySelector(".bars");
  bars.textContent = "";
  let from = 0;
  for (const stage of STAGES) {
    const t = turn.at[stage];
    if (t === undefined) continue;
    row.querySelector(`td[data-stage="${stage}"]`).textContent = Math.round(t);
    const bar = document.createElement("div");
    bar.className = `bar ${stage}`;
    bar.title = `${stage}: ${Math.round(t)} ms`;
    bar.style.left = `${(100 * Math.min(from, t)) / total}%`;
    bar.style.width = `${(100 * Math.abs(t - from)) / total}%`;
    bars.append(bar);
    from = Math.max(from, t);
  }
}

// ---- push to talk ------------------------------------------------------------------------------------------

function pttDown() {
  if ($("ptt").disabled || page.sending) return;
  silence();
  if (page.responding) send({ type: "response.cancel" });
  send({ type: "input_audio_buffer.clear" });
  page.sending = true;
  $("ptt").classList.add("active");
  setState("user speaking");
}

function pttUp() {
  if ($("ptt").disabled || !page.sending) return;
  page.sending = false;
  $("ptt").classList.remove("active");
  newTurn();
  send({ type: "input_audio_buffer.commit" });
  send({ type: "response.create" });
  setState("thinking");
}

// ---- voices ------------------------------------------------------------------------------------------------

// Fills the voice list (kept: "default" and the choice made); again once a token is given, as a page opened
// without one was refused the list.
async function loadVoices() {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  try {
    const r = await fetch("/health", { headers });
    if (!r.ok) return;
    const select = $("voice");
    const chosen = select.value;
    select.length = 1;
    for (const name of (await r.json()).voices || []) {
      const o = document.createElement("option");
      o.value = o.textContent = name;
      select.append(o);
    }
    select.value = chosen;
  } catch (e) { /* the list stays as it was */ }
}

window.addEventListener("DOMContentLoaded", () => {
  $("connect").onclick = () => (page.ws ? stop() : start());
  $("handsfree").onchange = sessionUpdate;
  $("voice").onchange = sessionUpdate;
  $("token").onchange = () => { localStorage.setItem("assistant-token", $("token").value); loadVoices(); };
  const ptt = $("ptt");
  ptt.onpointerdown = pttDown;
  ptt.onpointerup = ptt.onpointerleave = pttUp;
  window.addEventListener("keydown", (e) => { if (e.code === "Space" && !e.repeat && !$("ptt").disabled) { e.preventDefault(); pttDown(); } });
  window.addEventListener("keyup", (e) => { if (e.code === "Space") pttUp(); });
  loadVoices();
  if (new URLSearchParams(location.search).has("autostart")) start();
});
