"""The page ``GET /`` serves: plain HTML and JavaScript over the JSON API, no build step. One line
of the box is one text, so the translation keeps the input's lines."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nmt</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; }
  textarea, #output { width: 100%; box-sizing: border-box; font: inherit; min-height: 8rem;
                      padding: .5rem; border: 1px solid #999; border-radius: 4px; }
  #output { white-space: pre-wrap; background: #f6f6f6; }
  #error { color: #a00; white-space: pre-wrap; }
  .row { margin: .75rem 0; display: flex; gap: 1rem; align-items: center; }
</style>
</head>
<body>
<h1>nmt <small id="model"></small></h1>
<label for="source">Text to translate, one sentence per line</label>
<textarea id="source" autofocus></textarea>
<div class="row">
  <button id="translate" type="button">Translate</button>
  <label>beam size <input id="beam" type="number" min="1" value="" style="width:4rem"></label>
  <span id="status"></span>
</div>
<div id="output" aria-live="polite"></div>
<div id="error"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);

// The server's limits: the beam box stops at its largest beam, the model's default beam is sent
// only when changed (a server may allow less than the model's recipe asks), and long input goes
// in requests of at most max_texts lines.
let limits = { max_texts: 128, max_chars: Infinity, max_beam_size: Infinity };
let defaultBeam = null;
fetch("/model").then((r) => r.ok ? r.json() : null).then((info) => {
  if (!info) return;
  $("model").textContent = `${info.name}: ${info.languages.source} \\u2192 ${info.languages.target}`;
  limits = info.limits;
  defaultBeam = info.decode.beam_size;
  $("beam").max = limits.max_beam_size;
  $("beam").value = Math.min(defaultBeam, limits.max_beam_size);
}).catch(() => {});

async function post(body) {
  const response = await fetch("/translate", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer.translations.map((t) => t.text);
}

async function translate() {
  const texts = $("source").value.split("\\n");
  const beam = parseInt($("beam").value, 10);
  const settings = {};
  if (!Number.isNaN(beam) && beam !== defaultBeam) settings.beam_size = beam;
  $("error").textContent = "";
  $("status").textContent = "translating\\u2026";
  $("translate").disabled = true;
  try {
    const long = texts.findIndex((t) => t.length > limits.max_chars);
    if (long >= 0) throw new Error(`line ${long + 1} has ${texts[long].length} characters; ` +
                                   `this server takes at most ${limits.max_chars} a line`);
    const out = [];
    for (let i = 0; i < texts.length; i += limits.max_texts) {
      out.push(...await post({ texts: texts.slice(i, i + limits.max_texts), ...settings }));
    }
    $("output").textContent = out.join("\\n");
    $("status").textContent = "";
  } catch (err) {
    $("status").textContent = "";
    $("error").textContent = String(err.message || err);
  } finally {
    $("translate").disabled = false;
  }
}

$("translate").addEventListener("click", translate);
$("source").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) translate();
});
</script>
</body>
</html>
"""
