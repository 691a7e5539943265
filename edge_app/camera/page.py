"""The preview's one page (`edge-app run --serve`, served by edge_app.camera.serve at /): the annotated
picture scaled to fit the page, top-k, FPS and stage latencies, one request per frame (/frame.jpg with
its numbers in X-Frame-Status). Nothing is fetched from elsewhere."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edge-app preview</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; margin: 1em; background: #111; color: #eee; }
main { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
main > img { flex: 1 1 32em; width: 100%; max-width: 100%; min-width: 0; height: auto; border: 1px solid #444; background: #000; }
main > section { flex: 1 1 18em; max-width: 30em; }
table { border-collapse: collapse; min-width: 18em; }
td, th { padding: 3px 8px; border-bottom: 1px solid #333; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #999; font-size: 0.9em; }
</style></head><body>
<h1>edge-app preview</h1>
<main>
<img id="stream" alt="annotated camera stream">
<section>
<h2>Top classes</h2><table id="top"><tbody><tr><td class="muted">waiting for the first frame</td></tr></tbody></table>
<h2>Speed</h2><table id="speed"><tbody></tbody></table>
<p class="muted" id="about"></p>
</section>
</main>
<script>
function row(cells) {
  const tr = document.createElement("tr");
  for (const [text, cls] of cells) {
    const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td);
  }
  return tr;
}
function show(s) {
    const top = document.querySelector("#top tbody"), speed = document.querySelector("#speed tbody");
    if (s.frame !== null) {
      top.replaceChildren(...s.top.map(t => row([[t.label], [(100 * t.score).toFixed(1) + "%", "n"]])));
      speed.replaceChildren(row([["FPS"], [s.fps.toFixed(1), "n"]]),
        ...Object.entries(s.ms).map(([k, v]) => row([[k + " ms"], [v.toFixed(2), "n"]])));
      document.getElementById("about").textContent =
        `frame ${s.frame} · ${s.source} · ${s.model} on ${s.runtime}, delegate ${s.delegate} · ${s.viewers} viewer(s)`;
    }
}
// one request per frame: the picture and its numbers (X-Frame-Status) come from the same frame
let seq = 0, shown = null;
const me = Math.random().toString(36).slice(2);
async function next() {
  try {
    const r = await fetch(`/frame.jpg?after=${seq}&page=${me}`, {cache: "no-store"});
    if (r.ok) {
      seq = Number(r.headers.get("X-Frame-Seq"));
      const s = JSON.parse(r.headers.get("X-Frame-Status")), url = URL.createObjectURL(await r.blob());
      if (shown) URL.revokeObjectURL(shown);  // one picture's memory at a time, however long the page is open
      document.getElementById("stream").src = shown = url;
      show(s);
    }
    setTimeout(next, r.ok ? 0 : 500);
  } catch (e) {
    document.getElementById("about").textContent = "the loop has stopped";
    setTimeout(next, 2000);
  }
}
next();
</script>
</body></html>
"""
