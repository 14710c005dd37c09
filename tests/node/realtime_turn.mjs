// One voice turn through the openai npm package's OpenAIRealtimeWS (it always dials wss://).
// argv: port token pcm16-24k-file; prints every received event as one JSON line, exits 0 after response.done.
import { readFileSync } from "node:fs";
import OpenAI from "openai";
import { OpenAIRealtimeWS } from "openai/realtime/ws";

const [port, token, audioPath] = process.argv.slice(2);
const client = new OpenAI({ apiKey: token, baseURL: `https://127.0.0.1:${port}/v1` });
const rt = new OpenAIRealtimeWS({ model: "assistant" }, client);
const audio = readFileSync(audioPath);
const CHUNK = 4800; // bytes: 100 ms of pcm16 at 24 kHz

rt.on("event", (event) => {
  console.log(JSON.stringify(event));
  if (event.type === "session.updated") {
    for (let i = 0; i < audio.length; i += CHUNK) {
      rt.send({ type: "input_audio_buffer.append", audio: audio.subarray(i, i + CHUNK).toString("base64") });
    }
  }
  if (event.type === "response.done") {
    rt.close();
    process.exit(0);
  }
});
rt.on("error", (err) => { console.error(`realtime error: ${err.message}`); process.exit(2); });
rt.socket.on("open", () => {
  rt.send({
    type: "session.update",
    session: {
      type: "realtime",
      audio: { input: { turn_detection: { type: "server_vad", silence_duration_ms: 500, create_response: true } } },
    },
  });
});
setTimeout(() => { console.error("no response.done within 180 s"); process.exit(3); }, 180_000);
