// The duplicates view: groups of files that show the same picture, side by side, best first.
"use strict";

(() => {
  const byId = (id) => document.getElementById(id);
  const section = byId("duplicates"), groups = byId("dup-groups"), threshold = byId("dup-threshold");
  const line = byId("status"), folderInput = byId("folder");

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
    return unit ? `${n.toFixed(1)} ${units[unit]}` : `${n} B`;
  }

  function figure(file) {
    const fig = document.createElement("figure");
    fig.className = file.best ? "best" : "";
    const link = Object.assign(document.createElement("a"), { href: `/api/items/${file.id}/image`, target: "_blank", rel: "noopener", title: file.path });
    link.append(Object.assign(document.createElement("img"), { src: `/api/items/${file.id}/thumbnail`, alt: file.path, loading: "lazy", decoding: "async" }));
    const caption = document.createElement("figcaption");
    const pixels = file.width ? `${file.width}×${file.height}` : "size unknown";
    if (file.best) caption.append(Object.assign(document.createElement("strong"), { textContent: "best" }), " ");
    caption.append(`${pixels} · ${bytes(file.size)}`, document.createElement("br"), file.path);
    fig.append(link, caption);
    return fig;
  }

  function group(found) {
    const li = document.createElement("li");
    const heading = Object.assign(document.createElement("p"), { textContent: `${found.files.length} files, lowest cosine ${found.score.toFixed(3)}` });
    const row = document.createElement("div");
    row.className = "dup-row";
    row.append(...found.files.map(figure));
    li.append(heading, row);
    return li;
  }

  async function showDuplicates() {
    byId("results").replaceChildren();
    byId("more-results").hidden = true;
    section.hidden = false;
    line.classList.remove("error");
    line.textContent = "Looking for duplicates…";
    const params = new URLSearchParams({ limit: 1000 });
    if (threshold.value) params.set("threshold", threshold.value);
    if (folderInput.value.trim()) params.set("folder", folderInput.value.trim());
    const response = await fetch(`/api/duplicates?${params}`);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      groups.replaceChildren();
      line.classList.add("error");
      line.textContent = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail || response.statusText;
      return;
    }
    threshold.value = body.threshold;
    groups.replaceChildren(...body.groups.map(group));
    const shown = body.groups.length < body.groups_total ? ` (the first ${body.groups.length} shown)` : "";
    line.textContent = body.groups_total
      ? `${body.groups_total} groups of the same picture${shown}; the best of each comes first. Nothing is deleted.`
      : "No duplicates found.";
  }

  byId("show-duplicates").addEventListener("click", showDuplicates);
  threshold.addEventListener("change", showDuplicates);
  // A search or a dropped photo takes the results area back.
  const hide = () => { section.hidden = true; groups.replaceChildren(); };
  byId("search").addEventListener("submit", hide);
  byId("file").addEventListener("change", hide);
  window.addEventListener("drop", hide);
  window.addEventListener("paste", hide);
  window.addEventListener("popstate", hide);
})();
