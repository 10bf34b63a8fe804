// The search page: a thin client of the JSON API under /api/.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search"), q = $("q"), folder = $("folder"), file = $("file");
const after = $("after"), before = $("before");
const statusLine = $("status"), results = $("results"), drop = $("drop");
const viewer = $("viewer"), viewerImage = $("viewer-image"), tags = $("tags");
const K = 48;       // results a search asks for; "More results" doubles it
const MAX_K = 500;  // the API's limit

let hits = [];      // the results on screen
let again = null;   // asks for more of the current results: a function of k, or null
let open = -1;      // the index in hits of the image in the viewer

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
    throw Object.assign(new Error(detail || `${response.status} ${response.statusText}`), { status: response.status });
  }
  return body;
}

// The folder and date filters that are set, as [name, value] pairs.
function filters() {
  return [["folder", folder], ["after", after], ["before", before]]
    .map(([name, input]) => [name, input.value.trim()])
    .filter(([, value]) => value);
}

// Every value put into a URL goes through encodeURIComponent or URLSearchParams: a value
// from the address bar (?similar=...) or from a file name is never trusted to be URL-safe.
function query(params) {
  const search = new URLSearchParams(params);
  for (const [name, value] of filters()) search.set(name, value);
  return `?${search}`;
}

function itemUrl(id, what = "") {
  return `/api/items/${encodeURIComponent(id)}${what}`;
}

function show(found, what, started, k, more) {
  hits = found;
  results.replaceChildren(...found.map(tile));
  const ms = Math.round(performance.now() - started);
  say(found.length ? `${found.length} images ${what} (${ms} ms)` : `Nothing found ${what}.`);
  again = more && found.length === k && k < MAX_K ? () => more(Math.min(2 * k, MAX_K)) : null;
  $("more-results").hidden = again === null;
}

function tile(hit, index) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.id = hit.id;
  button.title = hit.path;
  const img = document.createElement("img");
  img.src = itemUrl(hit.id, "/thumbnail");
  img.alt = hit.path;
  img.loading = "lazy";
  img.decoding = "async";
  const meta = document.createElement("span");
  meta.className = "meta";
  const path = document.createElement("span");
  path.className = "path";
  path.textContent = hit.path;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  meta.append(path, score);
  button.append(img, meta);
  button.addEventListener("click", () => view(index));
  item.append(button);
  return item;
}

async function run(kind, value, push = true, k = K) {
  const started = performance.now();
  say("Searching…");
  try {
    let found, what;
    if (kind === "q") {
      found = await api(`/api/search${query({ q: value, k })}`);
      what = `for “${value}”`;
    } else {
      found = await api(`${itemUrl(value, "/similar")}${query({ k })}`);
      what = "like the chosen one";
    }
    if (push) remember(kind, value);
    show(found, what, started, k, (more) => run(kind, value, false, more));
  } catch (error) {
    say(error.message, true);
  }
}

async function searchByUpload(image, k = K) {
  if (!image) return;
  const started = performance.now();
  const name = image.name || "the pasted image";
  say(`Searching like ${name}…`);
  const body = new FormData();
  body.append("file", image, image.name || "pasted.png");
  body.append("k", k);
  for (const [name, value] of filters()) body.append(name, value);
  try {
    const found = await api("/api/search/image", { method: "POST", body });
    show(found, `like ${name}`, started, k, (more) => searchByUpload(image, more));
  } catch (error) {
    say(error.message, true);
  }
}

function remember(kind, value) {
  const params = new URLSearchParams({ [kind]: value });
  for (const [name, value] of filters()) params.set(name, value);
  history.pushState(null, "", `?${params}`);
}

function restore() {
  const params = new URLSearchParams(location.search);
  folder.value = params.get("folder") || "";
  after.value = params.get("after") || "";
  before.value = params.get("before") || "";
  if (params.get("q")) {
    q.value = params.get("q");
    run("q", q.value, false);
  } else if (params.get("similar")) {
    run("similar", params.get("similar"), false);
  } else {
    results.replaceChildren();
    say("");
  }
}

