// The explorer page: a thin client of /api (no libraries, no network assets).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: null, info: null };  // query: {text} | {row} | {vector, label}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "muted";
}

async function api(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function filters() {
  const list = [];
  const languages = [...document.querySelectorAll("#languages input:checked")].map((box) => box.value);
  if (languages.length) list.push("LANGUAGE=" + languages.join(","));
  const numeric = [["filter-max-punsafe", "punsafe<="], ["filter-max-pwatermark", "pwatermark<="],
                   ["filter-min-similarity", "similarity>="], ["filter-min-width", "WIDTH>="],
                   ["filter-min-height", "HEIGHT>="]];
  for (const [id, prefix] of numeric) {
    const value = $(id).value.trim();
    if (value !== "" && state.info && prefix.replace(/[<>=]+$/, "") in state.info.columns) list.push(prefix + value);
  }
  $("active-filters").textContent = list.length ? "Active: " + list.join(" · ") : "No filters.";
  return list;
}

function requestBody(extra) {
  return { k: Number($("k").value) || 40, filters: filters(), dedup: $("dedup").checked, ...extra };
}

function card(result) {
  const item = document.createElement("div");
  item.className = "result";
  item.dataset.row = result.row;
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  const img = document.createElement("img");
  img.alt = result.TEXT || "";
  img.loading = "lazy";
  img.src = result.thumbnail ? `/api/thumbnail/${result.row}`
          : (/^https?:\/\//.test(result.URL || "") ? result.URL : "");
  thumb.appendChild(img);
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = result.TEXT || "";
  const scores = document.createElement("div");
  scores.className = "scores";
  const parts = [`score ${result.score.toFixed(3)}`];
  if (result.similarity != null) parts.push(`sim ${result.similarity.toFixed(3)}`);
  if (result.punsafe != null) parts.push(`punsafe ${result.punsafe.toFixed(2)}`);
  if (result.pwatermark != null) parts.push(`pwm ${result.pwatermark.toFixed(2)}`);
  if (result.WIDTH != null) parts.push(`${result.WIDTH}×${result.HEIGHT}`);
  if (result.LANGUAGE) parts.push(result.LANGUAGE);
  for (const text of parts) {
    const span = document.createElement("span");
    span.textContent = text;
    scores.appendChild(span);
  }
  const similar = document.createElement("button");
  similar.className = "similar";
  similar.type = "button";
  similar.textContent = "Similar images";
  similar.addEventListener("click", () => run({ row: result.row }, `images like row ${result.row}`));
  item.append(thumb, caption, scores, similar);
  return item;
}

function show(data, label) {
  const grid = $("results");
  grid.replaceChildren(...data.results.map(card));
  setStatus(`${data.count} results for ${label}`);
}

async function run(query, label) {
  state.query = { ...query, label };
  setStatus("Searching…");
  try {
    const body = { ...query };
    delete body.label;
    const response = await api("/api/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(requestBody(body)),
    });
    show(await response.json(), label);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function upload(file) {
  if (!file) return;
  if (state.info && file.size > state.info.max_upload_bytes) {
    setStatus(`The image is over ${state.info.max_upload_bytes} bytes.`, true);
    return;
  }
  setStatus("Searching…");
  const form = new FormData();
  const body = requestBody({});
  form.append("image", file);
  form.append("k", body.k);
  form.append("dedup", body.dedup);
  body.filters.forEach((f) => form.append("filters", f));
  try {
    const data = await (await api("/api/search/image", { method: "POST", body: form })).json();
    state.query = { vector: data.query_vector, label: `image ${file.name}` };
    show(data, `image ${file.name}`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function exportSubset() {
  const body = {};
  if (state.query) for (const key of ["text", "row", "vector"]) if (key in state.query) body[key] = state.query[key];
  setStatus("Exporting…");
  try {
    const response = await api("/api/subset", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(requestBody(body)),
    });
    const rows = response.headers.get("X-Rows");
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = "subset.parquet";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setStatus(`Exported ${rows} rows to subset.parquet`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function start() {
  try {
    state.info = await (await api("/api/info")).json();
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  const info = state.info;
  const recall = info.searches.image ? ` · recall@10 ${info.searches.image.recall_at_10}` : "";
  $("index-summary").textContent = `${info.rows.toLocaleString()} pairs · ${info.index_type}${recall}`;
  $("languages").replaceChildren(...info.languages.map((code) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = code;
    label.append(box, " " + code);
    return label;
  }));
  if (!info.text_search) $("query").placeholder = "Text search is off (no query model)";
  filters();
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("query").value.trim();
  if (text) run({ text }, `“${text}”`);
});
$("upload").addEventListener("change", (event) => upload(event.target.files[0]));
$("apply-filters").addEventListener("click", () => {
  if (state.query) {
    const { label, ...query } = state.query;
    run(query, label);
  } else {
    filters();
  }
});
$("export").addEventListener("click", exportSubset);
start();