async function view(index) {
  if (index < 0 || index >= hits.length) return;
  open = index;
  const hit = hits[index];
  viewerImage.src = itemUrl(hit.id, "/image");
  viewerImage.alt = hit.path;
  $("viewer-path").textContent = hit.path;
  $("viewer-path").href = itemUrl(hit.id, "/image");
  $("viewer-score").textContent = `score ${hit.score.toFixed(3)}`;
  $("viewer-size").textContent = "";
  $("prev").disabled = index === 0;
  $("next").disabled = index === hits.length - 1;
  tags.replaceChildren();
  if (!viewer.open) viewer.showModal();
  $("more").focus();
  api(itemUrl(hit.id)).then((item) => {
    if (open === index && item.width) $("viewer-size").textContent = `${item.width}×${item.height}`;
  }).catch(() => {});
  showTags(hit, index);
}

async function showTags(hit, index) {
  try {
    const found = await api(`${itemUrl(hit.id, "/describe")}?k=5`);
    if (open !== index || !viewer.open) return;
    tags.replaceChildren(...found.map((tag) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = tag.text;
      button.title = `score ${tag.score.toFixed(3)}: search for it`;
      button.addEventListener("click", () => { viewer.close(); q.value = tag.text; run("q", tag.text); });
      li.append(button);
      return li;
    }));
  } catch (error) {
    if (open !== index || !viewer.open) return;
    tags.replaceChildren(Object.assign(document.createElement("li"), { textContent: error.message }));
    // 503: the tag vocabulary is still being embedded; ask again while the image is open.
    if (error.status === 503) setTimeout(() => { if (open === index && viewer.open) showTags(hit, index); }, 5000);
  }
}

function focusTile(index) {
  const button = results.querySelectorAll("button")[index];
  if (button) button.focus();
}

$("more-results").addEventListener("click", () => { if (again) again(); });
form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (q.value.trim()) run("q", q.value.trim());
});
file.addEventListener("change", () => { searchByUpload(file.files[0]); file.value = ""; });
$("more").addEventListener("click", () => {
  const hit = hits[open];
  viewer.close();
  q.value = "";
  run("similar", hit.id);
});
$("prev").addEventListener("click", () => view(open - 1));
$("next").addEventListener("click", () => view(open + 1));
$("close").addEventListener("click", () => viewer.close());
viewer.addEventListener("close", () => { focusTile(open); });
viewer.addEventListener("click", (event) => { if (event.target === viewer) viewer.close(); });
viewer.addEventListener("keydown", (event) => {
  if (event.key === "ArrowLeft") view(open - 1);
  else if (event.key === "ArrowRight") view(open + 1);
});

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (event.key === "/" && !typing && !viewer.open) {
    event.preventDefault();
    q.focus();
    q.select();
  }
});

// Drop a photo anywhere, or paste one.
let dragDepth = 0;
window.addEventListener("dragenter", (event) => {
  if (![...event.dataTransfer.types].includes("Files")) return;
  dragDepth += 1;
  drop.hidden = false;
});
window.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); drop.hidden = dragDepth === 0; });
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  drop.hidden = true;
  searchByUpload(event.dataTransfer.files[0]);
});
window.addEventListener("paste", (event) => {
  const image = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (image) searchByUpload(image);
});
window.addEventListener("popstate", restore);

api("/api/folders").then((found) => {
  $("folders").replaceChildren(...found.map((f) => Object.assign(document.createElement("option"), { value: f.folder, label: `${f.images} images` })));
}).catch(() => {});
api("/api/info").then((info) => {
  if (!location.search) say(`${info.images} images. Type what you are looking for, or drop a photo.`);
}).catch((error) => say(error.message, true));
restore();
